"""sparsec's rewrite passes (sparsity and routing). Importing this package registers them.

Sparsity: ``sparse-weights`` (exact, default), ``prune`` (approximate, opt-in). Routing:
``moe-dispatch`` and ``relu-skip`` (exact, default). Each is its own module, registered here.
"""

from . import expert_dispatch, prune, relu_skip, sparse_weights  # noqa: E402,F401
