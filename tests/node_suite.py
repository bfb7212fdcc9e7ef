"""The ONNX backend node suite, regenerated from the case definitions the onnx wheel ships.

The onnx wheel no longer ships the node test data, only the case definitions; this module builds
the cases with ``onnx.backend.test.case.node.collect_testcases()`` and runs each through sparsec:

* round trip: ``sparsec.load`` -> ``sparsec.to_onnx`` -> ONNX Runtime, compared with the case's
  expected outputs. Where it fails and ORT fails the *original* model too, the reason says
  ``ort fails original``;
* TVM: ``sparsec.compile(model, passes=[])`` (llvm) -> run every data set, compared likewise.

Tolerance: floats ``rtol=max(case.rtol, 1e-3)``, ``atol=max(case.atol, 1e-4)`` (bfloat16 at least
two bfloat16 ulps, as ONNX's own runner); strings, bools and integers exact; shape and dtype exact.

Checked-in results (``tests/test_node_suite.py`` fails if a listed case stops passing)::

    python -m tests.node_suite --update                       # both, all cases, 2 workers
    python -m tests.node_suite --update --only roundtrip
    python -m tests.node_suite --update --only tvm --jobs 2
    python -m tests.node_suite --sample 30 --only tvm         # time a stride sample; writes nothing

``--update`` rewrites ``tests/data/node_suite_roundtrip_pass.txt``, ``node_suite_tvm_pass.txt`` and
``node_suite_summary.json``; per-case results (reason, seconds) go to ``out/node_suite_<mode>.jsonl``
(not checked in). Cases run in worker processes, recycled every ``--max-tasks`` cases, with a
per-case timeout: a TVM crash (segfault) or hang fails that case only.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import json
import os
import re
import sys
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = HERE / "data"
ROUNDTRIP_LIST = DATA / "node_suite_roundtrip_pass.txt"
TVM_LIST = DATA / "node_suite_tvm_pass.txt"
SUMMARY = DATA / "node_suite_summary.json"
RESULTS_DIR = ROOT / "out"

RTOL, ATOL = 1e-3, 1e-4
CASE_TIMEOUT = 60.0
MODES = ("roundtrip", "tvm")


# --- cases -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NodeCase:
    name: str
    model: onnx.ModelProto
    data_sets: list  # [(inputs list, expected outputs list)], numpy arrays / lists / None
    rtol: float = RTOL
    atol: float = ATOL

    def feeds(self, inputs: list) -> dict[str, Any]:
        """Data-set inputs by the model's graph input names (the order ``expect`` wrote them in)."""
        names = [vi.name for vi in self.model.graph.input]
        return dict(zip(names, inputs))


def _normalize(value):
    """The case data as the ONNX runner sees it: TensorProto -> ndarray, numpy scalar -> 0-d array."""
    if value is None:
        return None
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, list | tuple):
        return [_normalize(v) for v in value]
    if isinstance(value, np.ndarray):
        return value
    return np.asarray(value)


@functools.cache
def _collected() -> tuple[NodeCase, ...]:
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = collect_testcases()
    cases = []
    for tc in raw:
        data_sets = [([_normalize(x) for x in ins], [_normalize(y) for y in outs]) for ins, outs in tc.data_sets]
        cases.append(NodeCase(tc.name, tc.model, data_sets, max(tc.rtol, RTOL), max(tc.atol, ATOL)))
    cases.sort(key=lambda c: c.name)
    return tuple(cases)


def collect_cases() -> list[NodeCase]:
    """Every node case of the installed onnx (1884 in onnx 1.23.2), sorted by name."""
    return list(_collected())


@functools.cache
def cases_by_name() -> dict[str, NodeCase]:
    return {c.name: c for c in _collected()}


# --- comparison --------------------------------------------------------------------------------
def _ml_dtypes():
    import ml_dtypes

    return ml_dtypes


def _is_float(dtype: np.dtype) -> bool:
    if dtype.kind in "fc":
        return True
    ml = _ml_dtypes()
    try:
        return bool(ml.finfo(dtype))  # bfloat16, float8 and float4 types
    except Exception:
        return False


