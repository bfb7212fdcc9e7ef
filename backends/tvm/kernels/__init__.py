"""TIR kernels for sparsec's own ops, each registering its Relax lowering on import."""

from . import sparse  # noqa: F401
