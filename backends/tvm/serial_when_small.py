"""A TIR pass for parallel loops whose work is known only at run time (symbolic dims): the CPU
schedules annotate such a loop with the condition under which the kernel is too small to pay
for waking the thread pool (``SERIAL_IF``, see _parallel in schedules/cpu.py), and this pass gives the loop a
serial copy taken when it holds: ``if (small): <serial loop> else: <parallel loop>``. An unpinned
decoder at one token ran its norms and elementwise kernels in parallel, ~10 us of pool wake-up
each for a microsecond of work.
"""

from __future__ import annotations

import tvm_ffi
from tvm import tirx

from .vector_tails import substitute, with_fresh_definitions

# The annotation of a parallel loop: the condition (of the kernel's symbolic dims) under which it
# runs serially instead.
SERIAL_IF = "sparsec.serial_if"


def _dims(func: tirx.PrimFunc) -> dict:
    """The function's symbolic dims by name (from its buffer parameters' shapes and its scalar
    parameters)."""
    dims = {}

    def visit(var):
        dims.setdefault(var.name, var)

    for param in func.params:
        for extent in getattr(param, "shape", None) or []:
            tvm_ffi.structural_walk(extent, (tirx.Var, visit))
        if getattr(param, "shape", None) is None:
            visit(param)
    return dims


def _in_terms_of(condition, dims: dict):
    """``condition`` over the function's own dim variables, matched by name (an annotation is not
    rewritten when a pass renews the function's variables), or None if one is missing."""
    used = []
    tvm_ffi.structural_walk(condition, (tirx.Var, lambda v: used.append(v)))
    if any(v.name not in dims for v in used):
        return None
    return substitute(condition, {v: dims[v.name] for v in used})


def _split(loop, dims: dict):
    kept = {key: value for key, value in loop.annotations.items() if key != SERIAL_IF}
    parallel = tirx.For(loop.loop_var, loop.min, loop.extent, tirx.ForKind.PARALLEL, loop.body, annotations=kept)
    condition = _in_terms_of(loop.annotations[SERIAL_IF], dims)
    if condition is None:
        return parallel
    serial = tirx.For(loop.loop_var, loop.min, loop.extent, tirx.ForKind.SERIAL, loop.body, annotations=kept)
    return tirx.IfThenElse(condition, with_fresh_definitions(serial), parallel)


def _rewrite(body, dims: dict):
    def visit(node, mutator):
        node = mutator.default_mutate(node)
        if isinstance(node, tirx.For) and node.kind == tirx.ForKind.PARALLEL and SERIAL_IF in node.annotations:
            return _split(node, dims)
        return node

    return tvm_ffi.structural_mutate(body, [(object, visit)])


@tirx.transform.prim_func_pass(opt_level=0, name="sparsec.SerialWhenSmall")
def serial_when_small(func: tirx.PrimFunc, mod, ctx) -> tirx.PrimFunc:
    body = _rewrite(func.body, _dims(func))
    return func if body.same_as(func.body) else func.with_body(body)