def compare(got, want, rtol: float = RTOL, atol: float = ATOL, where: str = "output") -> str | None:
    """None if ``got`` matches ``want``, else a short reason."""
    if want is None:
        return None if got is None else f"{where}: expected an empty optional, got {type(got).__name__}"
    if isinstance(want, list | tuple):
        if not isinstance(got, list | tuple):
            return f"{where}: expected a sequence of {len(want)}, got {type(got).__name__}"
        if len(got) != len(want):
            return f"{where}: sequence length {len(got)} != {len(want)}"
        for i, (g, w) in enumerate(zip(got, want)):
            why = compare(g, w, rtol, atol, f"{where}[{i}]")
            if why:
                return why
        return None
    if got is None or isinstance(got, list | tuple):
        return f"{where}: expected a tensor, got {'None' if got is None else 'a sequence'}"
    got = np.asarray(got)
    want = np.asarray(want)
    if got.shape != want.shape:
        return f"{where}: shape {list(got.shape)} != {list(want.shape)}"
    if got.dtype != want.dtype and not (got.dtype.kind in "OUS" and want.dtype.kind in "OUS"):
        return f"{where}: dtype {got.dtype} != {want.dtype}"
    if _is_float(want.dtype):
        g, w = got.astype(np.complex128 if want.dtype.kind == "c" else np.float64), want.astype(
            np.complex128 if want.dtype.kind == "c" else np.float64)
        r = max(rtol, 2**-6) if want.dtype.name == "bfloat16" else rtol
        if not np.allclose(g, w, rtol=r, atol=atol, equal_nan=True):
            with np.errstate(invalid="ignore"):
                err = np.nanmax(np.abs(g - w)) if g.size else 0.0
            return f"{where}: values differ (max abs err {float(np.real(err)):.3g})"
        return None
    if want.dtype.kind in "OUS":
        same = got.shape == want.shape and all(
            (a.decode() if isinstance(a, bytes) else a) == (b.decode() if isinstance(b, bytes) else b)
            for a, b in zip(got.ravel().tolist(), want.ravel().tolist()))
    else:
        same = np.array_equal(got, want)
    return None if same else f"{where}: values differ (exact)"


def compare_outputs(got: list, want: list, rtol: float, atol: float) -> str | None:
    if len(got) != len(want):
        return f"got {len(got)} outputs, expected {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        why = compare(g, w, rtol, atol, f"output {i}")
        if why:
            return why
    return None


def _short(err: BaseException, limit: int = 200) -> str:
    text = str(err).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # TVM errors carry a C++ traceback; its last line says what went wrong.
    line = lines[-1] if lines and ("Traceback" in lines[0] or lines[0].startswith("File ")) else (lines[0] if lines else "")
    return f"{type(err).__name__}: {line[:limit]}"


# --- ONNX Runtime ------------------------------------------------------------------------------
_SUB_BYTE_BITS = {onnx.TensorProto.INT4: 4, onnx.TensorProto.UINT4: 4, onnx.TensorProto.FLOAT4E2M1: 4}
for _name in ("INT2", "UINT2"):
    if hasattr(onnx.TensorProto, _name):
        _SUB_BYTE_BITS[getattr(onnx.TensorProto, _name)] = 2


def _ort():
    import onnxruntime as ort

    return ort


def ort_session(model: onnx.ModelProto):
    ort = _ort()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _ort_value(x):
    """numpy -> what ORT takes. ml_dtypes arrays (bfloat16, float8, int4...) go in as OrtValues."""
    if not isinstance(x, np.ndarray) or x.dtype.num < 256:  # numpy's own dtypes; ml_dtypes' are user types
        return x
    ort = _ort()
    elem = onnx.helper.np_dtype_to_tensor_dtype(x.dtype)
    bits = _SUB_BYTE_BITS.get(elem)
    raw = np.ascontiguousarray(x).view(np.uint8 if x.dtype.itemsize == 1 else np.uint16)
    if bits:  # ORT packs 8/bits elements a byte, low bits first; shape stays the logical one
        per = 8 // bits
        flat = (raw.ravel() & ((1 << bits) - 1)).astype(np.uint8)
        flat = np.concatenate([flat, np.zeros((-flat.size) % per, np.uint8)]).reshape(-1, per)
        packed = np.zeros(flat.shape[0], np.uint8)
        for k in range(per):
            packed |= flat[:, k] << (k * bits)
        raw = np.zeros(x.shape, np.uint8)  # a buffer of the logical shape, packed bytes first
        raw.reshape(-1)[: packed.size] = packed
    value = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(raw, elem)
    value._keep = raw  # the OrtValue does not own the buffer
    return value


