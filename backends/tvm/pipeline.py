"""Compilation pipelines: legalize -> schedule -> lower -> finalize, per target family."""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import relax, s_tir, topi
from tvm.relax.backend.cpu_generic import pipeline as cpu_generic
from tvm.s_tir import dlight
from tvm.s_tir.dlight.analysis import get_root_block

from .schedules.cpu import LAYOUT_REWRITE, CPUConv, CPUFallback, CPUMatmul, CPURowReduction


# relax op -> its fast float32 version (TE). TVM's own FastMathTransform does the same but
# crashes on calls to extern functions (op without a name), which the Expand converter emits.
_FAST_FLOAT32 = {
    "relax.nn.softmax": lambda call: (topi.nn.fast_softmax, call.args[0], call.attrs.axis),
    "relax.exp": lambda call: (topi.fast_exp, call.args[0]),
    "relax.erf": lambda call: (topi.fast_erf, call.args[0]),
    "relax.tanh": lambda call: (topi.fast_tanh, call.args[0]),
    "relax.sigmoid": lambda call: (_fast_sigmoid, call.args[0]),
    "relax.nn.silu": lambda call: (lambda x: x * _fast_sigmoid(x), call.args[0]),
    "relax.nn.gelu": lambda call: (_fast_gelu, call.args[0]),
    "relax.nn.gelu_tanh": lambda call: (_fast_gelu_tanh, call.args[0]),
}


def _fast_sigmoid(x):
    return 1.0 / (1.0 + topi.fast_exp(-x))


def _fast_gelu(x):
    return x * (0.5 + 0.5 * topi.fast_erf(x * 0.7071067811865476))


def _fast_gelu_tanh(x):
    return x * (0.5 + 0.5 * topi.fast_tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))


@relax.expr_functor.mutator
class _FastMath(relax.PyExprMutator):
    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        op = call.op
        if isinstance(op, tvm.ir.Op) and op.name in _FAST_FLOAT32:
            ty = call.args[0].ty
            if isinstance(ty, relax.TensorType) and str(ty.dtype) == "float32":
                return self.builder_.call_te(*_FAST_FLOAT32[op.name](call))
        return call


def fast_math() -> tvm.transform.Pass:
    @tvm.transform.module_pass(opt_level=0, name="sparsec.fast_math")
    def _pass(mod, _ctx):
        mutator = _FastMath(mod)
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                mutator.builder_.update_func(gv, mutator.visit_expr(func))
        return mutator.builder_.get()

    return _pass


def split_layout_rewrites() -> tvm.transform.Pass:
    """TVM's SplitLayoutRewritePreproc, shown only the PrimFuncs that have a layout rewrite: it
    crashes on opaque ones (the scan kernels of cumsum) even when they have nothing to split."""

    @tvm.transform.module_pass(opt_level=0, name="sparsec.split_layout_rewrites")
    def _pass(mod, _ctx):
        def rewrites(func) -> bool:
            found = []
            tvm_ffi.structural_walk(func.body, (s_tir.SBlock, lambda b: found.append(LAYOUT_REWRITE in b.annotations)))
            return any(found)

        kept = {gv: f for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc) and not rewrites(f)}
        if len(kept) == sum(1 for _, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)):
            return mod
        shown = tvm.IRModule({gv: f for gv, f in mod.functions_items() if gv not in kept}, attrs=mod.attrs)
        split = relax.transform.SplitLayoutRewritePreproc()(shown)
        for gv, func in kept.items():
            split[gv] = func
        return split

    return _pass


def mark_single_buffer_noalias() -> tvm.transform.Pass:
    """Mark PrimFuncs with at most one buffer parameter ``tirx.noalias`` (trivially true).

    TVM's LLVM codegen gives every buffer its own alias-analysis (TBAA) tag only when every
    function in the module is noalias; one that is not (the ``shape_func`` that VMShapeLower
    adds to any model with symbolic dims) puts all buffers of all kernels under one tag. LLVM
    then cannot keep register-tile accumulators in registers across loads of the inputs: the
    block-sparse kernel ran 3x slower with a symbolic row count than with a static one."""

    @tvm.transform.module_pass(opt_level=0, name="sparsec.mark_single_buffer_noalias")
    def _pass(mod, _ctx):
        for gv, func in list(mod.functions_items()):
            if (isinstance(func, tvm.tirx.PrimFunc) and not func.attrs.get("tirx.noalias", False)
                    and sum(1 for p in func.params if isinstance(p.ty, (tvm.tirx.BufferType, tvm.ir.PointerType))) <= 1):
                mod[gv] = func.with_attr("tirx.noalias", True)
        return mod

    return _pass


