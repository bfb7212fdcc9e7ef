"""Run-time checks of the indices of Gather, GatherElements, GatherND, ScatterElements and ScatterND.

ONNX leaves an index outside ``[-dim, dim)`` undefined and ONNX Runtime raises; TVM's kernels
read or write outside the tensor. A user's mistake then crashed the process or returned garbage:
a random attention mask sent an OPT export's position ids (a cumsum of the mask) past its
position table and the call died in a segfault; GatherND and ScatterElements segfaulted on an
index of a million, GatherElements returned whatever memory it found. Indices computed at run
time now pass through one small kernel that checks each against its axis (a failed check stops
the call with an error naming the node) before TVM's converter uses them; constant indices
(folded by the converter) are left alone.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.script import tirx as T

from ..lower import register_input_guard


def index_check_kernel(index_dtype: str, n, q: int, message: str):
    """``out = idx`` for ``idx[n, q]``, each ``idx[i, c]`` asserted within ``[-bounds[c], bounds[c])``."""

    @T.prim_func(private=True, s_tir=True)
    def kernel(idx: T.Buffer((n, q), index_dtype), bounds: T.Buffer((q,), "int64"), out: T.Buffer((n, q), index_dtype)):
        # op_pattern 8 (opaque): fused with the reshapes around it, FuseTIR failed on the
        # flattened indices (OPT's position ids).
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})
        for i, c in T.grid(n, q):
            assert T.Cast("int64", idx[i, c]) >= -bounds[c] and T.Cast("int64", idx[i, c]) < bounds[c], message
            out[i, c] = idx[i, c]

    return kernel


def _product(values):
    total = 1
    for v in values:
        total = total * (int(v) if isinstance(v, tvm.tirx.IntImm) else v)
    return total


def _tensor_shape(expr) -> list | None:
    ty = getattr(expr, "ty", None)
    if isinstance(ty, relax.TensorType) and isinstance(ty.shape, relax.ShapeExpr):
        return list(ty.shape.values)
    return None


def _checked(bb: relax.BlockBuilder, indices, bounds: list, op: str, attrs: dict):
    """``indices`` (last axis of length len(bounds), or any shape when there is one bound) checked."""
    shape = _tensor_shape(indices)
    q = len(bounds)
    n = _product(shape[:-1] if q > 1 else shape)
    dtype = str(indices.ty.dtype)
    name = attrs.get("tvm_custom", {}).get("name", "?")
    shown = [int(b) if isinstance(b, tvm.tirx.IntImm) else b for b in bounds]
    ranges = ", ".join(f"[-{b}, {b})" if isinstance(b, int) else "its axis" for b in shown)
    message = f"{op} {name!r}: an index is outside {ranges}"
    m = n if isinstance(n, int) else tvm.tirx.Var("n", "int64")
    gv = bb.add_func(index_check_kernel(dtype, m, q, message), "check_indices")
    flat = bb.normalize(relax.op.reshape(indices, [n, q]))
    limits = bb.normalize(relax.op.shape_to_tensor(relax.ShapeExpr(bounds)))
    checked = bb.normalize(relax.call_tir(gv, [flat, limits], relax.TensorType([n, q], dtype)))
    return bb.normalize(relax.op.reshape(checked, shape))


def _runtime_indices(data, indices) -> bool:
    return (not isinstance(indices, (tvm.ir.GenericConst, relax.ShapeExpr)) and not isinstance(data, relax.ShapeExpr)
            and _tensor_shape(data) is not None and _tensor_shape(indices) is not None
            and str(indices.ty.dtype) in ("int32", "int64"))


def _axis_guard(op: str):
    """Gather, GatherElements, ScatterElements: every index addresses ``data``'s ``axis``."""

    def guard(bb: relax.BlockBuilder, inputs, attrs: dict):
        data, indices = inputs[0], inputs[1]
        if not _runtime_indices(data, indices):
            return inputs
        shape = _tensor_shape(data)
        axis = int(attrs.get("axis", 0))
        axis = axis + len(shape) if axis < 0 else axis
        if 0 <= axis < len(shape):
            inputs[1] = _checked(bb, indices, [shape[axis]], op, attrs)
        return inputs

    return guard


def _nd_guard(op: str):
    """GatherND, ScatterND: the last axis of the indices addresses data's axes from batch_dims on."""

    def guard(bb: relax.BlockBuilder, inputs, attrs: dict):
        data, indices = inputs[0], inputs[1]
        if not _runtime_indices(data, indices):
            return inputs
        shape, index_shape = _tensor_shape(data), _tensor_shape(indices)
        batch = int(attrs.get("batch_dims", 0))
        q = index_shape[-1] if index_shape else None
        if isinstance(q, tvm.tirx.IntImm) and 0 < int(q) <= len(shape) - batch:
            inputs[1] = _checked(bb, indices, shape[batch:batch + int(q)], op, attrs)
        return inputs

    return guard


for _op in ("Gather", "GatherElements", "ScatterElements"):
    register_input_guard(_op)(_axis_guard(_op))
for _op in ("GatherND", "ScatterND"):
    register_input_guard(_op)(_nd_guard(_op))