def _from_ort_value(value) -> np.ndarray:
    """An OrtValue ORT cannot turn into numpy (bfloat16, float8, int4...) -> ml_dtypes array."""
    elem = value.element_type()
    dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
    shape = tuple(value.shape())
    size = value.tensor_size_in_bytes()
    data = bytes((ctypes.c_char * size).from_address(value.data_ptr())) if size else b""
    raw = np.frombuffer(data, np.uint8)
    bits = _SUB_BYTE_BITS.get(elem)
    count = int(np.prod(shape, dtype=np.int64))
    if bits:
        per = 8 // bits
        parts = [(raw >> (k * bits)) & ((1 << bits) - 1) for k in range(per)]
        raw = np.stack(parts, axis=1).reshape(-1)[:count]
        if elem in (onnx.TensorProto.INT4,) or elem == getattr(onnx.TensorProto, "INT2", -1):
            raw = np.where(raw >= (1 << (bits - 1)), raw.astype(np.int16) - (1 << bits), raw).astype(np.int8)
            return raw.astype(dtype).reshape(shape)
        return raw.astype(np.uint8).view(dtype).reshape(shape)
    return raw.view(dtype).reshape(shape).copy()


_ORT_NATIVE = {"tensor(float8e4m3fn)", "tensor(float8e4m3fnuz)", "tensor(float8e5m2)", "tensor(float8e5m2fnuz)"}


def run_ort(model: onnx.ModelProto, case: NodeCase) -> tuple[bool, str]:
    """Run ``model`` on ORT with each of ``case``'s data sets and compare; never raises."""
    stage = "ort session"
    try:
        session = ort_session(model)
        stage = "ort run"
        out_types = [o.type for o in session.get_outputs()]
        for n, (inputs, outputs) in enumerate(case.data_sets):
            given = case.feeds(inputs)
            missing = [i.name for i in session.get_inputs() if i.name not in given]
            if missing:
                return False, f"ort run: model input {missing[0]!r} is not among the case's inputs"
            feeds = {i.name: _ort_value(given[i.name]) for i in session.get_inputs()}
            try:
                got = session.run(None, feeds)
            except RuntimeError as err:  # outputs numpy has no type for (bfloat16, int4...)
                if "No corresponding Numpy type" not in str(err):
                    raise
                ort = _ort()
                values = {k: v if isinstance(v, ort.OrtValue) else ort.OrtValue.ortvalue_from_numpy(v)
                          for k, v in feeds.items()}
                got = [_from_ort_value(v) for v in session.run_with_ort_values(None, values)]
            # ORT hands float8 outputs back as their uint8 bits
            got = [g.view(onnx.helper.tensor_dtype_to_np_dtype(onnx.helper.np_dtype_to_tensor_dtype(w.dtype)))
                   if t in _ORT_NATIVE and isinstance(g, np.ndarray) and isinstance(w, np.ndarray) and g.dtype == np.uint8
                   else g for g, t, w in zip(got, out_types, outputs)]
            why = compare_outputs(list(got), list(outputs), case.rtol, case.atol)
            if why:
                return False, f"mismatch: {why}" + (f" (data set {n})" if len(case.data_sets) > 1 else "")
        return True, ""
    except Exception as err:  # any failure fails the case
        return False, f"{stage}: {_short(err)}"


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def run_ort_original(case: NodeCase) -> tuple[bool, str]:
    return run_ort(case.model, case)


