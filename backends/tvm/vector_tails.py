"""A TIR pass for vectorised loops whose lanes are guarded: with a symbolic extent (a sequence
length unknown until run time) the last vector of a row is partial, and the schedule guards each
lane (``if j < s``: a padded GEMM's loads and stores, softmax over the keys). TVM's VectorizeLoop
cannot vectorise a lane-dependent guard, so it turns the whole loop, every vector of every row,
into scalar code: attention scores over a symbolic sequence ran 26x slower than over a pinned one.

Before vectorisation, this pass gives such code a second, unguarded copy, taken when every guard
holds throughout it: ``if (all guards hold): <copy without guards> else: <as it was>``. The copy
starts at the loop where the test is worth making: from the vector loop up through the loops of
a register tile (constant extents) and loops the guards do not depend on (a GEMM's reduction),
so that the test runs once per tile, outside the reduction. A guard is taken only if it is a
conjunction of comparisons linear in the copy's loop variables: such a guard holds over the box
of their ranges if it holds at the box's corners. Any other guard leaves its loop as it was
(an integer cast of a loop variable too: such a guard is not recognised as linear), and so does
one that reads memory or a variable bound inside the copied code (it cannot be tested before).
"""

from __future__ import annotations

import itertools

import tvm
import tvm_ffi
from tvm import sym, tirx

# comparisons whose truth set is convex (not NE: true at both ends of a range, false between)
_CONVEX = (tirx.LT, tirx.LE, tirx.GT, tirx.GE, tirx.EQ)
# loops of at most this constant extent are taken to be inside a register tile
TILE_EXTENT = 64
# the most loop variables one guard may depend on (its corners are checked: 2^n tests)
MAX_GUARD_VARS = 4


def _vars_in(expr, candidates) -> list:
    found = []

    def visit(var):
        if any(var.same_as(c) for c in candidates) and not any(var.same_as(f) for f in found):
            found.append(var)

    tvm_ffi.structural_walk(expr, (tirx.Var, visit))
    return found


def _convex(cond, loop_vars) -> bool:
    """Whether ``cond`` is a conjunction of comparisons linear in ``loop_vars``."""
    if isinstance(cond, tirx.And):
        return _convex(cond.a, loop_vars) and _convex(cond.b, loop_vars)
    used = _vars_in(cond, loop_vars)
    if not used:
        return True
    return isinstance(cond, _CONVEX) and all(len(sym.detect_linear_equation(side, used)) == len(used) + 1
                                             for side in (cond.a, cond.b))


def substitute(expr, values: dict):
    """``expr`` (or a statement) with each variable in ``values`` replaced by its value."""
    def visit(node, mutator):
        if isinstance(node, tirx.Var):
            return next((value for var, value in values.items() if node.same_as(var)), node)
        return mutator.default_mutate(node)

    return tvm_ffi.structural_mutate(expr, [(object, visit)])


def is_if_then_else(node) -> bool:
    return isinstance(node, tvm.ir.Call) and str(getattr(node.op, "name", "")).endswith(".if_then_else")


def _condition(node):
    if isinstance(node, tirx.IfThenElse) and node.else_case is None:
        return node.condition
    return node.args[0] if is_if_then_else(node) else None


def _loops(stmt) -> list:
    """The For loops in ``stmt`` (itself included)."""
    found = []
    tvm_ffi.structural_walk(stmt, (tirx.For, found.append))
    return found


def _guards(stmt, loop_vars) -> list:
    """The conditions under ``stmt`` that depend on one of ``loop_vars``."""
    found = []

    def visit(node):
        cond = _condition(node)
        if cond is not None and _vars_in(cond, loop_vars):
            found.append(cond)

    tvm_ffi.structural_walk(stmt, (object, visit))
    return found


def _lane_guarded(loop) -> bool:
    return loop.kind == tirx.ForKind.VECTORIZED and bool(_guards(loop.body, [loop.loop_var]))


def _conjuncts(cond) -> list:
    return _conjuncts(cond.a) + _conjuncts(cond.b) if isinstance(cond, tirx.And) else [cond]


def _corners(cond, loops) -> "list | None":
    """``cond`` at every corner of the box of the loops' ranges (over the variables it uses),
    or None if it is not convex in them, uses too many, or the box is not one (a loop's bounds
    depend on another loop of the region)."""
    loop_vars = [loop.loop_var for loop in loops]
    if any(_vars_in(loop.min, loop_vars) or _vars_in(loop.extent, loop_vars) for loop in loops):
        return None
    ranges = {loop.loop_var: (loop.min, loop.min + loop.extent - 1) for loop in loops}
    used = _vars_in(cond, loop_vars)
    if len(used) > MAX_GUARD_VARS or not _convex(cond, used):
        return None
    return [substitute(cond, dict(zip(used, corner))) for corner in itertools.product(*(ranges[v] for v in used))]


def _every(conds):
    test = None
    for cond in conds:
        test = cond if test is None else tirx.And(test, cond)
    return test


def _definitions(stmt) -> list:
    """The variables ``stmt`` defines: its loops' and its let bindings'."""
    found = []

    def visit(node):
        if isinstance(node, tirx.For):
            found.append(node.loop_var)
        elif isinstance(node, (tirx.Bind, tirx.Let)):
            found.append(node.var)

    tvm_ffi.structural_walk(stmt, (object, visit))
    return found


def _loads(expr) -> bool:
    found = []
    tvm_ffi.structural_walk(expr, (tvm.ir.TensorLoad, found.append))
    return bool(found)