def cpu_rules() -> list:
    # Row-wise reduction chains (softmax, layer norm): one parallel loop over rows with every block
    # computed at it, the reductions vectorised where their length is a multiple of the vector
    # width (CPURowReduction), else dlight's CPU Reduction rule (scalar reductions).
    # CPUConv before CPUMatmul: a convolution is also a (gathered) GEMM to the matmul analysis, and
    # scheduled as one, its padding check ran per multiply-add (PP-OCR's 3x3 conv 96 -> 24 at 80x80:
    # 4.9 ms as a GEMM, 1.3 ms as a convolution).
    return [CPUConv(), CPUMatmul(), _Guarded(CPURowReduction()), _RowReduction(dlight.cpu.Reduction()), CPUFallback()]


def cpu_schedule_pass():
    return dlight.ApplyDefaultSchedule(*cpu_rules())


class _Guarded(dlight.ScheduleRule):
    """A dlight rule whose failure on a function it does not understand (an assertion inside
    its analysis) passes the function to the next rule instead of failing the build."""

    def __init__(self, rule):
        self.rule = rule

    def is_target_available(self, target) -> bool:
        return self.rule.is_target_available(target)

    def apply(self, func, target, tunable):
        try:
            return self.rule.apply(func, target, tunable)
        except Exception:  # noqa: BLE001 - see the class docstring
            return None


class _RowReduction(_Guarded):
    """dlight's CPU Reduction rule, except for reductions into a single element (a norm over one
    token, as in decoding): the rule then parallelises the output's columns and recomputes the
    whole reduction for each, quadratic work (0.1 ms for a 512-wide RMSNorm, measured); the
    fallback schedule does it once."""

    def apply(self, func, target, tunable):
        if _reduces_to_one_element(func):
            return None
        return super().apply(func, target, tunable)


def _reduces_to_one_element(func) -> bool:
    if not isinstance(func, tvm.tirx.PrimFunc):
        return False
    sch = s_tir.Schedule(func)
    for block in sch.get_child_blocks(get_root_block(sch)):
        iter_vars = sch.get(block).iter_vars
        if any(iv.iter_type == tvm.tirx.IterVar.CommReduce for iv in iter_vars) and all(
                isinstance(iv.dom.extent, tvm.tirx.IntImm) and int(iv.dom.extent) == 1
                for iv in iter_vars if iv.iter_type == tvm.tirx.IterVar.DataPar):
            return True
    return False


def cpu_prepare_passes(target: tvm.target.Target) -> list:
    """Library dispatch and legalization: the module whose kernels are scheduled (or tuned)."""
    return (cpu_generic.library_dispatch_passes(target)
            # exp, erf, tanh (and softmax, sigmoid, SiLU, GELU built on them) as vectorisable
            # polynomials instead of scalar libm calls: 3.3e-7 relative error at most, measured
            # over [-12, 12] (a few float32 ulps); GELU's erf alone was 14 of MiniLM's 60 ms.
            + [fast_math()]
            + cpu_generic.legalize_passes(target)
            + [relax.transform.AttachAttrLayoutFreeBuffers()])


def cpu_pipeline(target: tvm.target.Target, database=None) -> tvm.transform.Pass:
    """``database``: a MetaSchedule database (``--tune``) whose records replace sparsec's
    schedules for the kernels they cover."""
    @tvm.transform.module_pass(opt_level=0, name="sparsec.cpu_pipeline")
    def _pipeline(mod, _ctx):
        with target:
            tuned = [relax.transform.MetaScheduleApplyDatabase()] if database is not None else []
            seq = tvm.transform.Sequential(
                cpu_prepare_passes(target)
                + tuned
                # Constant weights may be re-laid out by the schedules (packed GEMM panels): the
                # layout rewrites are split out and folded into the constants at compile time.
                + [cpu_schedule_pass(), split_layout_rewrites(), relax.transform.FoldConstant()]
                + cpu_generic.dataflow_lower_passes(target)
                + cpu_generic.finalize_passes(target)
                + [mark_single_buffer_noalias()]
            )
            if database is None:
                return seq(mod)
            with database:
                return seq(mod)

    return _pipeline


def gpu_pipeline(target: tvm.target.Target, database=None) -> tvm.transform.Pass:
    # TVM's GPU pipeline legalizes and applies dlight's GPU rules (Matmul, GEMV, Reduction, ...).
    return relax.get_default_pipeline(target)
