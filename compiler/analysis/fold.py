"""Constant folding: evaluate nodes whose inputs are all constants, Shape / Size of values whose
shape is static, and Gather / Slice picking only the static dims out of a partly symbolic Shape
(exporters compute ``k`` or ``hidden`` from ``Shape(x)[-1]`` next to a symbolic batch). Uses onnx's reference evaluator, so every standard op folds the same way
ONNX defines it. Results larger than ``max_elements`` are left unfolded (they would bloat the
model); random and stateful ops never fold."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from ..frontend.onnx_export import _GraphWriter
from ..ir.graph import Graph, Node
from ..ir.types import TensorType

_NEVER_FOLD = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
               "Bernoulli", "If", "Loop", "Scan", "SequenceMap"}


def fold_constants(graph: Graph, *, max_elements: int = 1 << 22) -> int:
    """Fold in place (top-level graph); returns the number of nodes folded."""
    folded = 0
    for node in list(graph.nodes):
        arrays = _evaluate(node, max_elements)
        if arrays is None:
            continue
        for out, array in zip(node.outputs, arrays):
            const = graph.add_constant(array, name=out.name + "_folded")
            out.replace_all_uses_with(const)
        if not any(out.has_uses() for out in node.outputs):
            graph.remove_node(node)
            folded += 1
    graph.remove_unused_constants()
    return folded


def _evaluate(node: Node, max_elements: int) -> list[np.ndarray] | None:
    if node.domain not in ("", "ai.onnx") or node.op_type in _NEVER_FOLD or any(node.subgraphs()):
        return None
    if node.op_type == "Shape":
        return _fold_shape(node)
    if node.op_type == "Size":
        shape = _static_shape(node.inputs[0])
        return None if shape is None else [np.array(int(np.prod(shape)), np.int64)]
    if node.op_type in ("Gather", "Slice") and node.inputs[0].const is None:
        return _fold_static_dims(node)
    if not all(v is None or v.const is not None for v in node.inputs):
        return None
    if not node.inputs or sum(v.const.size for v in node.inputs if v is not None) > max_elements:
        return None
    try:
        results = _run_reference(node)
    except Exception:  # ops the reference cannot evaluate stay as they are
        return None
    if any(not isinstance(r, np.ndarray) or r.size > max_elements for r in results):
        return None
    return results


def _static_shape(value) -> tuple[int, ...] | None:
    t = value.type if value is not None else None
    if not isinstance(t, TensorType) or t.shape is None or not all(isinstance(d, int) for d in t.shape):
        return None
    return tuple(t.shape)


def _fold_shape(node: Node) -> list[np.ndarray] | None:
    shape = _static_shape(node.inputs[0])
    if shape is None:
        return None
    rank = len(shape)
    start, end = node.attr("start", 0), node.attr("end", rank)
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = min(max(end + rank if end < 0 else end, 0), rank)
    return [np.array(shape[start:end], np.int64)]


def _fold_static_dims(node: Node) -> list[np.ndarray] | None:
    """``Gather`` / ``Slice`` of ``Shape(x)`` that selects only dims of x known statically: run the op
    on the dim positions, then read the selected dims off x's type."""
    shape_node = node.inputs[0].producer
    if shape_node is None or shape_node.op_type != "Shape" or shape_node.domain not in ("", "ai.onnx"):
        return None
    t = shape_node.inputs[0].type
    if not isinstance(t, TensorType) or t.shape is None:
        return None
    if not all(v is None or v.const is not None for v in node.inputs[1:]):
        return None
    rank = len(t.shape)
    start, end = shape_node.attr("start", 0), shape_node.attr("end", rank)
    dims = list(t.shape)[slice(start, end)]
    positions = np.arange(len(dims), dtype=np.int64)
    try:
        (picked,) = _run_reference(node, [positions] + [None if v is None else v.const for v in node.inputs[1:]])
    except Exception:
        return None
    if not all(isinstance(dims[int(i)], int) for i in np.ravel(picked)):
        return None
    return [np.vectorize(lambda i: dims[int(i)], otypes=[np.int64])(picked).astype(np.int64).reshape(picked.shape)]


def _run_reference(node: Node, consts: list | None = None) -> list[np.ndarray]:
    consts = [None if v is None else v.const for v in node.inputs] if consts is None else consts
    names = [f"in{i}" if c is not None else "" for i, c in enumerate(consts)]
    inputs = [numpy_helper.from_array(np.asarray(c), n) for n, c in zip(names, consts) if c is not None]
    outs = [f"out{i}" for i in range(len(node.outputs))]
    proto = helper.make_node(node.op_type, names, outs)
    writer = _GraphWriter(True, False)
    for key in sorted(node.attrs):
        proto.attribute.append(writer._attribute(key, node.attrs[key]))
    graph = helper.make_graph([proto], "fold", [], [helper.make_value_info(o, onnx.TypeProto()) for o in outs],
                              initializer=inputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", node.graph.opset("") or 17)])
    return list(ReferenceEvaluator(model).run(None, {}))
