"""A stable, deterministic text form of a Graph, for humans and golden tests.

    graph main(%x: f32[n,4]) opset(ai.onnx=17) {
      const %w: f32[4,8] = <32 values, 75.0% zero, sha1 3f2a91c0>
      %y: f32[n,8] = MatMul(%x, %w)
      %z: f32[n,8] = Relu(%y)
      return %z
    }

Small constants print their values; large ones a digest, so the text changes when a weight does.
"""

from __future__ import annotations

import hashlib

import numpy as np

from .graph import Attr, AttrType, Graph, Node, Value

_INLINE_LIMIT = 8


def print_graph(graph: Graph) -> str:
    lines: list[str] = []
    _print_graph(graph, lines, indent="", header=_header(graph))
    return "\n".join(lines)


def _header(graph: Graph) -> str:
    args = ", ".join(_typed(v) for v in graph.inputs)
    text = f"graph {graph.name}({args})"
    if graph.parent_node is None:
        opsets = ", ".join(f"{d or 'ai.onnx'}={v}" for d, v in sorted(graph.opset_imports.items()))
        text += f" opset({opsets})"
    return text + " {"


def _print_graph(graph: Graph, lines: list[str], indent: str, header: str) -> None:
    lines.append(indent + header)
    inner = indent + "  "
    input_ids = {id(v) for v in graph.inputs}
    for name in sorted(graph.initializers):
        value = graph.initializers[name]
        if id(value) not in input_ids:
            lines.append(f"{inner}const {_typed(value)} = {format_constant(value.const)}")
    for node in graph.nodes:
        _print_node(node, lines, inner)
    lines.append(inner + "return " + ", ".join(_ref(v) for v in graph.outputs))
    lines.append(indent + "}")


def _print_node(node: Node, lines: list[str], indent: str) -> None:
    outs = ", ".join(_typed(v) for v in node.outputs)
    args = ", ".join(_ref(v) if v is not None else "_" for v in node.inputs)
    plain = {k: a for k, a in sorted(node.attrs.items()) if a.kind not in (AttrType.GRAPH, AttrType.GRAPHS)}
    attrs = ""
    if plain:
        attrs = " {" + ", ".join(f"{k}={format_attr(a)}" for k, a in plain.items()) + "}"
    lines.append(f"{indent}{outs} = {node.qualified_op}({args}){attrs}  # {node.name}")
    for key, attr in sorted(node.attrs.items()):
        graphs = [attr.value] if attr.kind == AttrType.GRAPH else list(attr.value) if attr.kind == AttrType.GRAPHS else []
        for i, sub in enumerate(graphs):
            label = key if attr.kind == AttrType.GRAPH else f"{key}[{i}]"
            args = ", ".join(_typed(v) for v in sub.inputs)
            _print_graph(sub, lines, indent + "  ", f"{label}: graph {sub.name}({args}) {{")


def _ref(value: Value) -> str:
    return "%" + value.name


def _typed(value: Value) -> str:
    return f"%{value.name}: {value.type}" if value.type is not None else f"%{value.name}"


def format_attr(attr: Attr) -> str:
    value = attr.value
    if attr.kind == AttrType.TENSOR:
        return format_constant(value)
    if isinstance(value, bytes):
        return repr(value.decode("utf-8", "replace"))
    if isinstance(value, tuple):
        return "[" + ", ".join(repr(v.decode("utf-8", "replace")) if isinstance(v, bytes) else _num(v) for v in value) + "]"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, float):
        return _num(value)
    return str(value)


def _num(v) -> str:
    if isinstance(v, float):
        return repr(float(np.float32(v))) if np.isfinite(v) else str(v)
    return str(v)


def format_constant(array: np.ndarray | None) -> str:
    if array is None:
        return "<none>"
    array = np.asarray(array)
    if array.size <= _INLINE_LIMIT and array.dtype != object:
        if array.ndim == 0:
            return _num(array.item())
        return "[" + ", ".join(_num(v) for v in array.reshape(-1).tolist()) + "]"
    digest = hashlib.sha1(np.ascontiguousarray(array).view(np.uint8).tobytes()).hexdigest()[:8] \
        if array.dtype != object else "object"
    zeros = ""
    if array.dtype.kind in "fiub":
        zeros = f", {100.0 * (1.0 - np.count_nonzero(array) / array.size):.1f}% zero"
    return f"<{array.size} values{zeros}, sha1 {digest}>"
