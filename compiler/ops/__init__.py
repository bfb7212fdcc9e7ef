"""Registry of sparsec's own ops (domain ``sparsec``).

Each op declares how to infer its output types, how to compute it in numpy (the reference the
tests compare kernels with), and how to decompose it into standard ONNX (so the ORT reference
backend and Netron can run and show a rewritten graph). Backends register lowerings separately.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..ir.graph import Node
from ..ir.types import ValueType

DOMAIN = "sparsec"


@dataclass(frozen=True)
class OpDef:
    name: str
    infer_types: Callable[[Node], list[ValueType | None]]
    decompose: Callable[[Node], None] | None = None  # rewrites the node in place into standard ONNX
    doc: str = ""


_OPS: dict[tuple[str, str], OpDef] = {}


def register_op(opdef: OpDef, domain: str = DOMAIN) -> OpDef:
    _OPS[(domain, opdef.name)] = opdef
    return opdef


def get_op(domain: str, name: str) -> OpDef | None:
    return _OPS.get((domain, name))


def registered_ops() -> list[tuple[str, str]]:
    return sorted(_OPS)


# Importing the op modules registers them.
from . import experts, relu_skip, sparse  # noqa: E402,F401
