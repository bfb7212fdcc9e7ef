"""``sparsec.ReluSkipMatMul``: ``y = h @ W (+ bias)`` where ``h`` is a Relu output.

Inputs: h ``[..., F]`` (float32, non-negative, typically mostly zero), W ``[F, N]`` (a constant),
optional bias ``[N]`` (a constant). Output ``[..., N]``. The result is exactly ``MatMul(h, W)``
(``+ bias``); a backend may skip the rows of W whose column of h is zero in every row, since they
contribute exact zeros (W is finite: the pass checks). The decomposition is that plain MatMul
(+ Add), so ONNX Runtime computes the same thing from standard ops. Attribute ``row_copy`` (default
1): 0 tells the CPU kernel not to keep a row-major copy of W for small row counts.
"""

from __future__ import annotations

from ..ir.graph import Node
from ..ir.types import TensorType
from . import OpDef, register_op


def _infer(node: Node):
    h, weight = node.input(0).type, node.input(1).type
    dtype = h.dtype if isinstance(h, TensorType) else None
    if not isinstance(h, TensorType) or h.shape is None or not isinstance(weight, TensorType) or weight.shape is None:
        return [TensorType(dtype, None)]
    return [TensorType(dtype, tuple(h.shape[:-1]) + (weight.shape[-1],))]


def _decompose(node: Node) -> None:
    graph = node.graph
    result = graph.add_node("MatMul", [node.input(0), node.input(1)], name=node.name + "_matmul", before=node).outputs[0]
    bias = node.input(2)
    if bias is not None:
        result = graph.add_node("Add", [result, bias], name=node.name + "_bias", before=node).outputs[0]
    result.type = node.outputs[0].type
    node.outputs[0].replace_all_uses_with(result)
    graph.remove_node(node)


RELU_SKIP_MATMUL = register_op(OpDef("ReluSkipMatMul", _infer, _decompose, __doc__))
