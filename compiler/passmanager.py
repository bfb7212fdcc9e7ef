"""Passes and the pass manager.

A pass is a small object with one job: ``run(graph, ctx)`` rewrites the graph in place and returns
a PassResult counting its rewrites by rule name, with a note for every candidate it declined and
why. Passes register by name; ``"default"`` selects every exact pass marked default.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import ClassVar

from .errors import SparsecError
from .ir.graph import Graph
from .ir.verifier import verify


@dataclass
class PassResult:
    rewrites: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)  # pass-specific, JSON-serialisable


@dataclass
class PassContext:
    """What passes may consult: the compile options and the target they compile for."""

    target: str = "llvm"
    options: dict = field(default_factory=dict)
    pass_options: dict = field(default_factory=dict)  # pass name -> its options

    def options_of(self, pass_name: str) -> dict:
        return dict(self.pass_options.get(pass_name, {}))

    def has_kernel(self, op_type: str) -> bool:
        """Whether sparsec's op ``op_type`` has a kernel for this target: a pass rewrites into
        an op only where it can be lowered."""
        from sparsec.backends.tvm.lower import has_kernel

        return has_kernel(op_type, self.target)


class Pass:
    name: ClassVar[str]
    description: ClassVar[str] = ""
    exact: ClassVar[bool] = True  # False: changes outputs within a reported error
    default: ClassVar[bool] = True  # part of "default" (only exact passes may be)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        raise NotImplementedError


_PASSES: dict[str, type[Pass]] = {}


def register_pass(cls: type[Pass]) -> type[Pass]:
    if cls.default and not cls.exact:
        raise ValueError(f"pass {cls.name!r} is approximate and cannot be in the default pipeline")
    _PASSES[cls.name] = cls
    return cls


def registered_passes() -> list[type[Pass]]:
    _load_builtin_passes()
    return [_PASSES[k] for k in sorted(_PASSES)]


def _load_builtin_passes() -> None:
    import sparsec.passes  # noqa: F401 - importing registers the built-in passes


def resolve_passes(spec: "str | list[str] | tuple[str, ...] | None") -> list[Pass]:
    """``"default"``, ``[]``/``"none"``, ``"a,b"`` or a list of names (``"default"`` may appear in it)."""
    _load_builtin_passes()
    if spec is None or spec == "default":
        names = ["default"]
    elif isinstance(spec, str):
        names = [] if spec.strip() in ("", "none") else [s.strip() for s in spec.split(",") if s.strip()]
    else:
        names = list(spec)
    chosen: list[str] = []
    for name in names:
        if name == "default":
            chosen += [n for n, cls in sorted(_PASSES.items()) if cls.default and n not in chosen]
        elif name not in _PASSES:
            raise SparsecError(f"unknown pass {name!r}; available: {', '.join(sorted(_PASSES)) or '(none)'}")
        elif name not in chosen:
            chosen.append(name)
    return [_PASSES[n]() for n in chosen]


class PassManager:
    def __init__(self, passes: list[Pass], *, verify_each: bool = True):
        self.passes = passes
        self.verify_each = verify_each

    def run(self, graph: Graph, ctx: PassContext) -> dict:
        report = {"passes": [p.name for p in self.passes], "rewrites": Counter(), "notes": {}, "pass_seconds": {},
                  "details": {}}
        for p in self.passes:
            start = time.perf_counter()
            result = p.run(graph, ctx)
            report["pass_seconds"][p.name] = round(time.perf_counter() - start, 4)
            report["rewrites"].update(result.rewrites)
            if result.notes:
                report["notes"][p.name] = list(result.notes)
            if result.details:
                report["details"][p.name] = result.details
            if self.verify_each:
                verify(graph)
        report["rewrites"] = dict(report["rewrites"])
        return report
