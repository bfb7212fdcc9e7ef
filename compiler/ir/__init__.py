"""sparsec's graph IR."""

from .graph import Attr, AttrType, Graph, Node, Value
from .nx import to_networkx, topological_order
from .printer import print_graph
from .types import OptionalType, SequenceType, TensorType
from .verifier import VerificationError, verify

__all__ = [
    "Attr", "AttrType", "Graph", "Node", "Value", "TensorType", "SequenceType", "OptionalType",
    "print_graph", "to_networkx", "topological_order", "verify", "VerificationError",
]