def run_roundtrip(case: NodeCase, ort_original: tuple[bool, str] | None = None) -> tuple[bool, str]:
    """sparsec.load -> sparsec.to_onnx -> ORT, compared with the expected outputs."""
    import sparsec

    try:
        graph = sparsec.load(_copy(case.model))
    except Exception as err:
        ok, why = False, f"sparsec load: {_short(err)}"
    else:
        try:
            exported = sparsec.to_onnx(graph)
        except Exception as err:
            ok, why = False, f"sparsec export: {_short(err)}"
        else:
            ok, why = run_ort(exported, case)
    if ok:
        return True, ""
    original_ok, original_why = ort_original if ort_original is not None else run_ort_original(case)
    if not original_ok:
        return False, f"ort fails original ({original_why}); round trip: {why}"
    return False, why


def run_tvm(case: NodeCase) -> tuple[bool, str]:
    """sparsec.compile(model, passes=[]) (llvm) -> run each data set, compared with the expected outputs."""
    import sparsec

    try:
        compiled = sparsec.compile(_copy(case.model), passes=[])
    except Exception as err:
        return False, f"compile: {_short(err)}"
    try:
        for n, (inputs, outputs) in enumerate(case.data_sets):
            given = case.feeds(inputs)
            wanted = [s.name for s in compiled.inputs]
            missing = [name for name in wanted if name not in given]
            if missing:
                return False, f"run: compiled input {missing[0]!r} is not among the case's inputs"
            got = compiled.run({name: given[name] for name in wanted})
            why = compare_outputs(list(got), list(outputs), case.rtol, case.atol)
            if why:
                return False, f"mismatch: {why}" + (f" (data set {n})" if len(case.data_sets) > 1 else "")
        return True, ""
    except Exception as err:
        return False, f"run: {_short(err)}"


def run_case(name: str, mode: str) -> dict:
    """One case in one mode, as the update records it."""
    case = cases_by_name()[name]
    start = time.perf_counter()
    if mode == "roundtrip":
        ort_original = run_ort_original(case)
        ok, why = run_roundtrip(case, ort_original)
        result = {"ok": ok, "reason": why, "ort_ok": ort_original[0], "ort_reason": ort_original[1]}
    elif mode == "tvm":
        ok, why = run_tvm(case)
        result = {"ok": ok, "reason": why}
    else:
        raise ValueError(mode)
    result.update(name=name, mode=mode, seconds=round(time.perf_counter() - start, 3))
    return result


# --- worker processes --------------------------------------------------------------------------
def _worker_main(conn, quiet: bool, runner) -> None:
    # One core each: the machine has two, and `jobs` workers share them.
    for var in ("TVM_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    if quiet:  # TVM and ORT print to the C-level streams
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
    warnings.simplefilter("ignore")
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        try:
            result = runner(*task)
        except BaseException as err:  # noqa: BLE001 - report, never die quietly
            result = {"task": list(task), "ok": False, "reason": f"harness: {_short(err)}", "seconds": 0.0}
        conn.send(result)


class _Worker:
    def __init__(self, ctx, quiet: bool, runner):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, quiet, runner), daemon=True)
        self.process.start()
        child.close()
        self.task = None
        self.started = 0.0
        self.done = 0

    def send(self, task) -> None:
        self.task, self.started = task, time.monotonic()
        self.conn.send(task)

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.process.kill()
        else:
            try:
                self.conn.send(None)
            except OSError:
                pass
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


def run_many(names: list[str], mode: str, *, jobs: int = 2, timeout: float = CASE_TIMEOUT,
             max_tasks: int = 100, quiet: bool = True, on_result=None) -> list[dict]:
    """Run ``names`` in ``mode`` over ``jobs`` worker processes (see run_tasks)."""
    def as_case(result: dict) -> dict:  # a failure the pool recorded names its task
        if "task" not in result:
            return result
        name, mode = result["task"]
        return {"name": name, "mode": mode, **{k: v for k, v in result.items() if k != "task"}}

    results = run_tasks([(name, mode) for name in names], run_case, jobs=jobs, timeout=timeout, max_tasks=max_tasks,
                        quiet=quiet, on_result=(lambda r: on_result(as_case(r))) if on_result else None)
    return sorted((as_case(r) for r in results), key=lambda r: r["name"])


