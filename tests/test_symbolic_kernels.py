"""Kernels over symbolic extents: the vector_tails TIR pass (vector loops with guarded lanes), the
symbolic GEMM and softmax schedules that rely on it, and serial_when_small (parallel loops whose
work is known at run time), against numpy and ORT at many lengths."""

import numpy as np
import onnx
import pytest
import tvm
import tvm_ffi
from onnx import TensorProto, helper, numpy_helper
from tvm import te, tirx
from tvm.script import tirx as T

import sparsec
from sparsec.backends.tvm.schedules.cpu import CPUFallback, CPURowReduction
from sparsec.backends.tvm.serial_when_small import SERIAL_IF, serial_when_small
from sparsec.backends.tvm.targets import get_target
from sparsec.backends.tvm.vector_tails import vector_tails

from conftest import assert_matches_ort

LENGTHS = [1, 5, 8, 13, 24, 100]


def _doubled(guard):
    """B[i] = 2 A[i] for i < n, vectors of 8 lanes, each lane guarded by ``guard(i, n)``."""

    @T.prim_func
    def func(a: T.handle, b: T.handle):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        n = T.int64()
        A = T.match_buffer(a, (n,), "float32")
        B = T.match_buffer(b, (n,), "float32")
        for i0 in range((n + 7) // 8):
            for i1 in T.vectorized(T.int64(8)):
                if guard(i0 * 8 + i1, n):
                    B[i0 * 8 + i1] = A[i0 * 8 + i1] * T.float32(2)

    return func


def _padded_read(n_pad: int):
    """B[i] = A[i] if i < n else -1 over a padded output: a guarded value, not a guarded store."""

    @T.prim_func
    def func(a: T.handle, b: T.handle):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        n = T.int64()
        A = T.match_buffer(a, (n,), "float32")
        B = T.match_buffer(b, (n_pad,), "float32")
        for i0 in range(T.int64(n_pad // 8)):
            for i1 in T.vectorized(T.int64(8)):
                B[i0 * 8 + i1] = T.if_then_else(i0 * 8 + i1 < n, A[i0 * 8 + i1], T.float32(-1))

    return func


def _vector_loops_with_guards(func) -> tuple[int, int]:
    """(vector loops, vector loops with a lane-dependent guard inside) of a function."""
    loops, guarded = [], []

    def visit(node):
        if isinstance(node, tirx.For) and node.kind == tirx.ForKind.VECTORIZED:
            loops.append(node)
            conds = []
            tvm_ffi.structural_walk(node.body, (tirx.IfThenElse, lambda s: conds.append(s)))
            if conds:
                guarded.append(node)

    tvm_ffi.structural_walk(func.body, (object, visit))
    return len(loops), len(guarded)


def _build(func):
    spec = get_target("llvm")
    return tvm.tirx.build(tvm.IRModule({"main": func}), target=spec.make({}), pipeline=spec.tir_pipeline)


def test_guarded_lanes_get_an_unguarded_vector_copy():
    func = _doubled(lambda i, n: i < n)
    before = _vector_loops_with_guards(func)
    after = vector_tails(tvm.IRModule({"main": func}))["main"]
    assert before == (1, 1)
    # the copy: one more vector loop, and it has no guard (a test chooses between them)
    assert _vector_loops_with_guards(after) == (3, 1)


@pytest.mark.parametrize("guard", [lambda i, n: i < n, lambda i, n: tirx.And(i >= 0, i < n)], ids=["upper", "both"])
def test_guarded_stores_are_exact_at_every_length(guard, rng):
    lib = _build(_doubled(guard))
    for n in LENGTHS:
        a = rng.standard_normal(n).astype(np.float32)
        b = np.full(n, 7.0, np.float32)
        out = tvm.runtime.tensor(b)
        lib["main"](tvm.runtime.tensor(a), out)
        np.testing.assert_array_equal(out.numpy(), 2 * a)


def test_guarded_values_are_exact_at_every_length(rng):
    for n in LENGTHS:
        n_pad = -(-n // 8) * 8 + 8  # at least one vector past the end: every lane out of range
        lib = _build(_padded_read(n_pad))
        a = rng.standard_normal(n).astype(np.float32)
        out = tvm.runtime.tensor(np.zeros(n_pad, np.float32))
        lib["main"](tvm.runtime.tensor(a), out)
        np.testing.assert_array_equal(out.numpy(), np.concatenate([a, np.full(n_pad - n, -1, np.float32)]))


def test_a_guard_that_is_not_an_interval_is_left_alone(rng):
    func = _doubled(lambda i, n: tirx.And(i < n, i % 3 != 0))
    after = vector_tails(tvm.IRModule({"main": func}))["main"]
    assert after.same_as(func) or tvm_ffi.structural_equal(after, func)
    lib = _build(func)
    for n in LENGTHS:
        a = rng.standard_normal(n).astype(np.float32)
        out = tvm.runtime.tensor(np.zeros(n, np.float32))
        lib["main"](tvm.runtime.tensor(a), out)
        want = np.where(np.arange(n) % 3 != 0, 2 * a, 0)
        np.testing.assert_array_equal(out.numpy(), want)


def attention_block(heads: int = 4, head: int = 16, hidden: int = 64, ffn: int = 96, seed: int = 0) -> onnx.ModelProto:
    """softmax(q k^T * scale + mask) v, heads merged, then a Linear: every product over a symbolic
    sequence (q k^T's columns, p v's reduction, the Linear's rows) and softmax over the keys."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["q", "kt"], ["scores"]),
             helper.make_node("Mul", ["scores", "scale"], ["scaled"]),
             helper.make_node("Add", ["scaled", "mask"], ["masked"]),
             helper.make_node("Softmax", ["masked"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "v"], ["o"]),
             helper.make_node("Transpose", ["o"], ["ot"], perm=[0, 2, 1, 3]),
             helper.make_node("Reshape", ["ot", "merged"], ["o2"]),
             helper.make_node("MatMul", ["o2", "w"], ["y0"]),
             helper.make_node("Add", ["y0", "bias"], ["y"])]
    inits = [numpy_helper.from_array(np.array(head ** -0.5, np.float32), "scale"),
             numpy_helper.from_array(np.array([0, 0, hidden], np.int64), "merged"),
             numpy_helper.from_array((rng.standard_normal((hidden, ffn)) / 8).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(ffn).astype(np.float32), "bias")]
    qkv = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", heads, "sequence", head]) for name in "qkv"]
    mask = helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", 1, 1, "sequence"])
    graph = helper.make_graph(nodes, "attention", [*qkv, mask],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", ffn])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_attention_over_a_symbolic_sequence_matches_ort(rng):
    model = attention_block()
    compiled = sparsec.compile(model, num_threads=2)
    for batch, sequence in [(1, 1), (2, 5), (1, 8), (3, 37), (1, 48), (2, 100)]:
        feeds = {name: rng.standard_normal((batch, 4, sequence, 16)).astype(np.float32) for name in "qkv"}
        feeds["mask"] = rng.standard_normal((batch, 1, 1, sequence)).astype(np.float32)
        assert_matches_ort(compiled, model, feeds)


@pytest.mark.parametrize("batch, sequence, pin_sequence", [(1, 9, True), (1, 37, True), (2, 100, True), (1, 37, False)])
def test_attention_pinned_to_lengths_the_vectors_do_not_divide_matches_ort(batch, sequence, pin_sequence, rng):
    """Pinned (the sequence too, or the batch alone), with a unit batch: the partial sums' lane
    axis is not their last (a guard built on the last index of the partial sums read rows, not
    lanes, and was wrong here)."""
    model = attention_block()
    dims = {"batch": batch, "sequence": sequence} if pin_sequence else {"batch": batch}
    compiled = sparsec.compile(model, num_threads=2, dims=dims)
    feeds = {name: rng.standard_normal((batch, 4, sequence, 16)).astype(np.float32) for name in "qkv"}
    feeds["mask"] = rng.standard_normal((batch, 1, 1, sequence)).astype(np.float32)
    assert_matches_ort(compiled, model, feeds)


def test_attention_over_a_symbolic_sequence_builds_for_c_and_matches_ort(rng):
    """The C target lowers with TVM's own pipeline (no vector_tails): the symbolic schedules must
    still build there (TVM's C printer could not declare the symbolic partial sums' workspace)."""
    model = attention_block()
    compiled = sparsec.compile(model, target="c", num_threads=2)
    for batch, sequence in [(1, 5), (2, 37)]:
        feeds = {name: rng.standard_normal((batch, 4, sequence, 16)).astype(np.float32) for name in "qkv"}
        feeds["mask"] = rng.standard_normal((batch, 1, 1, sequence)).astype(np.float32)
        assert_matches_ort(compiled, model, feeds)


@pytest.mark.parametrize("rows, length", [(4, 37), (3, 100), (2, 9)])
def test_softmax_over_a_static_length_the_vectors_do_not_divide_matches_ort(rows, length, rng):
    """A pinned length that is not a multiple of the vector width takes the same partial-sum
    path as a symbolic one (its last vector guarded lane by lane)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, length])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, length])
    model = helper.make_model(helper.make_graph([helper.make_node("Softmax", ["x"], ["y"], axis=-1)], "softmax", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    compiled = sparsec.compile(model, num_threads=2)
    values = rng.standard_normal((rows, length)) + 50 * (np.arange(rows)[:, None] % 2)  # a read past a row would show
    assert_matches_ort(compiled, model, {"x": values.astype(np.float32)})


def test_softmax_over_a_symbolic_axis_matches_ort(rng):
    """Vector partial maxima and sums over a symbolic row: the last vector's lanes past the row
    must not be read into them (TVM's rfactor dropped that guard; sparsec puts it back)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", "length"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", "length"])
    model = helper.make_model(helper.make_graph([helper.make_node("Softmax", ["x"], ["y"], axis=-1)], "softmax", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    compiled = sparsec.compile(model, num_threads=2)
    for rows, length in [(3, 1), (2, 7), (5, 8), (4, 9), (2, 33), (1, 300)]:
        # the row after each one holds large values: a read past the row's end would show
        feeds = {"x": (rng.standard_normal((rows, length)) + 50 * (np.arange(rows)[:, None] % 2)).astype(np.float32)}
        assert_matches_ort(compiled, model, feeds)


def _scaled(threshold: int):
    """B[i, j] = 3 A[i, j] over [n, 64] rows, the row loop parallel unless n < threshold."""

    @T.prim_func
    def func(a: T.handle, b: T.handle):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        n = T.int64()
        A = T.match_buffer(a, (n, 64), "float32")
        B = T.match_buffer(b, (n, 64), "float32")
        for i in T.parallel(n, annotations={SERIAL_IF: n < threshold}):
            for j in T.vectorized(64):
                B[i, j] = A[i, j] * T.float32(3)

    return func


def _loop_kinds(func) -> list:
    kinds = []
    tvm_ffi.structural_walk(func.body, (tirx.For, lambda loop: kinds.append(int(loop.kind))))
    return kinds


def test_a_parallel_loop_gets_a_serial_copy_for_small_work(rng):
    func = _scaled(100)
    after = serial_when_small(tvm.IRModule({"main": func}))["main"]
    kinds = _loop_kinds(after)
    assert kinds.count(int(tirx.ForKind.PARALLEL)) == 1 and kinds.count(int(tirx.ForKind.SERIAL)) == 1
    lib = _build(func)
    for n in (1, 7, 99, 100, 1000):
        a = rng.standard_normal((n, 64)).astype(np.float32)
        out = tvm.runtime.tensor(np.zeros((n, 64), np.float32))
        lib["main"](tvm.runtime.tensor(a), out)
        np.testing.assert_array_equal(out.numpy(), 3 * a)


def test_symbolic_elementwise_and_row_kernels_carry_the_serial_test():
    """The CPU schedules annotate the parallel loops of kernels whose size is symbolic (norms,
    elementwise) with the test; products over weights stay parallel (see _serial_when_small)."""
    n = tirx.Var("n", "int64")
    x = te.placeholder((n, 64), "float32", "x")
    y = te.compute((n, 64), lambda i, j: x[i, j] * 2 + 1, name="y")
    func = te.create_prim_func([x, y])
    target = get_target("llvm").make({})
    scheduled = CPUFallback().apply(func, target, False).mod["main"]
    marked = []
    tvm_ffi.structural_walk(scheduled.body, (tirx.For, lambda loop: marked.append(SERIAL_IF in loop.annotations)))
    assert any(marked)


def test_layer_norm_over_symbolic_rows_matches_ort_on_both_sides_of_the_test(rng):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", 64])
    scale = numpy_helper.from_array(rng.standard_normal(64).astype(np.float32), "scale")
    bias = numpy_helper.from_array(rng.standard_normal(64).astype(np.float32), "bias")
    graph = helper.make_graph([helper.make_node("LayerNormalization", ["x", "scale", "bias"], ["ln"], axis=-1),
                               helper.make_node("Relu", ["ln"], ["y"])], "norm", [x], [y], [scale, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    compiled = sparsec.compile(model, num_threads=2)
    for rows in (1, 3, 4096):  # 4096 x 64 elements: past SERIAL_WORK, run in parallel
        assert_matches_ort(compiled, model, {"x": rng.standard_normal((rows, 64)).astype(np.float32)})


@T.prim_func
def _let_bound_base(a: T.handle, b: T.handle):
    """The guard reads a let-bound value computed inside the loops."""
    T.func_attr({"global_symbol": "main", "tirx.noalias": True})
    n = T.int32()
    A = T.match_buffer(a, (n,), "float32")
    B = T.match_buffer(b, (n,), "float32")
    for i0 in range((n + 31) // 32):
        for i1 in range(4):
            base = T.bind(i0 * 32 + i1 * 8)
            for v in T.vectorized(8):
                if base + v < n:
                    B[base + v] = A[base + v] * T.float32(2)


@T.prim_func
def _loaded_base(a: T.handle, b: T.handle, ix: T.handle):
    """The guard reads a value loaded from memory inside the loops."""
    T.func_attr({"global_symbol": "main", "tirx.noalias": True})
    n = T.int32()
    A = T.match_buffer(a, (n,), "float32")
    B = T.match_buffer(b, (n,), "float32")
    I = T.match_buffer(ix, (32,), "int32")
    for i0 in range(8):
        for i1 in range(4):
            start = T.bind(I[i0 * 4 + i1])
            for v in T.vectorized(8):
                if start + v < n:
                    B[start + v] = A[start + v] * T.float32(2)


def test_guards_on_values_bound_inside_the_loops_stay_exact(rng):
    let_bound, loaded = _build(_let_bound_base), _build(_loaded_base)
    for n in (5, 32, 37, 100):
        a = rng.standard_normal(n).astype(np.float32)
        out = tvm.runtime.tensor(np.zeros(n, np.float32))
        let_bound["main"](tvm.runtime.tensor(a), out)
        np.testing.assert_array_equal(out.numpy(), 2 * a)
        starts = np.arange(32, dtype=np.int32) * 8  # vector starts: some past n, one straddling it
        out = tvm.runtime.tensor(np.zeros(n, np.float32))
        loaded["main"](tvm.runtime.tensor(a), out, tvm.runtime.tensor(starts))
        np.testing.assert_array_equal(out.numpy(), 2 * a)


def test_partial_sums_over_an_offset_symbolic_read_are_exact(rng):
    """S[i] = sum_k X[i, k + 1] over a symbolic length: the partial sums' guard is the split's
    (k < n), not the read's index (k + 1 < n would drop the last element)."""
    n = tirx.Var("n", "int64")
    x = te.placeholder((4, n + 1), "float32", name="x")
    k = te.reduce_axis((0, n), name="k")
    total = te.compute((4,), lambda i: te.sum(x[i, k + 1], axis=k), name="total")
    y = te.compute((4, n), lambda i, j: x[i, j + 1] - total[i], name="y")
    func = te.create_prim_func([x, y]).with_attr({"global_symbol": "main", "tirx.noalias": True})
    spec = get_target("llvm")
    target = spec.make({})
    scheduled = CPURowReduction().schedule(func, target).mod["main"]
    lib = tvm.tirx.build(tvm.IRModule({"main": scheduled}), target=target, pipeline=spec.tir_pipeline)
    for length in (1, 5, 16, 17, 40):
        values = rng.standard_normal((4, length + 1)).astype(np.float32)
        values[:, length] = 100  # the last element the sum must include
        out = tvm.runtime.tensor(np.zeros((4, length), np.float32))
        lib["main"](tvm.runtime.tensor(values), out)
        np.testing.assert_allclose(out.numpy(), values[:, 1:] - values[:, 1:].sum(1, keepdims=True), rtol=1e-5, atol=1e-4)


# TVM's s_tir passes that sparsec's CPU pipeline leaves out (GPU and Hexagon only), and its own.
LEFT_OUT = {"s_tir.VerifyVTCMLimit", "s_tir.LowerVtcmAlloc", "s_tir.ThreadSync", "s_tir.InferFragment",
            "s_tir.LowerThreadAllreduce", "s_tir.MergeSharedMemoryAllocations"}


def _passes_run(pipeline: str) -> list:
    seen = []

    @tvm.instrument.pass_instrument
    class Record:
        def run_before_pass(self, mod, info):
            seen.append(info.name)

    spec = get_target("llvm")
    with tvm.transform.PassContext(instruments=[Record()]):
        tvm.tirx.build(tvm.IRModule({"main": _scaled(100)}), target=spec.make({}), pipeline=pipeline)
    return seen[3:]  # after the target binding and the pipelines' own wrappers


def test_the_cpu_pipeline_runs_tvms_passes_in_tvms_order():
    """A newer TVM that adds, drops or moves a pass in its s_tir pipeline fails this test: the
    copy in tir_pipeline.py must follow."""
    ours = [name for name in _passes_run(get_target("llvm").tir_pipeline) if not name.startswith("sparsec.")]
    assert ours == [name for name in _passes_run("s_tir") if name not in LEFT_OUT]
