"""The IR verifier: checks the invariants that passes rely on."""

from __future__ import annotations

from .graph import Graph, Value
from .types import TensorType


class VerificationError(ValueError):
    """The graph breaks an IR invariant; the message lists every problem found."""


def verify(graph: Graph) -> None:
    problems: list[str] = []
    _verify_graph(graph, visible={}, problems=problems, seen_names=set())
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise VerificationError(f"graph {graph.name!r} is not well formed:\n  {shown}{more}")


def _verify_graph(graph: Graph, visible: dict[int, Value], problems: list[str], seen_names: set[str]) -> None:
    visible = dict(visible)

    def define(value: Value, where: str) -> None:
        if value.name in seen_names:
            problems.append(f"{where}: value name {value.name!r} is defined more than once")
        seen_names.add(value.name)
        visible[id(value)] = value

    for value in graph.inputs:
        if value.producer is not None:
            problems.append(f"graph input {value.name!r} has a producer")
        define(value, "input")
    input_ids = {id(v) for v in graph.inputs}
    for name, value in graph.initializers.items():
        if value.name != name:
            problems.append(f"initializer key {name!r} names value {value.name!r}")
        if value.const is None:
            problems.append(f"initializer {name!r} has no data")
        elif isinstance(value.type, TensorType) and value.type.shape is not None and tuple(value.type.shape) != tuple(value.const.shape):
            problems.append(f"initializer {name!r}: type {value.type} does not match data shape {value.const.shape}")
        if id(value) not in input_ids:
            define(value, "initializer")

    for node in graph.nodes:
        where = f"node {node.name!r} ({node.qualified_op})"
        if node.graph is not graph:
            problems.append(f"{where} does not point back to graph {graph.name!r}")
        for i, value in enumerate(node.inputs):
            if value is None:
                continue
            if id(value) not in visible:
                problems.append(f"{where}: input {i} {value.name!r} is not defined before use")
            if (node, i) not in value._uses:
                problems.append(f"{where}: input {i} {value.name!r} does not record this use")
        for sub in node.subgraphs():
            if sub.parent_node is not node:
                problems.append(f"{where}: body {sub.name!r} does not point back to its node")
            _verify_graph(sub, visible, problems, seen_names)
        for i, out in enumerate(node.outputs):
            if out.producer is not node or out.index != i:
                problems.append(f"{where}: output {i} {out.name!r} has the wrong producer")
            define(out, where)
            for user, index in out._uses:
                if user.input(index) is not out:
                    problems.append(f"{out.name!r} records a stale use by {user.name!r}")
    for value in graph.outputs:
        if id(value) not in visible:
            problems.append(f"graph output {value.name!r} is not defined")