def run_tasks(tasks, runner, *, jobs: int = 2, timeout: float = CASE_TIMEOUT, max_tasks: int = 100,
              quiet: bool = True, on_result=None) -> list[dict]:
    """``runner(*task)`` (a dict) for each of ``tasks`` (tuples; any iterable, read as workers
    free up) over ``jobs`` worker processes (fork; recycled every ``max_tasks`` tasks). A task that
    crashes its worker or runs past ``timeout`` seconds fails alone: its result is ``{"task",
    "ok": False, "reason": "crash: ..." | "timeout: ...", "seconds"}``."""
    import multiprocessing
    from multiprocessing.connection import wait

    _collected()  # build the cases once, before forking: workers inherit them
    ctx = multiprocessing.get_context("fork")
    tasks = iter(tasks)
    upcoming = next(tasks, None)
    workers: list[_Worker] = []
    results: list[dict] = []

    def finish(result):
        results.append(result)
        if on_result:
            on_result(result)

    try:
        while upcoming is not None or any(w.task for w in workers):
            while len(workers) < jobs and upcoming is not None:
                workers.append(_Worker(ctx, quiet, runner))
            for w in workers:
                if w.task is None and upcoming is not None:
                    w.send(upcoming)
                    upcoming = next(tasks, None)
            busy = [w for w in workers if w.task]
            now = time.monotonic()
            wait_for = max(0.05, min(w.started + timeout - now for w in busy))
            ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout=wait_for)
            now = time.monotonic()
            for w in list(busy):
                task = list(w.task)
                if w.conn in ready:
                    try:
                        result = w.conn.recv()
                    except (EOFError, OSError):
                        result = None
                    if result is not None:
                        w.task = None
                        w.done += 1
                        finish(result)
                        if w.done >= max_tasks:
                            w.stop()
                            workers.remove(w)
                        continue
                if w.process.sentinel in ready or not w.process.is_alive():
                    code = w.process.exitcode
                    finish({"task": task, "ok": False, "seconds": round(now - w.started, 3),
                            "reason": f"crash: worker died (exit code {code})"})
                    w.task = None
                    w.stop(kill=True)
                    workers.remove(w)
                elif now - w.started > timeout:
                    finish({"task": task, "ok": False, "seconds": round(now - w.started, 3),
                            "reason": f"timeout: over {timeout:g} s"})
                    w.task = None
                    w.stop(kill=True)
                    workers.remove(w)
    finally:
        for w in workers:
            w.stop(kill=True)
    return results


# --- update ------------------------------------------------------------------------------------
def reason_kind(reason: str) -> str:
    """A reason with names and numbers taken out, to count failures by kind."""
    if reason.startswith("ort fails original ("):  # ORT's own failure is the story; drop the echo
        reason = "ort fails original: " + reason[len("ort fails original ("):].split("); round trip: ")[0]
    kind = re.sub(r"'[^'\s]*'|\"[^\"\s]*\"", "'X'", reason)
    kind = re.sub(r"\[ONNXRuntimeError\] : \d+ : ", "", kind)
    kind = re.sub(r"\b\d+(\.\d+)?(e[-+]?\d+)?\b", "N", kind)
    kind = re.sub(r"\[[^\]]*\]", "[...]", kind)
    return kind[:140]


def top_reasons(results: list[dict], n: int = 30) -> list[list]:
    counts = Counter(reason_kind(r["reason"]) for r in results if not r["ok"])
    return [[kind, count] for kind, count in counts.most_common(n)]


