"""Deep copy of a Graph (nested graphs included). Constant arrays are shared, not copied:
passes treat them as immutable and replace a constant rather than write into it."""

from __future__ import annotations

from .graph import Attr, AttrType, Graph, Node, Value


def clone_graph(graph: Graph) -> Graph:
    mapping: dict[int, Value] = {}
    return _clone(graph, mapping, parent_names=None)


def _clone(graph: Graph, mapping: dict[int, Value], parent_names) -> Graph:
    new = Graph(graph.name)
    if parent_names is None:
        new.opset_imports = dict(graph.opset_imports)
        new.ir_version = graph.ir_version
        new.producer_name = graph.producer_name
        new.metadata = dict(graph.metadata)
        new._names = set(graph.root._names)
    else:
        new._names = parent_names

    def copy_value(v: Value) -> Value:
        c = Value(v.name, v.type, const=v.const)
        c.graph = new
        mapping[id(v)] = c
        return c

    for v in graph.inputs:
        new.inputs.append(copy_value(v))
    for name, v in graph.initializers.items():
        new.initializers[name] = mapping[id(v)] if id(v) in mapping else copy_value(v)
    for node in graph.nodes:
        attrs = {}
        for key, attr in node.attrs.items():
            if attr.kind == AttrType.GRAPH:
                attrs[key] = Attr(attr.kind, _clone(attr.value, mapping, new.root._names))
            elif attr.kind == AttrType.GRAPHS:
                attrs[key] = Attr(attr.kind, tuple(_clone(g, mapping, new.root._names) for g in attr.value))
            else:
                attrs[key] = attr
        copy = Node(node.op_type, node.domain, node.name, attrs)
        for v in node.inputs:
            copy.append_input(None if v is None else mapping[id(v)])
        for out in node.outputs:
            c = Value(out.name, out.type)
            c.producer = copy
            c.index = out.index
            copy.outputs.append(c)
            mapping[id(out)] = c
        copy.graph = new
        new._nodes.append(copy)
    new.outputs = [mapping[id(v)] for v in graph.outputs]
    return new
