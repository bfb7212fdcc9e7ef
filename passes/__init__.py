"""sparsec's rewrite passes (sparsity and routing). Importing this package registers them.

None exist yet: the sparsity (``sparse-weights``, ``prune``) and routing (``moe-dispatch``,
``relu-skip``) passes land with their issues, each as its own module registered here.
"""
