"""``sparsec.bench``: run contenders side by side on models and collect a BenchResult."""

from __future__ import annotations

import itertools
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from ..driver import hash_file
from ..errors import SparsecError
from ..frontend import load
from ..versions import versions
from .contenders import Prepared, Settings, Skipped, make_contenders, outputs_match
from .inputs import batch_dims, generate, load_npz
from .measure import CacheEviction, PeakMemory, interleaved_times, summarize
from .result import BackendResult, BenchResult, CaseResult


@dataclass
class ModelCase:
    """One model to benchmark: a file, or a ModelProto written to a temporary file first."""

    name: str
    model: "str | os.PathLike | onnx.ModelProto"
    params: dict = field(default_factory=dict)  # the family parameters that generated it, if any


def bench(
    models: "str | os.PathLike | onnx.ModelProto | ModelCase | Iterable",
    *,
    backends: Iterable[str] = ("ort", "tvm", "sparsec"),
    targets: Iterable[str] = ("llvm",),
    passes: "str | list[str]" = "default",
    threads: int | None = None,
    batch: "int | Iterable[int] | None" = None,
    dims: dict[str, int] | None = None,
    shapes: dict[str, list[int]] | None = None,
    pass_options: dict[str, dict] | None = None,
    tuning_db: str | None = None,
    inputs: "str | os.PathLike | dict | None" = None,
    repeat: int = 20,
    warmup: int = 3,
    rtol: float = 1e-3,
    atol: float = 1e-4,
    seed: int = 0,
    cold: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
    command: str | None = None,
) -> BenchResult:
    """Benchmark every model (and batch size) on every backend x target; see ``BenchResult``.

    Runs are interleaved across backends after ``warmup`` calls each; every backend's outputs are
    compared with ONNX Runtime on the original model. A backend that cannot run here is reported
    as skipped, one that fails as an error; neither stops the others. ``cold``: every timed call
    follows a read of twice the largest CPU cache (untimed), so each backend finds its weights in
    memory, as one layer of a bigger model does, and none finds what another has just read.
    """
    if repeat < 1 or warmup < 0:
        raise SparsecError("repeat must be >= 1 and warmup >= 0")
    threads = threads or os.cpu_count() or 1
    # TVM's pool otherwise spins after each call and fights ORT's threads in the same process.
    os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")
    contenders = make_contenders(list(backends), list(targets), passes)
    batches = [None] if batch is None else ([batch] if isinstance(batch, int) else list(batch))
    cases = []
    eviction = CacheEviction() if cold else None
    with tempfile.TemporaryDirectory(prefix="sparsec-bench-") as scratch:
        for model_case in _model_cases(models):
            path = _as_file(model_case, Path(scratch))
            for size in batches:
                cases.append(_bench_case(model_case, path, size, dims, shapes, pass_options, tuning_db, inputs, contenders,
                                         threads, repeat, warmup, rtol, atol, seed, eviction, progress))
    settings = {"threads": threads, "repeat": repeat, "warmup": warmup, "rtol": rtol, "atol": atol, "seed": seed,
                "backends": [c.label for c in contenders], "passes": passes if isinstance(passes, str) else list(passes),
                "tvm_thread_pool_spin_count": os.environ.get("TVM_THREAD_POOL_SPIN_COUNT"), "tuning_db": tuning_db, "cold": cold}
    return BenchResult(machine=machine(), versions=versions(), settings=settings, cases=cases,
                       command=command or "sparsec.bench(...)", created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def _bench_case(model_case, path, size, dims, shapes, pass_options, tuning_db, inputs, contenders, threads, repeat, warmup, rtol,
                atol, seed, eviction, progress):
    graph = load(path)
    case_dims = {**batch_dims(graph, size), **(dims or {})}
    if isinstance(inputs, dict):
        feeds = inputs
    elif inputs is not None:
        feeds = load_npz(Path(inputs), graph)
    else:
        feeds = generate(graph, case_dims, seed, shapes)
    name = model_case.name + (f" batch {size}" if size is not None else "")
    case = CaseResult(name=name, model=str(model_case.model) if not isinstance(model_case.model, onnx.ModelProto) else model_case.name,
                      sha256=hash_file(path), batch=size, dims=case_dims, params=dict(model_case.params),
                      inputs=[{"name": k, "dtype": str(v.dtype), "shape": list(v.shape)} for k, v in feeds.items()])
    reference, reference_error = _reference(path, feeds, threads)
    settings = Settings(threads=threads, dims=case_dims or None, shapes=shapes, pass_options=pass_options, tuning_db=tuning_db)
    ready: dict[str, Prepared] = {}
    total = len(contenders) + repeat
    for step, contender in enumerate(contenders):
        if progress:
            progress(f"{name}: preparing {contender.label}", step, total)
        result = BackendResult(backend=contender.label, kind=contender.kind, target=contender.target,
                               passes=contender.passes)
        case.results.append(result)
        try:
            with PeakMemory() as memory:
                prepared = contender.prepare(path, settings)
                outputs = prepared.run(feeds)
                for _ in range(max(warmup - 1, 0)):
                    prepared.run(feeds)
        except Skipped as why:
            result.status, result.reason = "skipped", str(why)
            continue
        except Exception as err:  # one backend failing must not hide the others' results
            result.status, result.reason = "error", _one_line(err)
            continue
        result.peak_memory_bytes = memory.bytes
        result.compile_seconds = round(prepared.compile_seconds, 3)
        result.weight_bytes = prepared.weight_bytes
        result.passes = ",".join(prepared.passes) if prepared.passes else result.passes
        result.rewrites = dict(prepared.rewrites)
        if reference is None:
            result.mismatch = f"no reference: ONNX Runtime fails on the original model ({reference_error})"
        else:
            result.correct, result.max_abs_err, result.max_rel_err, result.mismatch = outputs_match(outputs, reference, rtol, atol)
        ready[contender.label] = prepared
    rounds = iter(range(1, repeat + 1))
    times = interleaved_times({label: (lambda p=p: p.run(feeds)) for label, p in ready.items()}, repeat,
                              on_round=(lambda: progress(f"{name}: timing", len(contenders) + next(rounds), total)) if progress else None,
                              before_each=eviction)
    for result in case.results:
        if result.backend in times:
            result.times_ms = summarize(times[result.backend])
    baseline = next((r for r in case.results if r.kind == "ort" and r.times_ms), None)
    for result in case.results:
        if baseline and result.times_ms:
            result.speedup_vs_ort = baseline.times_ms["median"] / result.times_ms["median"]
    return case


def _reference(path: Path, feeds: dict, threads: int):
    from ..backends.ort import make_session

    try:
        return make_session(path, threads).run(None, feeds), ""
    except Exception as err:
        return None, _one_line(err)


def _model_cases(models) -> list[ModelCase]:
    if isinstance(models, (str, os.PathLike, onnx.ModelProto, ModelCase)):
        models = [models]
    cases = []
    for i, model in enumerate(models):
        if isinstance(model, ModelCase):
            cases.append(model)
        elif isinstance(model, onnx.ModelProto):
            cases.append(ModelCase(model.graph.name or f"model{i}", model))
        else:
            if not Path(model).is_file():
                raise SparsecError(f"no model file at {model}")
            cases.append(ModelCase(Path(model).name, model))
    if not cases:
        raise SparsecError("no model to benchmark")
    return cases


def _as_file(case: ModelCase, scratch: Path) -> Path:
    if not isinstance(case.model, onnx.ModelProto):
        return Path(case.model)
    path = scratch / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', case.name)}.onnx"
    large = case.model.ByteSize() > 1_800_000_000
    onnx.save_model(case.model, path, save_as_external_data=large, location=path.name + ".data" if large else None)
    return path


def _one_line(err: Exception) -> str:
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[-1] if lines else ''}".strip()


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = match.group(1).strip() if match else cpu
    except OSError:
        pass
    memory = None
    try:
        match = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
        memory = int(match.group(1)) * 1024 if match else None
    except OSError:
        pass
    return {"system": platform.system(), "machine": platform.machine(), "cpu": cpu, "cores": os.cpu_count(),
            "memory_bytes": memory, "python": sys.version.split()[0], "hostname": platform.node()}


def sweep_cases(family: str, grid: dict[str, list]) -> list[ModelCase]:
    """Every combination of the swept parameter values of a registered model family."""
    from .families import get_family

    fam = get_family(family)
    keys = list(grid)
    cases = []
    for values in itertools.product(*(grid[k] for k in keys)):
        params = dict(zip(keys, values))
        label = family + " " + " ".join(f"{k}={v}" for k, v in params.items())
        try:
            model = fam.build(**params)
        except (ValueError, TypeError) as err:  # a builder's refusal of the swept values
            raise SparsecError(f"family {family!r} cannot build {params}: {err}") from None
        cases.append(ModelCase(label.strip(), model, params))
    return cases
