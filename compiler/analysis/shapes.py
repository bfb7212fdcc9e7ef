"""Shape and dtype inference: ONNX's own inference for standard ops, sparsec's rules for its ops,
iterated until nothing changes (an inferred sparsec output can unblock ONNX inference downstream)."""

from __future__ import annotations

import warnings

import onnx

from ..frontend.onnx_export import to_onnx
from ..ir.graph import Graph
from ..ir.types import TensorType, type_from_onnx
from ..ops import get_op


def infer_types(graph: Graph, *, max_rounds: int = 4) -> int:
    """Fill in value types in place; returns how many values gained or refined a type."""
    total = 0
    for _ in range(max_rounds):
        changed = _onnx_round(graph) + _sparsec_round(graph)
        total += changed
        if not changed:
            break
    return total


def _onnx_round(graph: Graph) -> int:
    model = to_onnx(graph, weights=False)
    # Graph outputs are inferred from their nodes, not merged into the shapes the file declares:
    # a declared shape that the ops contradict (a stale exporter annotation) is the file's mistake,
    # and ONNX Runtime runs such a model with the shape the ops give (it warns and merges leniently).
    for output in model.graph.output:
        if output.type.HasField("tensor_type"):
            output.type.tensor_type.ClearField("shape")
    declared = {v.name: v for v in graph.outputs}
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:  # inference is best effort: a failure leaves types as they were
        return 0
    found = {}
    for g in _graph_protos(inferred.graph):
        for vi in list(g.value_info) + list(g.output):
            found[vi.name] = vi.type
    changed = 0
    for sub in graph.all_graphs():
        for node in sub.nodes:
            for out in node.outputs:
                proto_type = found.get(out.name)
                if proto_type is None:
                    continue
                new = type_from_onnx(proto_type)
                if new is None:
                    continue
                if _more_precise(new, out.type):
                    out.type = new
                    changed += 1
                elif declared.get(out.name) is out and _contradicts(new, out.type):
                    warnings.warn(f"the model declares output {out.name!r} as {out.type}, but its ops give "
                                  f"{new}: using {new}, as ONNX Runtime does", stacklevel=2)
                    out.type = new
                    changed += 1
    return changed


def _contradicts(new, old) -> bool:
    """Whether two tensor types disagree on the dtype, the rank or a static dim."""
    if not isinstance(new, TensorType) or not isinstance(old, TensorType):
        return False
    if new.dtype and old.dtype and new.dtype != old.dtype:
        return True
    if new.shape is None or old.shape is None:
        return False
    return len(new.shape) != len(old.shape) or any(
        isinstance(n, int) and isinstance(o, int) and n != o for n, o in zip(new.shape, old.shape))


def _sparsec_round(graph: Graph) -> int:
    changed = 0
    for node in graph.walk():
        opdef = get_op(node.domain, node.op_type)
        if opdef is None:
            continue
        for out, new in zip(node.outputs, opdef.infer_types(node)):
            if new is not None and _more_precise(new, out.type):
                out.type = new
                changed += 1
    return changed


def _graph_protos(g: onnx.GraphProto):
    yield g
    for node in g.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graph_protos(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _graph_protos(sub)


def _more_precise(new, old) -> bool:
    """True when ``new`` says more than ``old`` (and does not contradict a known static dim)."""
    if old is None:
        return True
    if not isinstance(new, TensorType) or not isinstance(old, TensorType):
        return False
    if old.shape is None:
        return new.shape is not None
    if new.shape is None or len(new.shape) != len(old.shape):
        return False
    better = False
    for n, o in zip(new.shape, old.shape):
        if isinstance(o, int):
            if n != o:
                return False
        elif isinstance(n, int) or (o is None and n is not None):
            better = True
    return better
