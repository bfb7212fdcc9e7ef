"""sparsec's graph IR: Graph, Node, Value.

The IR is SSA: every Value has one producer (a Node, or none for graph inputs and constants) and
tracks its uses as ``(node, input_index)`` pairs. Mutation goes through methods that keep producers,
uses and graph outputs consistent; the verifier (``sparsec.ir.verify``) checks the invariants.

Nested graphs (the bodies of If, Loop and Scan) are Graphs held in node attributes; a node inside
a body may use a Value of an enclosing graph directly (an implicit capture), and that use is
tracked on the outer Value like any other.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from .types import TensorType, ValueType, tensor_type_of

AttrType = onnx.AttributeProto.AttributeType


@dataclass(frozen=True)
class Attr:
    """A node attribute: its ONNX attribute type (so that empty lists round-trip) and value."""

    kind: int
    value: Any

    @staticmethod
    def infer(value: Any) -> "Attr":
        """Build an Attr from a plain Python value."""
        if isinstance(value, Attr):
            return value
        if isinstance(value, bool | int | np.integer):
            return Attr(AttrType.INT, int(value))
        if isinstance(value, float | np.floating):
            return Attr(AttrType.FLOAT, float(value))
        if isinstance(value, str):
            return Attr(AttrType.STRING, value)
        if isinstance(value, bytes):
            return Attr(AttrType.STRING, value)
        if isinstance(value, np.ndarray):
            return Attr(AttrType.TENSOR, value)
        if isinstance(value, Graph):
            return Attr(AttrType.GRAPH, value)
        if isinstance(value, list | tuple):
            items = tuple(value)
            if all(isinstance(v, Graph) for v in items) and items:
                return Attr(AttrType.GRAPHS, items)
            if all(isinstance(v, str | bytes) for v in items) and items:
                return Attr(AttrType.STRINGS, items)
            if all(isinstance(v, bool | int | np.integer) for v in items):
                return Attr(AttrType.INTS, tuple(int(v) for v in items))
            if all(isinstance(v, int | float | np.number) for v in items):
                return Attr(AttrType.FLOATS, tuple(float(v) for v in items))
        raise TypeError(f"cannot infer an attribute type for {value!r}")


class Value:
    """One SSA value: a graph input, a constant (initializer), or a node output."""

    __slots__ = ("name", "type", "producer", "index", "const", "graph", "_uses", "__weakref__")

    def __init__(self, name: str, vtype: ValueType | None = None, *, const: np.ndarray | None = None):
        self.name = name
        self.type = vtype
        self.producer: Node | None = None
        self.index = 0
        self.const = const
        self.graph: Graph | None = None  # the graph that defines it (inputs, constants, outputs)
        self._uses: list[tuple[Node, int]] = []

    # --- queries ----------------------------------------------------------------------------
    @property
    def is_constant(self) -> bool:
        return self.const is not None

    @property
    def is_graph_input(self) -> bool:
        return self.graph is not None and self.producer is None and self in self.graph.inputs

    @property
    def is_graph_output(self) -> bool:
        graph = self.defining_graph
        return graph is not None and any(v is self for v in graph.outputs)

    @property
    def defining_graph(self) -> "Graph | None":
        return self.producer.graph if self.producer is not None else self.graph

    @property
    def tensor_type(self) -> TensorType | None:
        return self.type if isinstance(self.type, TensorType) else None

    @property
    def dtype(self) -> str | None:
        t = self.tensor_type
        return t.dtype if t else None

    @property
    def shape(self):
        t = self.tensor_type
        return t.shape if t else None

    def uses(self) -> list[tuple["Node", int]]:
        return list(self._uses)

    def consumers(self) -> list["Node"]:
        seen: dict[int, Node] = {}
        for node, _ in self._uses:
            seen.setdefault(id(node), node)
        return list(seen.values())

    def has_uses(self) -> bool:
        return bool(self._uses) or self.is_graph_output

    # --- mutation ---------------------------------------------------------------------------
    def replace_all_uses_with(self, other: "Value") -> None:
        """Make every use of this value (node inputs and graph outputs) use ``other`` instead.

        A graph output keeps its name, since output names are the model's interface: ``other``
        takes the name over when it can, otherwise an Identity node carries it.
        """
        if other is self:
            return
        for node, index in list(self._uses):
            node.set_input(index, other)
        graph = self.defining_graph
        if graph is None or not any(v is self for v in graph.outputs):
            return
        for i, out in enumerate(graph.outputs):
            if out is not self:
                continue
            if other.producer is not None and other.producer.graph is graph and not other.is_graph_output:
                name = self.name
                self.name = graph.unique_name(name + "_replaced")
                graph._rename(other, name)
                graph.outputs[i] = other
            else:
                identity = graph.add_node("Identity", [other], name=graph.unique_name("keep_" + self.name))
                name = self.name
                self.name = graph.unique_name(name + "_replaced")
                graph._rename(identity.outputs[0], name)
                identity.outputs[0].type = other.type
                graph.outputs[i] = identity.outputs[0]

    def __repr__(self) -> str:
        return f"Value({self.name!r}, {self.type})"


class Node:
    """One operation. Inputs may be ``None`` for omitted optional inputs."""

    def __init__(self, op_type: str, domain: str = "", name: str = "", attrs: dict | None = None):
        self.op_type = op_type
        self.domain = domain
        self.name = name
        self.attrs: dict[str, Attr] = {k: Attr.infer(v) for k, v in (attrs or {}).items()}
        self._inputs: list[Value | None] = []
        self.outputs: list[Value] = []
        self.graph: Graph | None = None
        for attr in self.attrs.values():
            self._adopt_subgraphs(attr)

    @property
    def inputs(self) -> tuple[Value | None, ...]:
        return tuple(self._inputs)

    @property
    def qualified_op(self) -> str:
        return f"{self.domain}::{self.op_type}" if self.domain not in ("", "ai.onnx") else self.op_type

    def input(self, index: int) -> Value | None:
        return self._inputs[index] if index < len(self._inputs) else None

    def attr(self, name: str, default: Any = None) -> Any:
        """An attribute's value, with strings decoded."""
        attr = self.attrs.get(name)
        if attr is None:
            return default
        value = attr.value
        if isinstance(value, bytes):
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                return value
        return value

    def set_attr(self, name: str, value: Any) -> None:
        attr = Attr.infer(value)
        self._adopt_subgraphs(attr)
        self.attrs[name] = attr

    def subgraphs(self) -> Iterator["Graph"]:
        for attr in self.attrs.values():
            if attr.kind == AttrType.GRAPH:
                yield attr.value
            elif attr.kind == AttrType.GRAPHS:
                yield from attr.value

    def _adopt_subgraphs(self, attr: Attr) -> None:
        graphs = [attr.value] if attr.kind == AttrType.GRAPH else attr.value if attr.kind == AttrType.GRAPHS else []
        for g in graphs:
            g.parent_node = self

    # --- input mutation (keeps use lists consistent) -----------------------------------------
    def set_input(self, index: int, value: Value | None) -> None:
        while len(self._inputs) <= index:
            self._inputs.append(None)
        old = self._inputs[index]
        if old is not None:
            old._uses.remove((self, index))
        self._inputs[index] = value
        if value is not None:
            value._uses.append((self, index))

    def append_input(self, value: Value | None) -> None:
        self.set_input(len(self._inputs), value)

    def _detach_inputs(self) -> None:
        for i, v in enumerate(self._inputs):
            if v is not None:
                v._uses.remove((self, i))
        self._inputs = []

    def __repr__(self) -> str:
        return f"Node({self.qualified_op}, {self.name!r})"


