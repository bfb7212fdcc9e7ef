"""Build a Graph with TVM for a registered target, run it, export and reload the library."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

from ...errors import CompileError, SparsecError, last_line
from ...frontend.onnx_export import weight_bytes
from ...ir.graph import Graph
from . import kernels  # noqa: F401 - importing registers the lowerings of sparsec ops
from .lower import lower_to_relax
from .targets import get_target

LIBRARY = "model.so"


class TVMBackend:
    name = "tvm"

    def build(self, graph: Graph, target: str, options: dict) -> "TVMRunner":
        spec = get_target(target)
        tvm_target = spec.make(options)
        with tvm_target:  # kernels that use an ISA's instructions ask the target (Target.current) for them
            mod, _ = lower_to_relax(graph, target)
        tuning, database = _tuning(spec, tvm_target, mod, options)
        try:
            with tvm.transform.PassContext(config=spec.build_config):
                executable = tvm.compile(mod, target=tvm_target, relax_pipeline=spec.pipeline(tvm_target, database),
                                         tir_pipeline=spec.tir_pipeline)
            if spec.compiles_source:
                executable.jit()
        except SparsecError:
            raise
        except Exception as err:  # TVM raises its own error types from C++
            lines = str(err).strip().splitlines()
            # A C compiler's report ends with its command line: name its first error instead.
            errors = [line.strip() for line in lines if ": error:" in line]
            reason = errors[0] if errors else last_line(err)
            message = f"TVM failed to build for {target}: {reason}"
            symbols = sorted({d for v in graph.inputs if v.shape for d in v.shape if isinstance(d, str)})
            if symbols:
                message += (f" (the model has symbolic input dims {symbols}; pinning them often helps: "
                            f"dims={{{', '.join(repr(s) + ': N' for s in symbols)}}} or --dim NAME=N)")
            raise CompileError(message) from err
        runner = TVMRunner(executable, target, str(tvm_target), options.get("num_threads"))
        runner.tuning = tuning
        # TVMScript's parser keeps lists of the outer frames inside some of them (reference
        # cycles), which hold this frame and the caller's, with the Relax module's weights and
        # the runner, until the garbage collector runs: a compiled model deleted by the user
        # stayed in memory (a benchmark compiling one E=64 MoE after another reached 24 GB).
        # A full collection takes ~0.15 s, a third of a small model's compile: done where the
        # weights make it matter.
        if weight_bytes(graph) >= COLLECT_ABOVE_BYTES:
            gc.collect()
        return runner

    def load(self, folder: Path, manifest: dict) -> "TVMRunner":
        module = tvm.runtime.load_module(str(folder / LIBRARY))
        return TVMRunner(module, manifest["target"], manifest.get("tvm_target", ""), manifest.get("num_threads"))


def _tuning(spec, tvm_target, mod, options: dict) -> tuple[dict | None, object]:
    """Tune first when asked (``tune``: trials); then the database to apply, if it has records.
    ``tuning_db``: its folder (default: the user cache), or "off" to compile without it."""
    trials, where = options.get("tune"), options.get("tuning_db")
    if where == "off":
        if trials:
            raise SparsecError("--tune needs a tuning database: drop --tuning-db off")
        return None, None
    if not spec.tunable:
        if trials:
            raise SparsecError(f"--tune runs on CPU targets only (candidates are timed on this machine), not {spec.name!r}")
        return None, None
    from . import tuning
    from .pipeline import cpu_prepare_passes, cpu_rules

    folder = tuning.database_folder(where)
    summary = None
    if trials:
        with tvm_target:
            prepared = tvm.transform.Sequential(cpu_prepare_passes(tvm_target))(mod)
        summary = tuning.tune(prepared, tvm_target, int(trials), folder, cpu_rules())
    found = tuning.state(folder)
    if found == "empty":
        return summary, None
    if found == "stale":
        return {"database": str(folder), "applied": False,
                "why": "it was tuned against other sparsec schedules (an older build): tune again to use it"}, None
    return {**(summary or {}), "database": str(folder), "applied": True}, tuning.open_database(folder)


# Weights from which a build collects the reference cycles TVMScript leaves (see build).
COLLECT_ABOVE_BYTES = 64 << 20


class TVMRunner:
    def __init__(self, executable, target: str, tvm_target: str, num_threads: int | None):
        self.executable = executable
        self.target = target
        self.tvm_target = tvm_target
        self.num_threads = num_threads
        self._vm = None
        self._main = None
        self._staging: dict[int, object] = {}

    @property
    def can_run(self) -> tuple[bool, str]:
        return get_target(self.target).can_run()

    def _machine(self):
        if self._vm is None:
            ok, why = self.can_run
            if not ok:
                raise SparsecError(f"cannot run a {self.target} model here: {why} (it compiled and exports fine)")
            set_num_threads(int(self.num_threads) if self.num_threads else default_threads())
            self._device = get_target(self.target).device()
            self._vm = relax.VirtualMachine(self.executable, self._device)
        return self._vm

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        if self._main is None:
            self._main = self._machine()["main"]
        args, borrowed = [], []
        for index, array in enumerate(arrays):
            tensor = _borrow(array)
            if tensor is None:
                tensor = self._stage(index, array)
            else:
                borrowed.append(array)
            args.append(tensor)
        result = self._main(*args)
        if isinstance(result, tvm.runtime.Tensor):  # one output, the common case
            return [self._hand_over(result, borrowed)]
        return [self._hand_over(t, borrowed) for t in _flatten(result)]

    def _hand_over(self, tensor, borrowed: list) -> np.ndarray:
        """Outputs are handed over without a copy (DLPack), except when one shares memory with an
        input (an Identity model returns its input): a staged one is overwritten by the next call,
        and a borrowed one is the caller's array."""
        try:
            array = np.from_dlpack(tensor)
        except (TypeError, BufferError, RuntimeError):
            return tensor.numpy()  # dtypes numpy cannot take over (bfloat16, float8)
        for slot in self._staging.values():
            if slot.memory is not None and np.may_share_memory(array, slot.memory):  # bounds only: cheap
                return array.copy()
        if any(np.may_share_memory(array, memory) for memory in borrowed):
            return array.copy()
        return array

    def _stage(self, index: int, array: np.ndarray):
        """Copy the input into a device tensor kept from call to call (allocating one per call
        costs as much as the copy), through a numpy view of it: ``np.copyto`` takes ~1 us where
        ``Tensor.copyfrom`` took 14 us, a sixth of a one-token MoE call."""
        slot = self._staging.get(index)
        if slot is None or slot.shape != array.shape or slot.dtype != array.dtype:
            try:
                slot = _Staged(tvm.runtime.empty(array.shape, str(array.dtype), self._device), array)
            except Exception:  # dtypes the runtime cannot allocate by name: a fresh tensor each call
                return tvm.runtime.tensor(np.require(array, requirements="C"), self._device)
            self._staging[index] = slot
        if slot.view is not None:
            np.copyto(slot.view, array)
        else:
            slot.tensor.copyfrom(np.require(array, requirements="C"))
        return slot.tensor

    def export(self, folder: Path) -> list[str]:
        path = folder / LIBRARY
        self.executable.export_library(str(path))
        return [LIBRARY]


