"""Optional MetaSchedule tuning for the CPU targets (``--tune TRIALS``), and its database.

Tuning searches schedules for the model's kernels (the tasks MetaSchedule extracts from the
legalized module), times each candidate here, and stores the best in a JSON database in a user
cache folder. Any later compile for the same target applies the database: a kernel with a
record gets the recorded schedule, the others get sparsec's own rules. sparsec's own schedule of
each task is timed the same way and stored too, so the database keeps whichever is faster:
applying it never makes a kernel slower than compiling without it.

Candidates are built and timed in this process: MetaSchedule's local builder and runner start
worker processes that import TVM (and torch, where installed) and time out on small machines.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import logging
import os
import platform
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import tvm

from ...errors import SparsecError

ENV_FOLDER = "SPARSEC_TUNING_DB"
_RECORDS = "database_tuning_record.json"
_WORKLOADS = "database_workload.json"
_STAMP = "sparsec.json"  # the schedules fingerprint the records were measured against


def database_folder(path: "str | os.PathLike | None" = None) -> Path:
    """The tuning database's folder: ``path``, else $SPARSEC_TUNING_DB, else the user cache."""
    if path:
        return Path(path).expanduser()
    if os.environ.get(ENV_FOLDER):
        return Path(os.environ[ENV_FOLDER]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "sparsec" / "tuning"


@functools.cache
def schedules_fingerprint() -> str:
    """What the database's records were measured against: sparsec's own CPU schedules (their
    source) and TVM's version. A record that beat sparsec's schedule of a kernel when it was tuned
    may lose to a later, better one: a database stamped with another fingerprint is not applied."""
    here = Path(__file__).parent
    digest = hashlib.sha256(tvm.__version__.encode())
    for source in (here / "schedules" / "cpu.py", here / "pipeline.py"):
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def state(folder: Path) -> str:
    """"empty", "stale" (made against other schedules) or "ok"."""
    records = folder / _RECORDS
    if not records.is_file() or records.stat().st_size == 0:
        return "empty"
    try:
        stamp = json.loads((folder / _STAMP).read_text()).get("schedules")
    except (OSError, ValueError):
        stamp = None
    return "ok" if stamp == schedules_fingerprint() else "stale"


def open_database(folder: Path):
    from tvm.s_tir import meta_schedule as ms

    folder.mkdir(parents=True, exist_ok=True)
    return ms.database.JSONDatabase(path_workload=str(folder / _WORKLOADS),
                                    path_tuning_record=str(folder / _RECORDS), allow_missing=True)


def _require_tuning_packages() -> str:
    """The cost model to use; a clear error when MetaSchedule's own requirements are missing."""
    try:
        import psutil  # noqa: F401 - MetaSchedule counts cores with it
    except ImportError:
        raise SparsecError("tuning needs psutil: pip install 'sparsec[tune]'") from None
    try:
        import xgboost  # noqa: F401
    except ImportError:
        return "random"  # still measured search, without a learned cost model
    return "xgb"


def tune(mod: tvm.IRModule, target: tvm.target.Target, trials: int, folder: Path, rules) -> dict:
    """Tune the not-yet-scheduled kernels of a legalized Relax module for ``trials`` candidates
    in all, and store the results (and sparsec's own schedules, timed) in ``folder``."""
    from tvm.s_tir import meta_schedule as ms

    if trials < 1:
        raise SparsecError(f"--tune expects a positive number of trials, got {trials}")
    cost_model = _require_tuning_packages()
    tasks = [task for task in ms.relax_integration.extract_tasks(mod, target)
             if not _is_scheduled(task.dispatched[0])  # sparsec's own kernels come scheduled
             and _float_only(task.dispatched[0]["main"])]
    summary = {"database": str(folder), "trials": trials, "tasks": len(tasks), "cost_model": cost_model}
    if not tasks:
        return summary
    if state(folder) == "stale":  # records measured against other schedules: start afresh
        for name in (_RECORDS, _WORKLOADS):
            (folder / name).unlink(missing_ok=True)
        summary["replaced_stale_database"] = True
    database = open_database(folder)
    (folder / _STAMP).write_text(json.dumps({"schedules": schedules_fingerprint(), "tvm": tvm.__version__}) + "\n")
    _register_cpu_intrinsics()
    builder_class, runner_class = _in_process_measurers()
    builder, runner = builder_class(), runner_class()
    threads = int(target.attrs.get("num-cores", 0)) or os.cpu_count() or 1
    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with tempfile.TemporaryDirectory(prefix="sparsec-tune-") as work_dir:
            # The evolutionary search's population scales with the budget: its default (512
            # candidates bred per round) costs more than a small budget's measurements.
            strategy = ms.search_strategy.EvolutionarySearch(population_size=min(512, max(32, 4 * trials)),
                                                             init_min_unmeasured=min(50, max(8, trials)))
            # Contexts made here rather than by MetaSchedule's helper, which reconfigures the
            # process's logging (and failed on a handler it did not name, under pytest).
            quiet = logging.getLogger("sparsec.tuning")
            contexts = [ms.TuneContext(mod=task.dispatched[0], target=target, space_generator="post-order-apply",
                                       search_strategy=strategy, task_name=task.task_name, logger=quiet,
                                       rand_state=seed, num_threads=threads).clone()
                        for seed, task in enumerate(tasks)]
            weights = [float(task.weight) for task in tasks]
            ms.tune_tasks(tasks=contexts, task_weights=weights, work_dir=work_dir, max_trials_global=trials,
                          num_trials_per_iter=min(16, trials), builder=builder, runner=runner,
                          database=database, cost_model=cost_model)
            kernels = [_commit_default_schedule(task, target, rules, database, builder, runner) for task in tasks]
    finally:
        logger.setLevel(level)
    summary["kernels"] = [k for k in kernels if k]
    summary["tuned_faster"] = sum(1 for k in kernels if k and k["tuned_us"] is not None and k["tuned_us"] < k["sparsec_us"])
    return summary


def _register_cpu_intrinsics() -> None:
    """Register the host CPU's tensor intrinsics (all a CPU search space uses) instead of letting
    MetaSchedule import every target's. Each intrinsic is parsed TVMScript, and the parser calls
    ``inspect.stack()``, which scans every loaded module; with torch loaded (tvm_ffi imports it
    whenever it is installed) importing all of them took 25-100 s here, the CPU ones under 1 s."""
    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        return
    import tvm.s_tir

    package = types.ModuleType(name)
    package.__path__ = [str(Path(tvm.s_tir.__file__).parent / "tensor_intrin")]
    sys.modules[name] = package
    arch = "arm_cpu" if platform.machine().lower() in ("aarch64", "arm64") else "x86"
    importlib.import_module(f"{name}.{arch}")


def _float_only(func) -> bool:
    """Kernels with integer or boolean buffers (gathers by index, masks) are not tuned: candidates
    are timed on random data, and random indices read out of bounds (a crash, in this process)."""
    return all(str(p.ty.dtype).startswith(("float", "bfloat")) for p in func.params
               if isinstance(p.ty, tvm.tirx.BufferType))


def _is_scheduled(mod: tvm.IRModule) -> bool:
    return any(isinstance(f, tvm.tirx.PrimFunc) and f.attrs and f.attrs.get("tirx.is_scheduled", False)
               for f in mod.functions.values())


def _commit_default_schedule(task, target, rules, database, builder, runner) -> dict | None:
    """Schedule the task with sparsec's rules, time it like a candidate and record it; returns
    both times (microseconds)."""
    from tvm.s_tir import meta_schedule as ms

    mod = task.dispatched[0]
    func = mod["main"]
    sch = next((s for s in (rule.apply(func, target, False) for rule in rules) if s is not None), None)
    if sch is None or isinstance(sch, list):
        return None
    built = builder.build([ms.builder.BuilderInput(sch.mod, target)])[0]
    if built.error_msg:
        return None
    args = ms.arg_info.ArgInfo.from_entry_func(sch.mod, remove_preproc=True)
    result = runner.run([ms.runner.RunnerInput(built.artifact_path, "cpu", args)])[0].result()
    if result.error_msg or not result.run_secs:
        return None
    workload = database.commit_workload(mod)
    best = database.get_top_k(workload, 1)
    tuned = float(np.median([float(t) for t in best[0].run_secs])) if best else None
    database.commit_tuning_record(ms.database.TuningRecord(sch.trace, workload, result.run_secs, target, args))
    ours = float(np.median([float(t) for t in result.run_secs]))
    return {"kernel": task.task_name, "sparsec_us": round(ours * 1e6, 2),
            "tuned_us": None if tuned is None else round(tuned * 1e6, 2)}


@functools.cache
def _in_process_measurers():
    """MetaSchedule builder and runner classes that work in this process."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder, local_builder
    from tvm.s_tir.meta_schedule.runner import EvaluatorConfig, PyRunner, local_runner

    @derived_object
    class _InProcessBuilder(PyBuilder):
        def build(self, build_inputs):
            results = []
            for item in build_inputs:
                try:
                    path = local_builder._worker_func(None, None, item.mod, item.target, None)
                    results.append(BuilderResult(path, None))
                except Exception as err:  # noqa: BLE001 - a failed candidate is a result, not a crash
                    results.append(BuilderResult(None, f"build failed: {err}"))
            return results

    @derived_object
    class _InProcessRunner(PyRunner):
        def __init__(self):
            super().__init__()
            # Each candidate: 3 timed runs of at least 40 ms each (short kernels are looped).
            self.config = EvaluatorConfig(number=3, repeat=1, min_repeat_ms=40, enable_cpu_cache_flush=False)

        def run(self, runner_inputs):
            futures = []
            for item in runner_inputs:
                try:
                    costs = local_runner._worker_func(None, None, None, self.config, 1, str(item.artifact_path),
                                                      str(item.device_type), tuple(a.as_json() for a in item.args_info))
                    futures.append(local_runner.LocalRunnerFuture(res=costs))
                except Exception as err:  # noqa: BLE001
                    futures.append(local_runner.LocalRunnerFuture(error_message=f"run failed: {err}"))
            return futures

    return _InProcessBuilder, _InProcessRunner