class Graph:
    """An ordered list of nodes with inputs, constants (initializers) and outputs.

    The top-level graph also carries the model's opset imports and metadata.
    """

    def __init__(self, name: str = "main"):
        self.name = name
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.initializers: dict[str, Value] = {}
        self._nodes: list[Node] = []
        self.parent_node: Node | None = None
        # Model-level facts, meaningful on the top-level graph.
        self.opset_imports: dict[str, int] = {"": 17}
        self.ir_version: int = 8
        self.producer_name: str = "sparsec"
        self.metadata: dict[str, str] = {}
        self._names: set[str] = set()
        self._counter = itertools.count()

    # --- structure ----------------------------------------------------------------------------
    @property
    def nodes(self) -> tuple[Node, ...]:
        return tuple(self._nodes)

    def __len__(self) -> int:
        return len(self._nodes)

    @property
    def parent_graph(self) -> "Graph | None":
        return self.parent_node.graph if self.parent_node is not None else None

    @property
    def root(self) -> "Graph":
        graph = self
        while graph.parent_graph is not None:
            graph = graph.parent_graph
        return graph

    def opset(self, domain: str = "") -> int | None:
        imports = self.root.opset_imports
        if domain in ("", "ai.onnx"):
            return imports.get("", imports.get("ai.onnx"))
        return imports.get(domain)

    def walk(self) -> Iterator[Node]:
        """Every node, those of nested graphs included (pre-order)."""
        for node in self._nodes:
            yield node
            for sub in node.subgraphs():
                yield from sub.walk()

    def all_graphs(self) -> Iterator["Graph"]:
        yield self
        for node in self._nodes:
            for sub in node.subgraphs():
                yield from sub.all_graphs()

    def values(self) -> Iterator[Value]:
        """Every value defined in this graph (not nested ones): inputs, constants, node outputs."""
        yield from self.inputs
        for v in self.initializers.values():
            if not any(v is i for i in self.inputs):
                yield v
        for node in self._nodes:
            yield from node.outputs

    def find_value(self, name: str) -> Value | None:
        for v in self.values():
            if v.name == name:
                return v
        return None

    def find_node(self, name: str) -> Node | None:
        return next((n for n in self.walk() if n.name == name), None)

    # --- names --------------------------------------------------------------------------------
    def unique_name(self, hint: str) -> str:
        """A name used nowhere in the whole model (nested graphs share the root's namespace)."""
        names = self.root._names
        hint = hint or "v"
        if hint not in names:
            names.add(hint)
            return hint
        root = self.root
        while True:
            candidate = f"{hint}_{next(root._counter)}"
            if candidate not in names:
                names.add(candidate)
                return candidate

    def _claim(self, name: str) -> None:
        self.root._names.add(name)

    def _rename(self, value: Value, name: str) -> None:
        if value.graph is not None and value.name in value.graph.initializers:
            del value.graph.initializers[value.name]
            value.graph.initializers[name] = value
        value.name = name
        self._claim(name)

    # --- building -----------------------------------------------------------------------------
    def add_input(self, name: str, vtype: ValueType | None) -> Value:
        value = Value(self.unique_name(name) if name in self.root._names else name, vtype)
        self._claim(value.name)
        value.graph = self
        self.inputs.append(value)
        return value

    def add_constant(self, array: np.ndarray, name: str = "const") -> Value:
        """Add an initializer holding ``array`` (treated as immutable from now on)."""
        array = np.asarray(array) if not isinstance(array, np.ndarray) else array
        value = Value(self.unique_name(name), tensor_type_of(array), const=array)
        value.graph = self
        self.initializers[value.name] = value
        return value

    def add_node(
        self,
        op_type: str,
        inputs: Sequence[Value | None],
        attrs: dict | None = None,
        *,
        domain: str = "",
        name: str | None = None,
        num_outputs: int = 1,
        output_names: Sequence[str] | None = None,
        output_types: Sequence[ValueType | None] | None = None,
        before: Node | None = None,
        after: Node | None = None,
    ) -> Node:
        """Create a node with fresh output values and insert it (at the end by default)."""
        node = Node(op_type, domain, self.unique_name(name or op_type), attrs)
        for value in inputs:
            node.append_input(value)
        names = list(output_names) if output_names else [f"{node.name}_out{i}" if num_outputs > 1 else node.name + "_out" for i in range(num_outputs)]
        types = list(output_types) if output_types else [None] * len(names)
        for i, (out_name, out_type) in enumerate(zip(names, types)):
            value = Value(self.unique_name(out_name), out_type)
            value.producer = node
            value.index = i
            node.outputs.append(value)
        self.insert_node(node, before=before, after=after)
        return node

    def insert_node(self, node: Node, *, before: Node | None = None, after: Node | None = None) -> None:
        if node.graph is not None:
            raise ValueError(f"{node} already belongs to a graph")
        node.graph = self
        self._claim(node.name)
        if before is not None:
            self._nodes.insert(self._index_of(before), node)
        elif after is not None:
            self._nodes.insert(self._index_of(after) + 1, node)
        else:
            self._nodes.append(node)

    def _index_of(self, node: Node) -> int:
        for i, n in enumerate(self._nodes):
            if n is node:
                return i
        raise ValueError(f"{node} is not in graph {self.name!r}")

    def move_before(self, node: Node, anchor: Node) -> None:
        self._nodes.pop(self._index_of(node))
        self._nodes.insert(self._index_of(anchor), node)

    def remove_node(self, node: Node) -> None:
        """Remove a node whose outputs are no longer used."""
        for out in node.outputs:
            if out.has_uses():
                users = ", ".join(n.name for n in out.consumers()) or "the graph outputs"
                raise ValueError(f"cannot remove {node}: output {out.name!r} is still used by {users}")
        self._nodes.pop(self._index_of(node))
        node._detach_inputs()
        node.graph = None

    def remove_unused_constants(self) -> int:
        removed = 0
        for name, value in list(self.initializers.items()):
            if not value.has_uses() and not any(value is i for i in self.inputs):
                del self.initializers[name]
                removed += 1
        return removed

    def eliminate_dead_code(self) -> int:
        """Remove nodes whose outputs reach no graph output (nested graphs included)."""
        removed = 0
        for graph in list(self.all_graphs()):
            for node in reversed(list(graph._nodes)):
                if not any(out.has_uses() for out in node.outputs):
                    graph.remove_node(node)
                    removed += 1
            graph.remove_unused_constants()
        return removed

    def topological_sort(self) -> None:
        """Order nodes so that producers come before consumers (stable; cycles are an error)."""
        from .nx import topological_order

        self._nodes = topological_order(self)

    def clone(self) -> "Graph":
        from .clone import clone_graph

        return clone_graph(self)

    # --- convenience ------------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"Graph({self.name!r}, {len(self._nodes)} nodes)"

    def __str__(self) -> str:
        from .printer import print_graph

        return print_graph(self)

    def constant_values(self) -> Iterable[Value]:
        return self.initializers.values()
