"""sparsec's rewrite passes (sparsity and routing). Importing this package registers them.

Sparsity: ``sparse-weights`` (exact, default). Routing (``moe-dispatch``, ``relu-skip``) and
``prune`` land with their issues, each as its own module registered here.
"""

from . import expert_dispatch, prune, sparse_weights  # noqa: E402,F401
