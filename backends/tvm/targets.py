"""The target registry: each target names how to build a TVM Target, its pipeline (legalize,
schedule, finalize) and the device it runs on. Register new targets with ``register_target``."""

from __future__ import annotations

import functools
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass, field

from ...errors import SparsecError
from .tir_pipeline import PIPELINE as CPU_TIR_PIPELINE


@dataclass(frozen=True)
class TargetSpec:
    name: str
    description: str
    make: Callable[[dict], "object"]  # options -> tvm.target.Target
    pipeline: Callable[..., "object"]  # (tvm Target, tuning database or None) -> tvm.transform.Pass
    device: Callable[[], "object"]  # -> tvm runtime device
    can_run: Callable[[], tuple[bool, str]]  # (runnable here?, why not)
    options: dict = field(default_factory=dict)  # option name -> help
    tunable: bool = False  # MetaSchedule can time candidates here (--tune)
    build_config: dict = field(default_factory=dict)  # TVM PassContext config for the build
    # Emits source that a C compiler builds when the model first runs: built once at compile time
    # too, so that a compiler error is a compile error, not a run-time one.
    compiles_source: bool = False
    tir_pipeline: str = "default"  # TVM's TIR lowering pipeline, by its registered name


_TARGETS: dict[str, TargetSpec] = {}
# The targets whose code runs on this host's CPU: TIR kernels with T.parallel loops serve them all,
# and what is measured on the host (the sparse cost model) speaks for them.
CPU_TARGETS = ("llvm", "c")


def register_target(spec: TargetSpec) -> TargetSpec:
    _TARGETS[spec.name] = spec
    return spec


def get_target(name: str) -> TargetSpec:
    if name not in _TARGETS:
        raise SparsecError(f"unknown target {name!r}; available: {', '.join(sorted(_TARGETS))}")
    return _TARGETS[name]


def registered_targets() -> list[TargetSpec]:
    return [_TARGETS[k] for k in sorted(_TARGETS)]


# --- host CPU -------------------------------------------------------------------------------------
@functools.cache
def host_cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def host_cpu_model() -> str:
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_vector_registers() -> int:
    """Architectural vector registers: 32 with AVX-512 and on AArch64, 16 with AVX / AVX2 / SSE."""
    if "avx512f" in host_cpu_flags() or platform.machine() in ("aarch64", "arm64"):
        return 32
    return 16


def host_vector_lanes() -> int:
    """float32 lanes of the widest vector unit the OS lets us use."""
    flags = host_cpu_flags()
    if "avx512f" in flags:
        return 16
    if "avx2" in flags or "avx" in flags:
        return 8
    return 4


def _llvm_target(options: dict):
    import tvm

    detected = tvm.target.Target.from_device("cpu")
    config = {"kind": "llvm", "mcpu": options.get("mcpu") or str(detected.attrs.get("mcpu", "generic")),
              "num-cores": int(options.get("num_cores") or os.cpu_count() or 1)}
    if detected.attrs.get("mtriple"):
        config["mtriple"] = str(detected.attrs["mtriple"])
    if platform.machine() in ("x86_64", "AMD64") and "mcpu" not in options and "avx512f" not in host_cpu_flags():
        # LLVM may name a CPU model whose AVX-512 the OS or hypervisor has disabled (XCR0): using
        # it would crash with SIGILL. Trust the kernel's flags over the CPU model name.
        config["mattr"] = ["-avx512f"]
    return tvm.target.Target(config)


def _cpu_pipeline(target, database=None):
    from .pipeline import cpu_pipeline

    return cpu_pipeline(target, database)


def _gpu_pipeline(target, database=None):
    from .pipeline import gpu_pipeline

    return gpu_pipeline(target, database)


def _device(kind: str):
    def get():
        import tvm

        return getattr(tvm, kind)(0)

    return get


def _runtime_exists(kind: str) -> Callable[[], tuple[bool, str]]:
    def check():
        import tvm

        try:
            dev = getattr(tvm, kind)(0)
            if dev.exist:
                return True, ""
        except Exception:  # a runtime that is not built in raises
            pass
        return False, f"no {kind} device on this machine"

    return check


def _cuda_target(options: dict):
    import tvm

    arch = options.get("arch") or _detected_cuda_arch() or "sm_80"
    return tvm.target.Target({"kind": "cuda", "arch": arch}, host={"kind": "llvm"})


def _detected_cuda_arch() -> str | None:
    import tvm

    try:
        dev = tvm.cuda(0)
        if dev.exist:
            return "sm_" + dev.compute_version.replace(".", "")
    except Exception:  # no CUDA runtime: fall back to the default arch
        return None
    return None


register_target(TargetSpec(
    "llvm", "this host's CPU through LLVM (mcpu detected, vectorised and multi-threaded)",
    _llvm_target, _cpu_pipeline, _device("cpu"), lambda: (True, ""),
    {"mcpu": "LLVM CPU name (default: detected)", "num_cores": "threads (default: all cores)"}, tunable=True,
    tir_pipeline=CPU_TIR_PIPELINE))
register_target(TargetSpec(
    "cuda", "NVIDIA GPUs (CUDA); compiles without a GPU, runs where one exists",
    _cuda_target, _gpu_pipeline, _device("cuda"), _runtime_exists("cuda"),
    {"arch": "sm_XY (default: the GPU's, or sm_80 without one)"}))
register_target(TargetSpec(
    "opencl", "OpenCL devices (code generation; the TVM wheel has no OpenCL runtime)",
    lambda o: __import__("tvm").target.Target({"kind": "opencl"}, host={"kind": "llvm"}),
    _gpu_pipeline, _device("opencl"), _runtime_exists("opencl")))
register_target(TargetSpec(
    "c", "portable C source for the host (for toolchains without LLVM)",
    lambda o: __import__("tvm").target.Target({"kind": "c"}),
    _cpu_pipeline, _device("cpu"), lambda: (True, ""),
    # TVM's C code generator has no vector types: vectorised loops (every CPU schedule and
    # kernel has them) are emitted as scalar loops, or the C compiler fails on "float4".
    build_config={"tirx.disable_vectorize": True}, compiles_source=True))
