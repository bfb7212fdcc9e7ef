"""``Gather`` with its indices checked at run time.

ONNX leaves an index outside ``[-dim, dim)`` undefined and ONNX Runtime raises; TVM's ``take``
reads outside the tensor. A user's mistake then crashed the process or returned garbage: a
random attention mask sent an OPT export's position ids (a cumsum of the mask) past its position
table, and the call died in a segfault. Here every Gather whose indices are computed at run time
runs as one kernel that checks each index (a failed check raises, naming the axis and its size)
and copies the rows it selects; constant indices are left to TVM's converter, which folds them.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.script import tirx as T

from ..lower import register_converter_override


def gather_kernel(dtype: str, index_dtype: str, outer, dim, inner, n, message: str):
    """``out[o, i, j] = data[o, idx[i] (+ dim if negative), j]``; each extent an int or a Var."""

    @T.prim_func(private=True, s_tir=True)
    def kernel(data: T.Buffer((outer, dim, inner), dtype), idx: T.Buffer((n,), index_dtype),
               out: T.Buffer((outer, n, inner), dtype)):
        # op_pattern 8 (opaque): fused with the reshapes around it, FuseTIR failed on the
        # flattened indices (OPT's position ids).
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})
        for i in range(n):
            assert T.Cast("int64", idx[i]) >= -T.Cast("int64", dim) and T.Cast("int64", idx[i]) < T.Cast("int64", dim), message
        for o, i in T.grid(outer, n):
            for j in range(inner):
                out[o, i, j] = data[o, T.if_then_else(idx[i] < 0, T.Cast("int64", idx[i]) + T.Cast("int64", dim),
                                                      T.Cast("int64", idx[i])), j]

    return kernel


def _extent(values):
    """The product of shape values: an int when all are static, else a PrimExpr."""
    total = 1
    for v in values:
        total = total * (int(v) if isinstance(v, tvm.tirx.IntImm) else v)
    return total


@register_converter_override("Gather")
def checked_gather(bb: relax.BlockBuilder, inputs: list, attrs: dict):
    data, indices = inputs[:2]
    if isinstance(indices, (tvm.ir.GenericConst, relax.ShapeExpr)) or isinstance(data, relax.ShapeExpr):
        return None  # folded or shape arithmetic: TVM's converter handles them
    data_ty, index_ty = data.ty, indices.ty
    if not (isinstance(data_ty, relax.TensorType) and isinstance(index_ty, relax.TensorType)
            and isinstance(data_ty.shape, relax.ShapeExpr) and isinstance(index_ty.shape, relax.ShapeExpr)
            and str(index_ty.dtype) in ("int32", "int64")):
        return None
    shape, index_shape = list(data_ty.shape.values), list(index_ty.shape.values)
    axis = int(attrs.get("axis", 0))
    axis = axis + len(shape) if axis < 0 else axis
    if not 0 <= axis < len(shape):
        return None
    outer, dim, inner, n = _extent(shape[:axis]), shape[axis], _extent(shape[axis + 1:]), _extent(index_shape)
    dim = int(dim) if isinstance(dim, tvm.tirx.IntImm) else dim
    name = attrs.get("tvm_custom", {}).get("name", "?")
    message = f"Gather {name!r}: an index is outside [-{dim}, {dim}) (axis {axis} of its data)"

    def var(value, label):
        return value if isinstance(value, int) else tvm.tirx.Var(label, "int64")

    kernel = gather_kernel(str(data_ty.dtype), str(index_ty.dtype), var(outer, "outer"), var(dim, "dim"),
                           var(inner, "inner"), var(n, "n"), message)
    gv = bb.add_func(kernel, "checked_gather")
    flat_data = bb.normalize(relax.op.reshape(data, [outer, dim, inner]))
    flat_index = bb.normalize(relax.op.reshape(indices, [n]))
    out = bb.normalize(relax.call_tir(gv, [flat_data, flat_index], relax.TensorType([outer, n, inner], str(data_ty.dtype))))
    return bb.normalize(relax.op.reshape(out, [*shape[:axis], *index_shape, *shape[axis + 1:]]))
