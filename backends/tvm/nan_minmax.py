"""A TIR pass that makes floating-point ``max`` and ``min`` return NaN when an operand is NaN.

TVM lowers ``max(a, b)`` to ``a > b ? a : b``, so ``max(NaN, 0)`` is 0: a ReLU turned NaN
activations into zeros and the model returned finite numbers where ONNX Runtime, numpy and torch
return NaN (found by feeding NaN to compiled models). A NaN in an activation says that something
upstream overflowed; hiding it is a silent wrong answer. ``max(x, c)`` with a constant becomes
``x < c ? c : x`` (a NaN ``x`` fails the test), the same compare and blend as before; ``max`` of two
variables becomes LLVM's ``maximum`` (IEEE 754-2019), NaN if either operand is. (A select on
``isnan`` stopped VectorizeLoop, and ``x != x`` was simplified to false.)
"""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import tirx


# (bfloat16 arithmetic is float32 by now; float8 is legalised later, and not by call)
_FLOATS = ("float16", "float32", "float64")


def _propagating(node):
    is_max = isinstance(node, tirx.Max)
    a, b = node.a, node.b
    if isinstance(a, tirx.FloatImm):
        a, b = b, a
    if isinstance(b, tirx.FloatImm):  # ReLU, clip: one compare and a blend, as before
        if isinstance(a, (tirx.Var, tvm.ir.TensorLoad)):
            return tirx.Select(tirx.LT(a, b) if is_max else tirx.GT(a, b), b, a)  # NaN a fails the test: a
        # `a` is named once: written twice, a clamp of a clamp doubled its tree at each level and
        # TVM's later passes walked every copy (Mish's compile went from 12 to 38 s)
        value = tirx.Var("clamped", a.ty)
        return tirx.Let(value, a, tirx.Select(tirx.LT(value, b) if is_max else tirx.GT(value, b), b, value))
    # two variables (Max, pooling, a row's max)
    return tirx.call_llvm_pure_intrin(str(node.ty), "llvm.maximum" if is_max else "llvm.minimum", a, b)


def _rewrite(body):
    def visit(node, mutator):
        node = mutator.default_mutate(node)
        if isinstance(node, (tirx.Max, tirx.Min)) and str(node.ty) in _FLOATS:
            return _propagating(node)
        return node

    return tvm_ffi.structural_mutate(body, [(object, visit)])


@tirx.transform.prim_func_pass(opt_level=0, name="sparsec.NaNMinMax")
def nan_min_max(func: tirx.PrimFunc, mod, ctx) -> tirx.PrimFunc:
    body = _rewrite(func.body)
    return func if body.same_as(func.body) else func.with_body(body)
