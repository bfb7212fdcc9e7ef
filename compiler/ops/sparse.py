"""``sparsec.BlockSparseMatMul``: ``y = x @ W.T (+ bias)`` with W ``[out, in]`` stored as BSR.

Inputs: x ``[..., in]``, data ``[blocks, C, R]`` (each R x C block stored transposed, so the R
outputs of one input are contiguous), indices ``[blocks]`` (block column), indptr
``[out / R + 1]`` (int32), optional bias ``[out]``. Attributes: ``block = [R, C]``,
``shape = [out, in]``, ``activation`` (``"none"`` or ``"relu"``, applied after the bias),
``layout``: ``"rows"`` (default, x ``[..., in]`` -> y ``[..., out]``) or ``"channels"`` (x
``[N, in, M]`` -> y ``[N, out, M]``, ``y[n] = W @ x[n] + bias[:, None]``: a 1x1 convolution over
flattened NCHW pixels, with no transposes). The decomposition rebuilds the dense weight
(scipy.sparse) so ONNX Runtime computes the same thing from standard ops.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse

from ..ir.graph import Node
from ..ir.types import TensorType
from . import OpDef, register_op


def to_bsr(out_in: np.ndarray, block: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(data [blocks, C, R], indices, indptr) of a ``[out, in]`` weight in R x C blocks."""
    bsr = scipy.sparse.bsr_matrix(out_in, blocksize=block)
    bsr.eliminate_zeros()  # drops explicitly stored all-zero blocks too (scipy keeps none here)
    bsr.sort_indices()
    data = np.ascontiguousarray(bsr.data.transpose(0, 2, 1)).astype(out_in.dtype)
    return data, bsr.indices.astype(np.int32), bsr.indptr.astype(np.int32)


def from_bsr(data: np.ndarray, indices: np.ndarray, indptr: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    blocks = data.transpose(0, 2, 1)
    return scipy.sparse.bsr_matrix((blocks, indices, indptr), shape=shape).toarray().astype(data.dtype)


def _infer(node: Node):
    x = node.input(0).type
    out, _ = node.attr("shape")
    if not isinstance(x, TensorType) or x.shape is None:
        return [TensorType(x.dtype if isinstance(x, TensorType) else None, None)]
    if node.attr("layout", "rows") == "channels":
        return [TensorType(x.dtype, (x.shape[0], int(out), x.shape[2]))]
    return [TensorType(x.dtype, tuple(x.shape[:-1]) + (int(out),))]


def _decompose(node: Node) -> None:
    data, indices, indptr = (node.input(i).const for i in (1, 2, 3))
    out, inp = node.attr("shape")
    _replace_with_dense(node, from_bsr(data, indices, indptr, (int(out), int(inp))), node.input(4))


def _replace_with_dense(node: Node, out_in: np.ndarray, bias) -> None:
    """Rewrites a sparse MatMul node in place as the MatMul (+ Add, Relu) it equals."""
    graph = node.graph
    if node.attr("layout", "rows") == "channels":  # W [out, in] @ x [N, in, M]; the bias per output row
        weight = graph.add_constant(np.ascontiguousarray(out_in), node.name + "_dense")
        operands = [weight, node.input(0)]
        if bias is not None:
            bias = graph.add_constant(bias.const.reshape(-1, 1), node.name + "_bias_column")
    else:
        weight = graph.add_constant(np.ascontiguousarray(out_in.T), node.name + "_dense")
        operands = [node.input(0), weight]
    result = graph.add_node("MatMul", operands, name=node.name + "_matmul", before=node).outputs[0]
    if bias is not None:
        result = graph.add_node("Add", [result, bias], name=node.name + "_bias", before=node).outputs[0]
    if node.attr("activation", "none") == "relu":
        result = graph.add_node("Relu", [result], name=node.name + "_relu", before=node).outputs[0]
    result.type = node.outputs[0].type
    node.outputs[0].replace_all_uses_with(result)
    graph.remove_node(node)


BLOCK_SPARSE_MATMUL = register_op(OpDef("BlockSparseMatMul", _infer, _decompose, __doc__))


def to_nm(out_in: np.ndarray, n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """(values, positions) of a ``[out, in]`` weight with at most ``n`` non-zeros in every ``m``
    consecutive inputs: both ``[out, in / m * n]``, the kept weights of each group in input order
    and their offsets in the group (uint8). A group with fewer than ``n`` non-zeros is padded
    with zero weights (at offset 0, so the padding reads an input that exists)."""
    rows, cols = out_in.shape
    groups = out_in.reshape(rows, cols // m, m)
    # A stable sort of "is zero" puts each group's non-zeros first, in input order.
    order = np.argsort(groups == 0, axis=2, kind="stable")[:, :, :n]
    values = np.take_along_axis(groups, order, axis=2)
    positions = np.where(values != 0, order, 0).astype(np.uint8)
    return np.ascontiguousarray(values.reshape(rows, -1)), np.ascontiguousarray(positions.reshape(rows, -1))


def from_nm(values: np.ndarray, positions: np.ndarray, n: int, m: int) -> np.ndarray:
    rows, kept = values.shape
    dense = np.zeros((rows, kept // n, m), values.dtype)
    # Padding entries are zero weights at offset 0: add, so they cannot overwrite a kept weight.
    np.add.at(dense, (np.arange(rows)[:, None, None], np.arange(kept // n)[None, :, None],
                      positions.reshape(rows, -1, n).astype(np.intp)), values.reshape(rows, -1, n))
    return dense.reshape(rows, -1)


def _decompose_nm(node: Node) -> None:
    n, m = (int(d) for d in node.attr("pattern"))
    values, positions = node.input(1).const, node.input(2).const
    _replace_with_dense(node, from_nm(values, positions, n, m), node.input(3))


NM_SPARSE_MATMUL_DOC = """``sparsec.NMSparseMatMul``: ``y = x @ W.T (+ bias)`` with W ``[out, in]`` N:M sparse: at
most N non-zeros in every M consecutive inputs of an output (2:4, 4:8), stored compressed.

Inputs: x ``[..., in]``, values ``[out, in / M * N]`` (float32: each group's kept weights in
input order), positions ``[out, in / M * N]`` (uint8: their offsets in the group), optional bias
``[out]``. Attributes: ``pattern = [N, M]``, ``shape = [out, in]``, ``activation`` (``"none"``
or ``"relu"``, after the bias). Decomposes into the dense MatMul it equals."""

NM_SPARSE_MATMUL = register_op(OpDef("NMSparseMatMul", _infer, _decompose_nm, NM_SPARSE_MATMUL_DOC))
