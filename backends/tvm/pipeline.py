"""Compilation pipelines: legalize -> schedule -> lower -> finalize, per target family."""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu_generic
from tvm.s_tir import dlight

from .schedules.cpu import CPUFallback, CPUMatmul


def cpu_schedule_pass():
    return dlight.ApplyDefaultSchedule(CPUMatmul(), CPUFallback())


def cpu_pipeline(target: tvm.target.Target) -> tvm.transform.Pass:
    @tvm.transform.module_pass(opt_level=0, name="sparsec.cpu_pipeline")
    def _pipeline(mod, _ctx):
        with target:
            seq = tvm.transform.Sequential(
                cpu_generic.library_dispatch_passes(target)
                + cpu_generic.legalize_passes(target)
                + [cpu_schedule_pass()]
                + cpu_generic.dataflow_lower_passes(target)
                + cpu_generic.finalize_passes(target)
            )
            return seq(mod)

    return _pipeline


def gpu_pipeline(target: tvm.target.Target) -> tvm.transform.Pass:
    # TVM's GPU pipeline legalizes and applies dlight's GPU rules (Matmul, GEMV, Reduction, ...).
    return relax.get_default_pipeline(target)
