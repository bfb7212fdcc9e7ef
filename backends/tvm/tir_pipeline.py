"""sparsec's TIR lowering pipeline for CPU targets: TVM 0.27's ``s_tir`` pipeline (its passes in
its order; those a CPU build does not use, for async copies, VTCM, PTX, shared memory and thread
sync, left out: tests/test_symbolic_kernels.py checks the list against the installed TVM's),
with passes of ours:

- ``nan_min_max``: float ``max``/``min`` that return NaN for a NaN operand, as ONNX Runtime's
  (see nan_minmax.py);
- ``serial_when_small``: a serial copy of parallel loops whose work is small at run time
  (see serial_when_small.py);
- ``vector_tails`` right before VectorizeLoop, which cannot vectorise a lane-dependent guard
  (see vector_tails.py);
- ``contiguous_strided_loads`` on the lowered functions (see strided_loads.py).

Registered as the ``sparsec_cpu`` pipeline, which the llvm target names.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx
from tvm.s_tir.pipeline import finalize_device_passes, finalize_host_passes

from .nan_minmax import nan_min_max
from .serial_when_small import serial_when_small
from .strided_loads import contiguous_strided_loads
from .vector_tails import vector_tails

PIPELINE = "sparsec_cpu"


def _lowering(mod: tvm.ir.IRModule, _ctx) -> tvm.ir.IRModule:
    config = tvm.transform.PassContext.current().config
    passes = [
        s_tir.transform.CanonicalizeLoop(),
        s_tir.transform.LowerCrossThreadReduction(),
        s_tir.transform.LowerInitBlock(),
        s_tir.transform.PlanAndUpdateBufferAllocationLocation(),
        s_tir.transform.ConvertBlocksToOpaque(),
        s_tir.transform.LiftThreadBinding(),
        s_tir.transform.ManifestSharedMemoryLocalStage(),
        s_tir.transform.CompactBufferAllocation(),
        s_tir.transform.LowerAutoCopy(),
        s_tir.transform.UnifyThreadBinding(),
        s_tir.transform.LowerMatchBuffer(),
        s_tir.transform.StmtSimplify(),
        s_tir.transform.InjectPermutedLayout(),
        s_tir.transform.AnnotateIrregularLoop(),
        s_tir.transform.InjectSoftwarePipeline(),
        s_tir.transform.TransformMmaBufferLayout(),
        s_tir.transform.LowerOpaqueBlock(),
        tirx.transform.FlattenBuffer(),
        tirx.transform.BF16ComputeLegalize(),
        tirx.transform.NarrowDataType(32),
        s_tir.transform.LoopPartition(),
        nan_min_max,
        serial_when_small,
        vector_tails,
        tirx.transform.VectorizeLoop(not bool(config.get("tirx.disable_vectorize", False))),
        s_tir.transform.InjectVirtualThread(),
        s_tir.transform.InjectDoubleBuffer(),
    ]
    if not bool(config.get("tirx.disable_storage_rewrite", False)):
        passes.append(tirx.transform.StorageRewrite())
    passes += [
        s_tir.transform.HoistIfThenElse(),
        tirx.transform.UnrollLoop(),
        s_tir.transform.RenormalizeSplitPattern(),
        tirx.transform.StmtSimplify(),
        tirx.transform.RemoveNoOp(),
        s_tir.transform.RewriteUnsafeSelect(),
    ]
    if bool(config.get("tirx.instrument_bound_checkers", False)):
        passes.append(s_tir.transform.InstrumentBoundCheckers())
    if not bool(config.get("tirx.disable_cse_tir", False)):
        passes.append(tirx.transform.CommonSubexprElim())
    if bool(config.get("tirx.instrument_lwp", False)):
        passes.append(s_tir.transform.InstrumentProfileIntrinsics())
    passes += [
        tirx.transform.FP8ComputeLegalize(),
        tirx.transform.VerifyMemory(),
        tirx.transform.AnnotateEntryFunc(),
        tirx.transform.SplitHostDevice(),
        tirx.transform.MakePackedAPI(),
        tirx.transform.FP8StorageLegalize(),
        tirx.transform.BF16StorageLegalize(),
        contiguous_strided_loads,
    ]
    return tvm.transform.Sequential(passes)(mod)


def _pipeline():
    return tvm.transform.module_pass(_lowering, opt_level=0, name="sparsec.cpu_lowering"), finalize_host_passes, finalize_device_passes


tirx.register_tir_pipeline(PIPELINE, _pipeline)
