"""TIR kernels for sparsec's own ops, each registering its Relax lowering on import."""

from . import experts, sparse  # noqa: F401
