"""The TIR pass that reads every s-th element as contiguous vectors and a shuffle."""

import numpy as np
import pytest
import tvm
import tvm_ffi
from tvm import tirx
from tvm.script import tirx as T

from sparsec.backends.tvm.tir_pipeline import PIPELINE


def strided_copy(lanes: int, stride: int, rows: int = 3):
    """y[r, i] = x[r, stride * i + 1] for i < lanes, read as one vector per row."""
    width = stride * lanes + 2

    @T.prim_func(s_tir=True)
    def func(x: T.Buffer((rows, width), "float32"), y: T.Buffer((rows, lanes), "float32")):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        for r in range(rows):
            for i in T.vectorized(lanes):
                with T.sblock("copy"):
                    vr, vi = T.axis.remap("SS", [r, i])
                    y[vr, vi] = x[vr, vi * stride + 1]

    return func, width


def guarded_copy(lanes: int, rows: int = 3):
    """y[r, i] = x[r - 1, 2 i + 1] where r >= 1, else 0: a strided vector load under a guard."""

    @T.prim_func(s_tir=True)
    def func(x: T.Buffer((rows, 2 * lanes), "float32"), y: T.Buffer((rows, lanes), "float32")):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        for r in range(rows):
            for i in T.vectorized(lanes):
                with T.sblock("copy"):
                    vr, vi = T.axis.remap("SS", [r, i])
                    y[vr, vi] = T.if_then_else(vr >= 1, x[T.max(vr - 1, 0), vi * 2 + 1], T.float32(0))

    return func


def _lowered(func, pipeline_name: str = "s_tir"):
    """The function through a TIR pipeline, as tvm.compile runs it (target bound first)."""
    pipeline, _, _ = tirx.get_tir_pipeline(pipeline_name)
    target = tvm.target.Target({"kind": "llvm"})
    target = target.with_host(target)
    mod = tirx.transform.BindTarget(target)(tvm.IRModule({"main": func}))
    with target:
        return pipeline(mod)


def _count(mod, kind: str) -> int:
    found = []
    for _, func in mod.functions_items():
        tvm_ffi.structural_walk(func.body, (object, lambda node: found.append(node) if type(node).__name__ == kind else None))
    return len(found)


@pytest.mark.parametrize("stride", [2, 3, 4])
@pytest.mark.parametrize("lanes", [4, 8, 14, 28])
def test_strided_loads_become_shuffles_and_read_the_same(stride, lanes, rng):
    func, width = strided_copy(lanes, stride)
    assert _count(_lowered(func), "Shuffle") == 0 and _count(_lowered(func, PIPELINE), "Shuffle") == 1  # it fired
    target = tvm.target.Target({"kind": "llvm"})
    with target:
        built = tvm.compile(tvm.IRModule({"main": func}), target=target, tir_pipeline=PIPELINE)
    x = rng.standard_normal((3, width)).astype(np.float32)
    y = tvm.runtime.tensor(np.zeros((3, lanes), np.float32))
    built["main"](tvm.runtime.tensor(x), y)
    np.testing.assert_array_equal(y.numpy(), x[:, 1:1 + stride * lanes:stride])


def _strided_ramps(mod) -> int:
    found = []
    for _, func in mod.functions_items():
        tvm_ffi.structural_walk(func.body, (object, lambda node: found.append(node) if type(node).__name__ == "Ramp"
                                            and int(node.stride) == 2 else None))
    return len(found)


def test_guarded_strided_loads_are_left_alone():
    """A guard may be what keeps a strided load's span inside its buffer: such loads keep their
    form (the vectorised guarded load is there before the pass and still there after it)."""
    func = guarded_copy(8)
    assert _strided_ramps(_lowered(func)) == 1
    after = _lowered(func, PIPELINE)
    assert _strided_ramps(after) == 1 and _count(after, "Shuffle") == 0
