"""A TIR pass for vector loads of every s-th element (s = 2..4): stride-2 convolutions and pooling
read their input columns that way once vectorised, and LLVM receives such a load as one scalar
load per lane. The pass reads the same span as a few contiguous vectors and picks the lanes with
one shuffle (on AVX2, ``vshufps`` and ``vpermpd``).

A strided load under ``if_then_else`` is left alone: its guard may be what keeps the span inside
the buffer, and the contiguous loads would read all of it.
"""

from __future__ import annotations

import tvm_ffi
from tvm import tirx

from .vector_tails import is_if_then_else

MAX_STRIDE = 4


def _contiguous(load, base, stride: int, lanes: int) -> tirx.Shuffle:
    """``load`` (lanes ``base, base + stride, ...``) as a shuffle of contiguous vectors over exactly
    the elements it spans: the last vector ends at the span's last element, so none is read past it."""
    span = stride * (lanes - 1) + 1
    count = -(-span // lanes)
    last = span - lanes
    starts = [base + i * lanes for i in range(count - 1)] + [base + last]
    vectors = [tirx.BufferLoad(load.source, [*load.indices[:-1], tirx.Ramp(start, 1, lanes)]) for start in starts]
    picked = []
    for lane in range(lanes):
        offset = stride * lane
        picked.append(offset if offset < (count - 1) * lanes else (count - 1) * lanes + offset - last)
    return tirx.Shuffle(vectors, [tirx.IntImm("int32", i) for i in picked])


_LOAD, _RAMP, _INT = (type(e) for e in (tirx.BufferLoad(tirx.decl_buffer((1,), "float32"), [0]),
                                          tirx.Ramp(tirx.IntImm("int32", 0), 1, 2), tirx.IntImm("int32", 0)))


def _strided(load) -> tuple | None:
    """(base, stride, lanes) of a load whose last index is a constant-stride Ramp, else None."""
    index = load.indices[-1] if load.indices else None
    if not isinstance(index, _RAMP) or not isinstance(index.stride, _INT) or not isinstance(index.lanes, _INT):
        return None
    stride, lanes = int(index.stride.value), int(index.lanes.value)
    if not 2 <= stride <= MAX_STRIDE or lanes < 2:
        return None
    return index.base, stride, lanes


def _rewrite(body):
    def visit(node, mutator):
        if is_if_then_else(node):
            return node  # a guarded load stays as it is (see the module docstring)
        node = mutator.default_mutate(node)
        strided = _strided(node) if isinstance(node, _LOAD) else None
        return _contiguous(node, *strided) if strided else node

    return tvm_ffi.structural_mutate(body, [(object, visit)])


@tirx.transform.prim_func_pass(opt_level=0, name="sparsec.ContiguousStridedLoads")
def contiguous_strided_loads(func: tirx.PrimFunc, mod, ctx) -> tirx.PrimFunc:
    body = _rewrite(func.body)
    return func if body.same_as(func.body) else func.with_body(body)