# Inputs from this size on are read where they are when TVM can take them (below): copying 6.3 MB
# into the staged tensor took 1.09 ms of a 2.03 ms Relu on Zen 3 (0.89 ms read in place).
BORROW_FROM_BYTES = 1 << 20


def _borrow(array: np.ndarray):
    """The caller's array as a TVM tensor, without a copy, where TVM takes it: large, C-contiguous,
    writable and 64-byte aligned (TVM refuses other data; numpy's large arrays start 16 bytes past
    a page, while sparsec's outputs and torch's tensors are aligned). None otherwise. The compiled
    functions do not write their inputs (Relax functions are pure; a test holds sparsec to it)."""
    if array.nbytes < BORROW_FROM_BYTES or not array.flags.c_contiguous or array.ctypes.data % 64:
        return None
    try:
        return tvm.runtime.from_dlpack(array)
    except (TypeError, BufferError, RuntimeError, ValueError):  # read-only arrays, dtypes DLPack lacks
        return None


class _Staged:
    """A staged input tensor and numpy views of its memory: ``memory`` (None where numpy cannot
    take the tensor) and ``view``, that memory as the input's dtype and shape (else None)."""

    def __init__(self, tensor, like: np.ndarray):
        self.tensor, self.shape, self.dtype = tensor, like.shape, like.dtype
        try:
            self.memory = np.from_dlpack(tensor)  # the tensor's memory, whatever numpy makes of its dtype
        except (TypeError, BufferError, RuntimeError):
            self.memory = None
        fits = self.memory is not None and self.memory.dtype == like.dtype and self.memory.shape == like.shape
        self.view = self.memory if fits else None


def _flatten(result):
    if isinstance(result, tvm.runtime.Tensor):
        return [result]
    items = []
    for item in result:
        items.extend(_flatten(item))
    return items


def set_num_threads(n: int) -> None:
    """Use n threads of TVM's pool (affinity mode 0: no pinning, which a shared machine needs).
    The pool itself has default_threads() of them (sized when first used, see below): more than
    that cannot be had, fewer can be chosen per model."""
    tvm.get_global_func("runtime.config_threadpool")(0, n)


def default_threads() -> int:
    """The threads a model runs on unless told: TVM_NUM_THREADS or OMP_NUM_THREADS if the user
    set one, else every core this process may use (hardware threads of one core counted once)."""
    for name in ("TVM_NUM_THREADS", "OMP_NUM_THREADS"):
        if os.environ.get(name, "").strip().isdigit() and int(os.environ[name]) > 0:
            return int(os.environ[name])
    return physical_cores()


def physical_cores() -> int:
    """Cores among the CPUs this process may run on: CPUs that are hardware threads of the same
    core (Linux's thread_siblings_list) count once."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        try:
            cores.add(Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text().strip())
        except OSError:
            cores.add(str(cpu))
    return max(1, len(cores))


# TVM sizes its thread pool once, when first used, to TVM_NUM_THREADS (or OMP_NUM_THREADS), else
# to half the logical CPUs, assuming two hardware threads per core: on a VM without SMT that is
# half the cores (one of a 2-core VM's two: models compiled without num_threads ran on one
# thread, and a later num_threads=2 could not grow the pool). Sized to every core here, before
# any use, unless the user chose.
if "TVM_NUM_THREADS" not in os.environ and "OMP_NUM_THREADS" not in os.environ:
    os.environ["TVM_NUM_THREADS"] = str(physical_cores())
