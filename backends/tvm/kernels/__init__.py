"""TIR kernels for sparsec's own ops, each registering its Relax lowering on import."""

from . import experts, index_checks, nm_sparse, relu_skip, sparse  # noqa: F401
