"""A networkx view of a Graph, and the graph algorithms sparsec builds on it."""

from __future__ import annotations

import networkx as nx

from .graph import Graph, Node


def to_networkx(graph: Graph) -> nx.MultiDiGraph:
    """Nodes are the graph's Node objects; an edge u -> v carries ``value`` and ``index``.

    A node inside a nested body that captures an outer value counts as a use by the nested
    graph's owner node, so that ordering the outer graph respects implicit captures.
    """
    g = nx.MultiDiGraph()
    owner = {}
    for node in graph.nodes:
        g.add_node(node)
        for sub in node.subgraphs():
            for inner in sub.walk():
                owner[id(inner)] = node
    for node in graph.nodes:
        for out in node.outputs:
            for user, index in out.uses():
                target = user if user.graph is graph else owner.get(id(user))
                if target is not None and target is not node:
                    g.add_edge(node, target, value=out, index=index)
    return g


def topological_order(graph: Graph) -> list[Node]:
    """Producers before consumers; ties keep the current order, so sorting is stable."""
    position = {id(n): i for i, n in enumerate(graph.nodes)}
    g = to_networkx(graph)
    try:
        return list(nx.lexicographical_topological_sort(g, key=lambda n: position[id(n)]))
    except nx.NetworkXUnfeasible as err:
        cycle = nx.find_cycle(g)
        names = " -> ".join(u.name for u, *_ in cycle)
        raise ValueError(f"graph {graph.name!r} has a cycle: {names}") from err
