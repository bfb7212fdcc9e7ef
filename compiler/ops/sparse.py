"""``sparsec.BlockSparseMatMul``: ``y = x @ W.T (+ bias)`` with W ``[out, in]`` stored as BSR.

Inputs: x ``[..., in]``, data ``[blocks, C, R]`` (each R x C block stored transposed, so the R
outputs of one input are contiguous), indices ``[blocks]`` (block column), indptr
``[out / R + 1]`` (int32), optional bias ``[out]``. Attributes: ``block = [R, C]``,
``shape = [out, in]``, ``activation`` (``"none"`` or ``"relu"``, applied after the bias). The decomposition rebuilds the dense weight (scipy.sparse) so ONNX Runtime
computes the same thing from standard ops.
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
    return [TensorType(x.dtype, tuple(x.shape[:-1]) + (int(out),))]


def _decompose(node: Node) -> None:
    graph = node.graph
    data, indices, indptr = (node.input(i).const for i in (1, 2, 3))
    out, inp = node.attr("shape")
    dense = from_bsr(data, indices, indptr, (int(out), int(inp)))
    weight = graph.add_constant(np.ascontiguousarray(dense.T), node.name + "_dense")
    result = graph.add_node("MatMul", [node.input(0), weight], name=node.name + "_matmul", before=node).outputs[0]
    bias = node.input(4)
    if bias is not None:
        result = graph.add_node("Add", [result, bias], name=node.name + "_bias", before=node).outputs[0]
    if node.attr("activation", "none") == "relu":
        result = graph.add_node("Relu", [result], name=node.name + "_relu", before=node).outputs[0]
    result.type = node.outputs[0].type
    node.outputs[0].replace_all_uses_with(result)
    graph.remove_node(node)


BLOCK_SPARSE_MATMUL = register_op(OpDef("BlockSparseMatMul", _infer, _decompose, __doc__))