def read_list(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def read_summary() -> dict:
    return json.loads(SUMMARY.read_text()) if SUMMARY.exists() else {}


def _versions() -> dict:
    from importlib.metadata import version

    return {p: version(p) for p in ("onnx", "onnxruntime", "apache-tvm")}


def update(modes: list[str], jobs: int, timeout: float, max_tasks: int, names: list[str] | None = None,
           write: bool = True) -> dict:
    all_names = [c.name for c in collect_cases()]
    names = names if names is not None else all_names
    previous = read_summary()
    # Keep only what this harness wrote: a mode's count stays if its run record is there too.
    summary = {k: previous[k] for k in ("ort_original_pass",) if k in previous and "roundtrip_run" in previous}
    for mode in MODES:
        if f"{mode}_run" in previous and f"{mode}_pass" in previous:
            summary[f"{mode}_pass"], summary[f"{mode}_run"] = previous[f"{mode}_pass"], previous[f"{mode}_run"]
    summary["total"] = len(all_names)
    summary["versions"] = _versions()
    RESULTS_DIR.mkdir(exist_ok=True)
    for mode in modes:
        log_path = RESULTS_DIR / f"node_suite_{mode}{'' if write else '_sample'}.jsonl"
        start = time.perf_counter()
        done = 0
        with open(log_path, "w") as log:
            def on_result(result):
                nonlocal done
                done += 1
                log.write(json.dumps(result) + "\n")
                log.flush()
                if done % 50 == 0 or done == len(names):
                    elapsed = time.perf_counter() - start
                    print(f"[{mode}] {done}/{len(names)} in {elapsed:.0f} s", flush=True)

            results = run_many(names, mode, jobs=jobs, timeout=timeout, max_tasks=max_tasks, on_result=on_result)
        wall = time.perf_counter() - start
        passed = sorted(r["name"] for r in results if r["ok"])
        seconds = [r["seconds"] for r in results]
        stats = {
            "cases_run": len(results),
            "pass": len(passed),
            "wall_seconds": round(wall, 1),
            "jobs": jobs,
            "mean_case_seconds": round(sum(seconds) / max(len(seconds), 1), 3),
            "mean_pass_case_seconds": round(sum(r["seconds"] for r in results if r["ok"]) / max(len(passed), 1), 3),
            "timeouts": sum(r["reason"].startswith("timeout") for r in results),
            "crashes": sum(r["reason"].startswith("crash") for r in results),
            "top_failure_reasons": top_reasons(results),
        }
        print(f"[{mode}] {len(passed)} of {len(results)} pass; {wall:.0f} s wall with {jobs} jobs, "
              f"{stats['mean_case_seconds']} s per case in a worker; results in {log_path}")
        if mode == "roundtrip":
            ort_pass = sum(bool(r.get("ort_ok")) for r in results)
            both = [r for r in results if not r["ok"] and r.get("ort_ok")]
            stats["top_failure_reasons_where_ort_passes_original"] = top_reasons(both)
            print(f"[{mode}] ORT on the original models passes {ort_pass}; "
                  f"round trip fails {len(both)} that ORT passes")
        if not write:
            for kind, count in stats["top_failure_reasons"][:10]:
                print(f"    {count:5d}  {kind}")
            continue
        if len(names) != len(all_names):
            raise SystemExit("--update needs every case (no --cases/--sample)")
        (TVM_LIST if mode == "tvm" else ROUNDTRIP_LIST).write_text("\n".join(passed) + "\n")
        summary[f"{mode}_pass"] = len(passed)
        summary[f"{mode}_run"] = stats
        if mode == "roundtrip":
            summary["ort_original_pass"] = ort_pass
        SUMMARY.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")  # after each mode
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.node_suite", description=__doc__.split("\n\n")[0])
    parser.add_argument("--update", action="store_true", help="run every case and rewrite the checked-in lists")
    parser.add_argument("--only", choices=MODES, help="one mode (default: both)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--timeout", type=float, default=CASE_TIMEOUT, help="seconds per case (default 60)")
    parser.add_argument("--max-tasks", type=int, default=100, help="cases per worker before it is replaced")
    parser.add_argument("--sample", type=int, help="run a stride sample of N cases; writes nothing")
    parser.add_argument("--cases", nargs="*", help="run these cases; writes nothing")
    args = parser.parse_args(argv)
    modes = [args.only] if args.only else list(MODES)
    all_names = [c.name for c in collect_cases()]
    if args.cases:
        names = args.cases
    elif args.sample:
        step = len(all_names) / args.sample
        names = [all_names[int(i * step)] for i in range(args.sample)]
    elif args.update:
        names = all_names
    else:
        parser.print_help()
        return 2
    summary = update(modes, args.jobs, args.timeout, args.max_tasks, names, write=args.update and names is all_names)
    if args.update:
        print(json.dumps({k: summary.get(k) for k in ("total", "ort_original_pass", "roundtrip_pass", "tvm_pass")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
