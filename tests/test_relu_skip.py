"""The `relu-skip` pass and its kernel: the MatMul after a Relu skips all-zero activation columns."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import sparsec
from conftest import assert_matches_ort
from sparsec.models.relu_ffn import relu_ffn

HIDDEN, FFN = 100, 300  # not multiples of the vector width or the 32-column panel


def x_of(rng, tokens, hidden=HIDDEN):
    return {"x": rng.standard_normal((tokens, hidden)).astype(np.float32)}


@pytest.mark.parametrize("zero_fraction", [0.0, 0.5, 0.9, 1.0])
def test_exact_at_every_sparsity_and_token_count(zero_fraction, rng):
    # Symbolic tokens; one token has ~zero_fraction zero columns (sparse path), 32 tokens share
    # few (the run-time dense path), 1.0 has none active (the output is the bias alone).
    model = relu_ffn(HIDDEN, FFN, layers=2, zero_fraction=zero_fraction, residual=True)
    compiled = sparsec.compile(model)
    assert compiled.report["rewrites"] == {"relu-skip": 2}
    assert all(d["bias"] for d in compiled.report["details"]["relu-skip"]["rewritten"])
    for tokens in (1, 7, 32):
        assert_matches_ort(compiled, model, x_of(rng, tokens))


@pytest.mark.parametrize("tokens", [1, 7, 32])
def test_shared_zero_columns_take_the_sparse_path_with_many_rows(tokens, rng):
    # pattern="neuron": every token has the same 75% zero columns, so the gather runs over full
    # 8-row tiles (32 tokens: enough work for the parallel loop) and the 4 + 2 + 1 leftover tiles
    # (7 tokens: the one-thread loop) and single rows (1 token), with static token counts.
    model = relu_ffn(200, 1000, tokens=tokens, zero_fraction=0.75, pattern="neuron", seed=3)
    compiled = sparsec.compile(model)
    assert compiled.report["rewrites"] == {"relu-skip": 1}
    assert_matches_ort(compiled, model, x_of(rng, tokens, 200))


def test_batched_rows_without_bias_and_inf_propagation(rng):
    # x[batch, seq, 64] -> MatMul -> Relu -> MatMul (no bias): the kernel flattens the leading dims.
    w1 = numpy_helper.from_array((rng.standard_normal((64, 128)) / 8).astype(np.float32), "w1")
    w2 = numpy_helper.from_array((rng.standard_normal((128, 40)) / 11).astype(np.float32), "w2")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["a"]), helper.make_node("Relu", ["a"], ["h"]),
         helper.make_node("MatMul", ["h", "w2"], ["y"])], "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", 40])], [w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    compiled = sparsec.compile(model)
    assert compiled.report["rewrites"] == {"relu-skip": 1}
    assert not compiled.report["details"]["relu-skip"]["rewritten"][0]["bias"]
    x = rng.standard_normal((2, 3, 64)).astype(np.float32)
    assert_matches_ort(compiled, model, {"x": x})
    x[1, 2, 5] = np.inf  # inf activations (and the NaNs of inf - inf) reach the output as in ORT
    (y,) = assert_matches_ort(compiled, model, {"x": x})
    assert not np.isfinite(y[1, 2]).all() and np.isfinite(y[0]).all()


@pytest.mark.parametrize("rows", [1, 3, 13, 140])  # 140: two strips of K-blocked sums
@pytest.mark.parametrize("serial_work", [0, 1 << 40])  # the sparse product in parallel, or on one thread
@pytest.mark.parametrize("rows_copy, n", [(False, HIDDEN), (True, HIDDEN), (True, 768)])
def test_kernel_never_skips_nan_or_inf_columns(rows, serial_work, rows_copy, n, rng):
    # The kernel alone (TVM's Relu itself maps NaN to 0, so a model cannot feed it a NaN): only
    # exactly-zero columns are skipped, on the sparse path (2 and 40 active of 300) and the dense
    # one; with the row-major copy, fewer than 4 rows gather from it on the sparse path (n = 100
    # is padded to whole panels there, 768 is not).
    import tvm

    from sparsec.backends.tvm.kernels.relu_skip import (pack_panels, pack_rows, padded_width, relu_skip_kernel,
                                                         tile_shape)
    from sparsec.backends.tvm.targets import get_target

    f = FFN
    mr, nr = tile_shape()
    func = relu_skip_kernel(f, n, mr, nr, serial_work=serial_work, rows_copy=rows_copy)
    kernel = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                         target=get_target("llvm").make({}))["main"]
    w = rng.standard_normal((f, n)).astype(np.float32)
    panels = pack_panels(w, nr)
    bias = rng.standard_normal(padded_width(n, nr)).astype(np.float32)
    weights = [tvm.runtime.tensor(panels)] + ([tvm.runtime.tensor(pack_rows(w, nr))] if rows_copy else [])
    for active in (2, 40, f):
        h = np.zeros((rows, f), np.float32)
        h[:, rng.permutation(f)[:active]] = np.abs(rng.standard_normal((rows, active)))
        h[rows - 1, 7], h[0, 250] = np.nan, np.inf
        out = tvm.runtime.tensor(np.zeros((rows, n), np.float32))
        kernel(tvm.runtime.tensor(h), *weights, tvm.runtime.tensor(bias), out)
        with np.errstate(invalid="ignore"):
            np.testing.assert_allclose(out.numpy(), h @ w + bias[:n], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("rows", [5, 140])
def test_kernel_k_blocks_over_the_active_list(rows, rng):
    # K blocks of 16 rows of W2: the gathered path's active list (40 of 300) and the dense path
    # (all 300) both span several blocks, the sums carried between them; 140 rows: two strips.
    import tvm

    from sparsec.backends.tvm.kernels.relu_skip import pack_panels, padded_width, relu_skip_kernel, tile_shape
    from sparsec.backends.tvm.targets import get_target

    f, n = FFN, HIDDEN
    mr, nr = tile_shape()
    func = relu_skip_kernel(f, n, mr, nr, serial_work=0, rows_copy=False, k_block=16)
    kernel = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                         target=get_target("llvm").make({}))["main"]
    w = rng.standard_normal((f, n)).astype(np.float32)
    bias = rng.standard_normal(padded_width(n, nr)).astype(np.float32)
    for active in (0, 40, f):
        h = np.zeros((rows, f), np.float32)
        h[:, rng.permutation(f)[:active]] = np.abs(rng.standard_normal((rows, active)))
        out = tvm.runtime.tensor(np.zeros((rows, n), np.float32))
        kernel(tvm.runtime.tensor(h), tvm.runtime.tensor(pack_panels(w, nr)), tvm.runtime.tensor(bias), out)
        np.testing.assert_allclose(out.numpy(), h @ w + bias[:n], rtol=1e-4, atol=1e-4)


def test_the_rewritten_graph_runs_on_ort(rng):
    model = relu_ffn(HIDDEN, FFN, zero_fraction=0.9)
    compiled = sparsec.compile(model, backend="ort")  # the op's decomposition into MatMul + Add
    assert compiled.report["rewrites"] == {"relu-skip": 1}
    assert_matches_ort(compiled, model, x_of(rng, 5))


def _ffn_with(activation="Relu", w2_input=False):
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array((rng.standard_normal((HIDDEN, FFN)) / 10).astype(np.float32), "w1")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["tokens", HIDDEN])]
    if w2_input:
        inputs.append(helper.make_tensor_value_info("w2", TensorProto.FLOAT, [FFN, HIDDEN]))
    else:
        inits.append(numpy_helper.from_array((rng.standard_normal((FFN, HIDDEN)) / 17).astype(np.float32), "w2"))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["a"]), helper.make_node(activation, ["a"], ["h"]),
         helper.make_node("MatMul", ["h", "w2"], ["y"], name="second")], "t", inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["tokens", HIDDEN])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("activation, w2_input, why", [("Sigmoid", False, "Sigmoid output, not Relu"),
                                                       ("Relu", True, "not a constant")])
def test_near_misses_are_not_rewritten_and_say_why(activation, w2_input, why, rng):
    model = _ffn_with(activation, w2_input)
    compiled = sparsec.compile(model, passes=["relu-skip"])
    assert compiled.report["rewrites"] == {}
    assert any(note.startswith("second:") and why in note for note in compiled.report["notes"]["relu-skip"])
    feeds = x_of(rng, 3)
    if w2_input:
        feeds["w2"] = rng.standard_normal((FFN, HIDDEN)).astype(np.float32)
    assert_matches_ort(compiled, model, feeds)


def test_weight_sparse_w2_is_left_to_sparse_weights():
    model = relu_ffn(HIDDEN, FFN, zero_fraction=0.5)
    w2 = next(t for t in model.graph.initializer if t.name == "l0_w2")
    pruned = numpy_helper.to_array(w2).copy()
    pruned[::2] = 0  # half of W2's rows are zero
    w2.CopyFrom(numpy_helper.from_array(pruned, "l0_w2"))
    compiled = sparsec.compile(model, passes=["relu-skip"])
    assert compiled.report["rewrites"] == {}
    assert any("left to sparse-weights" in note for note in compiled.report["notes"]["relu-skip"])


@pytest.mark.parametrize("tokens, copy", [(None, True), (2, True), (8, False)])
def test_the_row_major_copy_is_reported_when_few_rows_can_occur(tokens, copy, rng):
    # Fewer than 4 rows gather whole rows of a row-major copy of W2: held (and said) only when the
    # row count can be that small; the outputs match ORT either way.
    model = relu_ffn(HIDDEN, FFN, tokens=tokens, zero_fraction=0.9)
    compiled = sparsec.compile(model, passes=["relu-skip"])
    (detail,) = compiled.report["details"]["relu-skip"]["rewritten"]
    notes = compiled.report["notes"].get("relu-skip", [])
    if copy:
        from sparsec.backends.tvm.kernels.relu_skip import padded_width, tile_shape

        assert detail["row_copy_bytes"] == FFN * padded_width(HIDDEN, tile_shape()[1]) * 4
        assert any("row-major" in note for note in notes)
    else:
        assert "row_copy_bytes" not in detail and not notes
    assert_matches_ort(compiled, model, x_of(rng, tokens or 3))


def test_the_c_target_builds_the_kernel_without_llvm_prefetches(rng):
    # The row gather prefetches with an LLVM intrinsic, which TVM's C code generator cannot
    # print: the c target registers the kernel without it (with it, the c build failed).
    model = relu_ffn(HIDDEN, FFN, zero_fraction=0.9)
    compiled = sparsec.compile(model, target="c")
    assert compiled.report["rewrites"] == {"relu-skip": 1}
    for tokens in (1, 6):
        assert_matches_ort(compiled, model, x_of(rng, tokens))


def _gemm_ffn(trans_b: int, c_shape, alpha: float = 1.0):
    """``Gemm(Relu(x @ W1 - 1.3), W2 [, C])`` as HF OPT exports fc2 (transB=1, C of N values); the
    shift leaves ~10% of the activations non-zero, so one token takes the sparse path."""
    rng = np.random.default_rng(2)
    w2 = (rng.standard_normal((FFN, HIDDEN)) / 17).astype(np.float32)
    inits = [numpy_helper.from_array((rng.standard_normal((HIDDEN, FFN)) / 10).astype(np.float32), "w1"),
             numpy_helper.from_array(np.ascontiguousarray(w2.T) if trans_b else w2, "w2"),
             numpy_helper.from_array(np.array(-1.3, np.float32), "shift")]
    inputs = ["h", "w2"]
    if c_shape is not None:
        inits.append(numpy_helper.from_array(rng.standard_normal(c_shape).astype(np.float32), "c"))
        inputs.append("c")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["a0"]), helper.make_node("Add", ["a0", "shift"], ["a"]),
         helper.make_node("Relu", ["a"], ["h"]),
         helper.make_node("Gemm", inputs, ["y"], name="fc2", transB=trans_b, alpha=alpha)], "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["tokens", HIDDEN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["tokens", HIDDEN])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("trans_b, c_shape", [(1, [HIDDEN]), (0, [1, HIDDEN]), (1, [1]), (0, None)])
def test_a_gemm_after_relu_is_rewritten_exactly(trans_b, c_shape, rng):
    # HF OPT's fc2 is Gemm(Relu(..), W^T, b) with transB=1: the same rewrite, W transposed once.
    model = _gemm_ffn(trans_b, c_shape)
    compiled = sparsec.compile(model, passes=["relu-skip"])
    assert compiled.report["rewrites"] == {"relu-skip": 1}
    (detail,) = compiled.report["details"]["relu-skip"]["rewritten"]
    assert detail["shape"] == [FFN, HIDDEN] and detail["bias"] == (c_shape is not None)
    for tokens in (1, 5):
        assert_matches_ort(compiled, model, x_of(rng, tokens))


def test_a_scaled_gemm_is_not_rewritten_and_says_why(rng):
    model = _gemm_ffn(1, [HIDDEN], alpha=0.5)
    compiled = sparsec.compile(model, passes=["relu-skip"])
    assert compiled.report["rewrites"] == {}
    assert any("alpha or beta" in note for note in compiled.report["notes"]["relu-skip"])
    assert_matches_ort(compiled, model, x_of(rng, 3))


def test_row_copy_off_holds_the_weight_once(rng):
    # -O relu-skip.row_copy=off: no row-major copy (no note, no bytes), small row counts gather
    # from the panels; the outputs are the same.
    model = relu_ffn(HIDDEN, FFN, zero_fraction=0.9)
    compiled = sparsec.compile(model, passes=["relu-skip"], pass_options={"relu-skip": {"row_copy": "off"}})
    assert compiled.report["rewrites"] == {"relu-skip": 1}
    (detail,) = compiled.report["details"]["relu-skip"]["rewritten"]
    assert "row_copy_bytes" not in detail and not compiled.report["notes"].get("relu-skip")
    with_copy = sparsec.compile(model, passes=["relu-skip"])
    # The kernel the VM calls: with the copy it takes W's two layouts (and is named _rows)
    calls = {name: [line for line in c._runner.executable.as_text().splitlines() if "call" in line and "relu_skip" in line]
             for name, c in (("off", compiled), ("auto", with_copy))}
    assert len(calls["off"]) == len(calls["auto"]) == 1
    assert "_rows" in calls["auto"][0] and "_rows" not in calls["off"][0]
    for tokens in (1, 3, 9):
        assert_matches_ort(compiled, model, x_of(rng, tokens))