def _testable(guards, region) -> bool:
    """Whether the guards can be tested before ``region`` runs: no guard reads memory (the
    region may write it) or a variable the region binds other than its loops' (a let: its value
    is not known before, and changes within)."""
    loop_vars = [loop.loop_var for loop in _loops(region)]
    bound = [v for v in _definitions(region) if not any(v.same_as(l) for l in loop_vars)]
    return not any(_loads(g) or _vars_in(g, bound) for g in guards)


def _distinct(guards) -> list:
    kept = []
    for guard in guards:
        if not any(tvm_ffi.structural_equal(guard, k) for k in kept):
            kept.append(guard)
    return kept


def _all_hold(guards, loops) -> "tirx.PrimExpr | None":
    """The test that every guard holds throughout the loops (at the corners of their box)."""
    tests = []
    for guard in guards:
        corners = _corners(guard, loops)
        if corners is None:
            return None
        tests += corners
    return _every(tests)


def _all_fail(guards, loops) -> "tirx.PrimExpr | None":
    """The test that every guard fails throughout the loops: one of its terms, a linear
    inequality (false at the corners, false in the box between them), fails at every corner."""
    tests = []
    for guard in guards:
        fails = None
        for term in _conjuncts(guard):
            if not isinstance(term, _CONVEX) or isinstance(term, tirx.EQ) or not _vars_in(term, [l.loop_var for l in loops]):
                continue
            corners = _corners(term, loops)
            if corners is not None:
                fail = _every([tirx.Not(c) for c in corners])
                fails = fail if fails is None else tirx.Or(fails, fail)
        if fails is None:
            return None
        tests.append(fails)
    return _every(tests)


def _decided(stmt, loop_vars, held: bool):
    """``stmt`` with the guards that depend on ``loop_vars`` decided: all true (``held``) or
    all false (a guarded statement dropped, a guarded value replaced by its alternative)."""
    def visit(node, mutator):
        node = mutator.default_mutate(node)
        cond = _condition(node)
        if cond is None or not _vars_in(cond, loop_vars):
            return node
        if isinstance(node, tirx.IfThenElse):
            return node.then_case if held else tirx.Evaluate(0)
        return node.args[1] if held else node.args[2]

    return tvm_ffi.structural_mutate(stmt, [(object, visit)])


def with_fresh_definitions(stmt):
    """``stmt`` with new variables for the loops and lets it defines (each copy defines its own)."""
    return substitute(stmt, {var: tirx.Var(var.name, var.ty) for var in _definitions(stmt)})


def _split_vector(loop):
    """A lane-guarded vector loop as three: every lane passes its guards (a vector loop without
    them), every lane fails them (a vector loop without what they guard), or some do (as it was)."""
    lane = [loop.loop_var]
    guards = _distinct(_guards(loop.body, lane))
    if not _testable(guards, loop):
        return loop
    hold = _all_hold(guards, [loop])
    if hold is None:
        return loop
    rest = loop
    fail = _all_fail(guards, [loop])
    if fail is not None:
        rest = tirx.IfThenElse(fail, with_fresh_definitions(_decided(loop, lane, False)), loop)
    return tirx.IfThenElse(hold, with_fresh_definitions(_decided(loop, lane, True)), rest)


def _split_vectors(stmt):
    """Every lane-guarded vector loop in ``stmt`` split by _split_vector."""
    def visit(node, mutator):
        node = mutator.default_mutate(node)
        return _split_vector(node) if isinstance(node, tirx.For) and _lane_guarded(node) else node

    return tvm_ffi.structural_mutate(stmt, [(object, visit)])


def _split(loop):
    """``if (every guard in the loop holds throughout): unguarded copy; else: the loop with its
    vector loops split one by one``, or ``loop`` when its guards are not all convex."""
    if _lane_guarded(loop):
        return _split_vector(loop)
    loops = _loops(loop)
    loop_vars = [inner.loop_var for inner in loops]
    guards = _distinct(_guards(loop, loop_vars))
    hold = _all_hold(guards, loops) if _testable(guards, loop) else None
    if hold is None:
        return loop
    return tirx.IfThenElse(hold, with_fresh_definitions(_decided(loop, loop_vars, True)), _split_vectors(loop))


def _children(loop) -> list:
    """The loops directly inside ``loop`` (not inside another loop of its body)."""
    inner = _loops(loop.body)
    nested = [n for other in inner for n in _loops(other.body)]
    return [child for child in inner if not any(child.same_as(n) for n in nested)]


def _in_tile(loop) -> bool:
    """A register-tile loop (a small constant extent), or one no guard in it reads."""
    extent = loop.extent
    return isinstance(extent, tirx.IntImm) and int(extent) <= TILE_EXTENT or not _guards(loop.body, [loop.loop_var])


def _tile_to_vectors(loop) -> bool:
    """Whether a path of tile loops leads from ``loop`` down to a vector loop."""
    if not _in_tile(loop):
        return False
    return loop.kind == tirx.ForKind.VECTORIZED or any(_tile_to_vectors(child) for child in _children(loop))


def _guarded_tile(loop) -> bool:
    """A tile (see _tile_to_vectors) with guards on its loops' variables: lanes, or rows of a
    register tile (a padded GEMM's loads of A, one per row and step of the reduction)."""
    return _tile_to_vectors(loop) and bool(_guards(loop, [inner.loop_var for inner in _loops(loop)]))


def _rewrite(body):
    def visit(node, mutator):
        if isinstance(node, tirx.For) and _guarded_tile(node):
            split = _split(node)
            if not split.same_as(node):
                return split
        return mutator.default_mutate(node)

    return tvm_ffi.structural_mutate(body, [(object, visit)])


@tirx.transform.prim_func_pass(opt_level=0, name="sparsec.VectorTails")
def vector_tails(func: tirx.PrimFunc, mod, ctx) -> tirx.PrimFunc:
    body = _rewrite(func.body)
    return func if body.same_as(func.body) else func.with_body(body)
