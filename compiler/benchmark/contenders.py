"""What `sparsec bench` compares: contenders, registered by kind, all behind one interface.

A contender turns a model file into a callable that runs it (``prepare``), with the facts the
table shows (compile time, weight bytes, rewrites). One that cannot run here raises ``Skipped``
with the reason, which the table reports instead of a time.

    ort              ONNX Runtime, CPU execution provider, on the original file (the baseline)
    ort-cuda         ONNX Runtime, CUDA execution provider (skipped without one)
    tvm              sparsec's TVM build with no rewrite passes (plain TVM), per target
    sparsec          sparsec with the default passes (or --passes), per target
    sparsec:P1+P2    sparsec with exactly the passes P1, P2, per target
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import SparsecError


class Skipped(Exception):
    """The contender cannot run on this machine; the message says why."""


@dataclass
class Prepared:
    run: Callable[[dict], list]
    compile_seconds: float = 0.0
    weight_bytes: int = 0
    passes: list[str] = field(default_factory=list)
    rewrites: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Settings:
    threads: int
    dims: dict | None  # symbolic dims pinned for this case (compiled contenders need them)
    shapes: dict | None = None  # whole input shapes pinned (for unnamed dims)
    pass_options: dict | None = None  # pass name -> options, for every sparsec contender
    tuning_db: str | None = None  # tuning database for the sparsec contenders (None: the default one)


class Contender:
    kind: str
    target: str | None = None  # None: the contender has no sparsec target (ORT)

    @property
    def label(self) -> str:
        return self.kind if self.target is None else f"{self.kind}@{self.target}"

    @property
    def passes(self) -> str:
        return ""

    def prepare(self, model: Path, settings: Settings) -> Prepared:
        raise NotImplementedError


class ORTContender(Contender):
    provider = "CPUExecutionProvider"

    def __init__(self, kind: str):
        self.kind = kind

    def prepare(self, model: Path, settings: Settings) -> Prepared:
        import time

        import onnxruntime

        from ..frontend import load
        from ..frontend.onnx_export import weight_bytes
        from ..backends.ort import session_options

        if self.provider not in onnxruntime.get_available_providers():
            raise Skipped(f"onnxruntime here has no {self.provider} (installed: {', '.join(onnxruntime.get_available_providers())})")
        start = time.perf_counter()
        session = onnxruntime.InferenceSession(str(model), session_options(settings.threads), providers=[self.provider])
        seconds = time.perf_counter() - start
        return Prepared(run=lambda feeds: session.run(None, feeds), compile_seconds=seconds,
                        weight_bytes=weight_bytes(load(model)))


class ORTCudaContender(ORTContender):
    provider = "CUDAExecutionProvider"


class SparsecContender(Contender):
    """sparsec's TVM build of the model for one target, with a given pass list."""

    def __init__(self, kind: str, target: str, pass_spec: "str | list[str]", tuning_db: str | None = None):
        self.kind = kind
        self.target = target
        self.pass_spec = pass_spec
        self.tuning_db = tuning_db  # overrides the run's ("off": compile without tuning records)

    @property
    def passes(self) -> str:
        return self.pass_spec if isinstance(self.pass_spec, str) else ",".join(self.pass_spec) or "none"

    def prepare(self, model: Path, settings: Settings) -> Prepared:
        from ..driver import compile as sparsec_compile
        from ..backends.tvm.targets import get_target

        ok, why = get_target(self.target).can_run()
        if not ok:
            raise Skipped(why)
        compiled = sparsec_compile(str(model), target=self.target, passes=self.pass_spec, dims=settings.dims,
                                   shapes=settings.shapes, num_threads=settings.threads,
                                   pass_options=settings.pass_options, tuning_db=self.tuning_db or settings.tuning_db)
        return Prepared(run=compiled.run, compile_seconds=compiled.report["compile_seconds"],
                        weight_bytes=compiled.report["weight_bytes"], passes=compiled.report["passes"],
                        rewrites=compiled.report["rewrites"])


# kind -> factory(kind, target, default pass spec, passes named after ':') -> Contender
_KINDS: dict[str, Callable[..., Contender]] = {}


def register_contender(kind: str, factory: Callable[..., Contender], *, per_target: bool) -> None:
    factory.per_target = per_target
    _KINDS[kind] = factory


register_contender("ort", lambda kind, target, passes: ORTContender(kind), per_target=False)
register_contender("ort-cuda", lambda kind, target, passes: ORTCudaContender(kind), per_target=False)
register_contender("tvm", lambda kind, target, passes: SparsecContender(kind, target, []), per_target=True)
register_contender("sparsec", lambda kind, target, passes: SparsecContender(kind, target, passes), per_target=True)
# sparsec without the tuning database: side by side with "sparsec", what --tune gained
register_contender("untuned", lambda kind, target, passes: SparsecContender(kind, target, passes, tuning_db="off"),
                   per_target=True)


def contender_kinds() -> list[str]:
    return sorted(_KINDS)


def make_contenders(backends: list[str], targets: list[str], passes: str) -> list[Contender]:
    """``backends`` as the CLI takes them (``sparsec:relu-skip+moe-dispatch`` names a pass list)."""
    from ..passmanager import resolve_passes

    contenders: list[Contender] = []
    for item in backends:
        kind, _, named = item.partition(":")
        if kind not in _KINDS:
            raise SparsecError(f"unknown bench backend {kind!r}; available: {', '.join(contender_kinds())} "
                               "(sparsec:PASS+PASS runs a chosen pass list)")
        if named and kind != "sparsec":
            raise SparsecError(f"only 'sparsec' takes a pass list (sparsec:PASS+PASS), got {item!r}")
        pass_spec = ([] if named == "none" else [p for p in named.split("+") if p]) if named else passes
        resolve_passes(pass_spec)  # unknown pass names fail now, not after compiling the others
        factory = _KINDS[kind]
        for target in (targets if factory.per_target else [None]):
            contender = factory(item if named else kind, target, pass_spec)
            if contender.label in {c.label for c in contenders}:
                raise SparsecError(f"bench backend {contender.label!r} given twice")
            contenders.append(contender)
    return contenders


def outputs_match(got: list, want: list, rtol: float, atol: float) -> tuple[bool, float, float, str]:
    """(match, max abs error, max relative error, why not) of one run against the reference."""
    if len(got) != len(want):
        return False, float("inf"), float("inf"), f"{len(got)} outputs, reference has {len(want)}"
    max_abs = max_rel = 0.0
    why = ""
    for i, (a, b) in enumerate(zip(got, want)):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape or a.dtype != b.dtype:
            return False, float("inf"), float("inf"), f"output {i}: {a.dtype}{list(a.shape)} vs reference {b.dtype}{list(b.shape)}"
        if a.dtype.kind in "fc":
            diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
            err = float(np.nanmax(diff)) if diff.size else 0.0
            nan_mismatch = bool(np.any(np.isnan(a) != np.isnan(b)))
            scale = float(np.nanmax(np.abs(b))) if b.size else 0.0
            max_abs = max(max_abs, err)
            max_rel = max(max_rel, err / scale if scale > 0 else err)
            if nan_mismatch or not np.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True):
                why = why or f"output {i}: max abs error {err:.3g}"
        elif not np.array_equal(a, b):
            max_abs = max_rel = float("inf")
            why = why or f"output {i}: values differ"
    return not why, max_abs, max_rel, why
