"""`moe-dispatch`: dense-masked MoEs run only the routed experts, with ORT's outputs."""

import numpy as np
import onnx
import onnx.numpy_helper
import pytest

import sparsec
from conftest import assert_matches_ort, cuda_source
from sparsec.models.moe_layers import dense_masked_moe
from sparsec.passmanager import PassContext, PassManager, resolve_passes


def dispatched(model):
    graph = sparsec.load(model)
    sparsec.prepare(graph)
    report = PassManager(resolve_passes(["moe-dispatch"])).run(graph, PassContext())
    return graph, report


@pytest.mark.parametrize("activation", ["relu", "gelu", "silu"])
@pytest.mark.parametrize("softmax, normalize, k", [("before", True, 2), ("before", False, 2), ("after", False, 2),
                                                   ("before", False, 1)])
def test_dispatch_is_exact_and_fires(activation, softmax, normalize, k, rng):
    tokens = 6
    model = dense_masked_moe(32, 48, 8, k, tokens=tokens, activation=activation, softmax=softmax,
                             normalize=normalize, layers=2, seed=1)
    compiled = sparsec.compile(model)
    assert compiled.report["rewrites"]["moe-dispatch"] == 2
    found = compiled.report["details"]["moe-dispatch"]["moe"]
    assert [(m["experts"], m["k"], m["activation"]) for m in found] == [(8, k, activation)] * 2
    assert_matches_ort(compiled, model, {"x": rng.standard_normal((tokens, 32)).astype(np.float32)})


@pytest.mark.parametrize("activation", ["relu", "gelu", "silu"])
def test_gated_experts_dispatch_exactly(activation, rng):
    model = dense_masked_moe(32, 40, 8, 2, activation=activation, gated=True, layers=2, seed=3)  # symbolic tokens
    compiled = sparsec.compile(model)
    assert compiled.report["rewrites"] == {"moe-dispatch": 2}
    found = compiled.report["details"]["moe-dispatch"]["moe"]
    assert [(m["gated"], m["activation"]) for m in found] == [(True, activation)] * 2
    for tokens in (1, 7):
        assert_matches_ort(compiled, model, {"x": rng.standard_normal((tokens, 32)).astype(np.float32)})
    graph, _ = dispatched(model)  # the gated op decomposes back to ONNX that ORT runs
    assert_matches_ort(sparsec.compile(graph, backend="ort"), model, {"x": rng.standard_normal((3, 32)).astype(np.float32)})


@pytest.mark.parametrize("form, layout", [("unrolled", "unrolled"), ("einsum", "stacked")])
@pytest.mark.parametrize("activation, gated", [("relu", False), ("gelu", False), ("silu", True)])
def test_unrolled_and_einsum_experts_dispatch_exactly(form, layout, activation, gated, rng):
    """One MatMul chain per expert summed with Adds, or Einsums over stacked weights: same
    rewrite, same function as the stacked batched-MatMul form."""
    model = dense_masked_moe(32, 40, 6, 2, activation=activation, gated=gated, form=form, layers=2, seed=5)
    compiled = sparsec.compile(model)
    assert compiled.report["rewrites"] == {"moe-dispatch": 2}
    assert {m["layout"] for m in compiled.report["details"]["moe-dispatch"]["moe"]} == {layout}
    x = rng.standard_normal((9, 32)).astype(np.float32)
    ours = assert_matches_ort(compiled, model, {"x": x})
    stacked = dense_masked_moe(32, 40, 6, 2, activation=activation, gated=gated, form="stacked", layers=2, seed=5)
    assert_matches_ort(compiled, stacked, {"x": x})
    assert np.abs(ours[0]).max() > 0.1  # the experts contribute: a wrong dispatch could not pass


def test_unrolled_sum_with_an_expert_twice_is_not_rewritten(rng):
    model = dense_masked_moe(32, 40, 4, 2, form="unrolled")
    from onnx import numpy_helper

    for name, bound in (("l0_e3_start", 2), ("l0_e3_end", 3)):  # expert 3 weighted by gate column 2
        init = next(i for i in model.graph.initializer if i.name == name)
        init.CopyFrom(numpy_helper.from_array(np.array([bound], np.int64), name))
    graph, report = dispatched(model)
    assert report["rewrites"] == {}
    assert "expert 2 is summed twice" in report["notes"]["moe-dispatch"][0]
    assert_matches_ort(sparsec.compile(model), model, {"x": rng.standard_normal((4, 32)).astype(np.float32)})


@pytest.mark.parametrize("activation, gated", [("relu", False), ("gelu", False), ("silu", True)])
def test_torch_module_list_moe_dispatches(activation, gated, rng):
    """A hand-written torch MoE (nn.ModuleList of experts, scattered gate) exported by torch."""
    pytest.importorskip("torch")
    from sparsec.models.torch_moe import torch_moe

    model = torch_moe(32, 48, 4, 2, activation=activation, gated=gated)
    compiled = sparsec.compile(model)
    assert compiled.report["rewrites"] == {"moe-dispatch": 1}
    for tokens in (1, 6):
        assert_matches_ort(compiled, model, {"x": rng.standard_normal((tokens, 32)).astype(np.float32)})


@pytest.mark.parametrize("tokens", [1, 3, 16])
def test_token_counts_and_identical_tokens(tokens, rng):
    model = dense_masked_moe(32, 64, 16, 2, tokens=tokens, seed=2)
    compiled = sparsec.compile(model)
    assert compiled.report["rewrites"] == {"moe-dispatch": 1}
    assert_matches_ort(compiled, model, {"x": rng.standard_normal((tokens, 32)).astype(np.float32)})
    same = np.repeat(rng.standard_normal((1, 32)).astype(np.float32), tokens, axis=0)  # all to the same experts
    assert_matches_ort(compiled, model, {"x": same})


def _with_router(model, weights: np.ndarray, bias: np.ndarray):
    """The model with its (first) router's weights and bias replaced."""
    for init in model.graph.initializer:
        if init.name in ("l0_wr", "l0_br"):
            init.CopyFrom(onnx.numpy_helper.from_array(weights if init.name == "l0_wr" else bias, init.name))
    return model


@pytest.mark.parametrize("softmax", ["before", "after"])
def test_router_ties_go_to_the_lower_expert_id_as_in_onnx_topk(softmax, rng):
    """The router runs inside the kernel: equal scores pick the lower expert ids, as ONNX TopK
    does (all experts equal; then pairs of equal experts)."""
    model = dense_masked_moe(32, 48, 8, 2, tokens=5, softmax=softmax, normalize=False, seed=4)
    x = rng.standard_normal((5, 32)).astype(np.float32)
    for bias in (np.zeros(8, np.float32), np.repeat(np.arange(4, dtype=np.float32), 2)):
        tied = _with_router(model, np.zeros((32, 8), np.float32), bias)
        compiled = sparsec.compile(tied)
        assert compiled.report["rewrites"]["moe-dispatch"] == 1  # (the zero router may also run sparse)
        assert_matches_ort(compiled, tied, {"x": x})


def test_many_tokens_route_in_parallel(rng):
    """Above SERIAL_ROUTING_SCORES (token, expert) scores the router loop runs in parallel."""
    from sparsec.backends.tvm.kernels.experts import SERIAL_ROUTING_SCORES
    tokens = SERIAL_ROUTING_SCORES // 64 + 8
    model = dense_masked_moe(32, 48, 64, 2, tokens=tokens, seed=5)
    compiled = sparsec.compile(model)
    assert compiled.report["rewrites"] == {"moe-dispatch": 1}
    assert_matches_ort(compiled, model, {"x": rng.standard_normal((tokens, 32)).astype(np.float32)})


def test_moe_builds_and_runs_for_the_c_target(rng):
    """The c target's C backend cannot build TVM's topk; the router in the kernel needs none."""
    model = dense_masked_moe(32, 48, 8, 2, tokens=4, seed=6)
    compiled = sparsec.compile(model, target="c")
    assert compiled.report["rewrites"] == {"moe-dispatch": 1}
    assert_matches_ort(compiled, model, {"x": rng.standard_normal((4, 32)).astype(np.float32)})


def test_no_expert_matmul_is_left_and_ort_runs_the_rewritten_graph(rng):
    model = dense_masked_moe(32, 64, 8, 2, tokens=4)
    graph, report = dispatched(model)
    assert report["rewrites"] == {"moe-dispatch": 1}
    assert not [n for n in graph.walk() if n.op_type == "MatMul" and n.input(1).const is not None and n.input(1).const.ndim == 3]
    assert [n.op_type for n in graph.walk() if n.domain == "sparsec"] == ["MoE"]
    compiled = sparsec.compile(model, backend="ort")  # the MoE op decomposed back to ONNX
    assert_matches_ort(compiled, model, {"x": rng.standard_normal((4, 32)).astype(np.float32)})


def test_symbolic_token_count_one_build_for_any_tokens(rng):
    model = dense_masked_moe(32, 64, 8, 2, layers=2)  # "tokens" dim left symbolic
    compiled = sparsec.compile(model)
    assert compiled.report["rewrites"] == {"moe-dispatch": 2}
    for tokens in (1, 4, 37):
        assert_matches_ort(compiled, model, {"x": rng.standard_normal((tokens, 32)).astype(np.float32)})


def test_a_gate_scattered_into_non_zeros_is_not_rewritten(rng):
    model = dense_masked_moe(32, 64, 8, 2, tokens=4)
    zero = next(i for i in model.graph.initializer if i.name == "l0_zero")
    from onnx import numpy_helper

    zero.CopyFrom(numpy_helper.from_array(np.ones((), np.float32), "l0_zero"))  # logits * 1: not zeros
    graph, report = dispatched(model)
    assert report["rewrites"] == {}
    assert "not known to be zero" in report["notes"]["moe-dispatch"][0]
    compiled = sparsec.compile(model)
    assert_matches_ort(compiled, model, {"x": rng.standard_normal((4, 32)).astype(np.float32)})


def contrib_moe(activation, normalize, experts=8, hidden=32, ffn=64, tokens=5, k=2, seed=0, gated=False):
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(seed)
    fc1 = (rng.standard_normal((experts, ffn, hidden)) / 6).astype(np.float32)  # ORT stores [E, out, in]
    fc2 = (rng.standard_normal((experts, hidden, ffn)) / 8).astype(np.float32)
    b1 = rng.standard_normal((experts, ffn)).astype(np.float32)
    b2 = rng.standard_normal((experts, hidden)).astype(np.float32)
    fc3 = (rng.standard_normal((experts, ffn, hidden)) / 6).astype(np.float32)
    b3 = rng.standard_normal((experts, ffn)).astype(np.float32)
    names = ["x", "router", "fc1", "b1", "fc2", "b2"] + (["fc3", "b3"] if gated else [])
    node = helper.make_node("MoE", names, ["y"], domain="com.microsoft", k=k,
                            activation_type=activation, normalize_routing_weights=normalize)
    graph = helper.make_graph(
        [node], "contrib_moe",
        [helper.make_tensor_value_info("x", 1, [tokens, hidden]), helper.make_tensor_value_info("router", 1, [tokens, experts])],
        [helper.make_tensor_value_info("y", 1, [tokens, hidden])],
        [numpy_helper.from_array(a, n) for a, n in ((fc1, "fc1"), (b1, "b1"), (fc2, "fc2"), (b2, "b2"), (fc3, "fc3"),
                                                    (b3, "b3")) if n in names])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


@pytest.mark.parametrize("activation", ["relu", "silu"])
@pytest.mark.parametrize("normalize", [0, 1])
def test_com_microsoft_moe_compiles_and_matches_ort(activation, normalize, rng):
    model = contrib_moe(activation, normalize)
    compiled = sparsec.compile(model)
    assert compiled.report["rewrites"] == {"moe-dispatch": 1}
    assert compiled.report["details"]["moe-dispatch"]["moe"][0]["layout"] == "com.microsoft.MoE"
    feeds = {"x": rng.standard_normal((5, 32)).astype(np.float32), "router": rng.standard_normal((5, 8)).astype(np.float32)}
    assert_matches_ort(compiled, model, feeds)


def test_com_microsoft_moe_with_an_unsupported_activation_is_refused_clearly():
    model = contrib_moe("gelu", 1)  # ORT's contrib "gelu" is not erf-GELU to float32 precision
    with pytest.raises(sparsec.UnsupportedOpError, match="MoE \\(domain com.microsoft"):
        sparsec.compile(model)
    graph, report = dispatched(model)
    assert "activation_type 'gelu'" in report["notes"]["moe-dispatch"][0]


def test_com_microsoft_moe_with_fc3_is_refused_with_the_reason():
    graph, report = dispatched(contrib_moe("silu", 1, gated=True))  # ORT's CPU kernel refuses fc3 too
    assert report["rewrites"] == {}
    assert "fc3" in report["notes"]["moe-dispatch"][0] and "no reference" in report["notes"]["moe-dispatch"][0]


@pytest.mark.parametrize("model", [dense_masked_moe(32, 64, 8, 2, tokens=4),
                                   dense_masked_moe(32, 64, 8, 2, gated=True, activation="silu"),
                                   contrib_moe("relu", 1)], ids=["dense-masked", "gated-symbolic-tokens", "com.microsoft"])
def test_moe_dispatch_on_cuda_builds_cuda_expert_kernels(model):
    """No GPU here: the CUDA build is checked by what it contains (the router and the three
    launches of the expert kernel), the kernel's arithmetic by the test below."""
    compiled = sparsec.compile(model, target="cuda", arch="sm_80")
    assert compiled.report["rewrites"] == {"moe-dispatch": 1}
    assert _skip_details(compiled) == [(False, None)]  # the zero skip is the CPU kernel's
    source = cuda_source(compiled)
    kernels = [line for line in source.splitlines() if "__global__" in line and "{" in line]
    assert sum("_cuda_kernel" in line for line in kernels) == 3 and any("topk" in line for line in kernels)


def _reference_moe(x, idx, gate, w1, b1, w2, b2, activation, gated, ffn):
    act = {"relu": lambda v: np.maximum(v, 0), "silu": lambda v: v / (1 + np.exp(-v))}[activation]
    y = np.zeros((x.shape[0], w2.shape[2]), np.float64)
    for t in range(x.shape[0]):
        for j in range(idx.shape[1]):
            e = idx[t, j]
            a = x[t] @ w1[e] + b1[e]
            y[t] += gate[t, j] * ((act(a[:ffn]) * a[ffn:] if gated else act(a)) @ w2[e] + b2[e])
    return y


@pytest.mark.parametrize("tokens, gated, activation", [(5, False, "relu"), (3, True, "silu"), (1, False, "silu")])
def test_cuda_expert_kernel_arithmetic_on_the_cpu(tokens, gated, activation, rng):
    """The CUDA expert kernel with its thread loops made serial, built for the CPU, against a
    numpy MoE over the same expert ids and weights (two tokens may pick the same expert)."""
    import tvm

    from sparsec.backends.tvm.kernels.experts import moe_kernel_cuda

    experts, hidden, ffn, k = 6, 16, 24, 2
    width = 2 * ffn if gated else ffn
    x = rng.standard_normal((tokens, hidden)).astype(np.float32)
    idx = np.stack([rng.choice(experts, k, replace=False) for _ in range(tokens)]).astype(np.int32)
    gate = rng.random((tokens, k)).astype(np.float32)
    w1, b1 = rng.standard_normal((experts, hidden, width)).astype(np.float32), rng.standard_normal((experts, width)).astype(np.float32)
    w2, b2 = rng.standard_normal((experts, ffn, hidden)).astype(np.float32), rng.standard_normal((experts, hidden)).astype(np.float32)
    kernel = moe_kernel_cuda(tokens, hidden, ffn, experts, k, activation, gated, bind=False).with_attr("global_symbol", "main")
    lib = tvm.compile(tvm.IRModule({"main": kernel}), target="llvm")
    y = tvm.runtime.tensor(np.zeros((tokens, hidden), np.float32))
    lib["main"](*(tvm.runtime.tensor(a) for a in (x, idx, gate, w1, b1, w2, b2)), y)
    expected = _reference_moe(x, idx, gate, w1, b1, w2, b2, activation, gated, ffn)
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def _skip_details(compiled):
    return [(m["skip_zeros"], m.get("row_copy_bytes")) for m in compiled.report["details"]["moe-dispatch"]["moe"]]


@pytest.mark.parametrize("tokens", [1, 5, None])
@pytest.mark.parametrize("hidden, gated", [(32, False), (36, False), (32, True)])
def test_relu_experts_skip_zero_rows_exactly(tokens, hidden, gated, rng):
    """ReLU experts (plain or gated) read only the W2 rows of non-zero activations for experts
    with one row: on by default, with the row-major copy reported where the layer can see more
    than one token (none at one token, where it replaces the panels); the same outputs as ORT and
    as the build without it, for every expert count per row (5 tokens, 16 experts, top-2: some
    experts with one row, some with more; all tokens identical: one expert with them all), at a
    hidden size the vector width does not divide, and with a NaN input reaching the output."""
    model = dense_masked_moe(hidden, 48, 16, 2, tokens=tokens if tokens else "tokens", gated=gated, seed=7)
    compiled = sparsec.compile(model)
    plain = sparsec.compile(model, pass_options={"moe-dispatch": {"zero_skip": "off"}})
    w2_bytes = 16 * 48 * hidden * 4
    assert _skip_details(compiled) == [(True, None if tokens == 1 else w2_bytes)]
    assert _skip_details(plain) == [(False, None)]
    counts = [tokens] if tokens else [1, 5, 40]
    for count in counts:
        x = rng.standard_normal((count, hidden)).astype(np.float32)
        same = np.repeat(x[:1], count, axis=0)
        nan = x.copy()
        nan[0, 3] = np.nan
        for feeds in ({"x": x}, {"x": same}, {"x": nan}):
            ours = assert_matches_ort(compiled, model, feeds)
            np.testing.assert_allclose(ours[0], plain.run(feeds)[0], rtol=1e-5, atol=1e-6)


def test_zero_skip_is_declined_without_exact_zeros_or_with_non_finite_w2(rng):
    """GELU never gives exact zeros; a W2 with an inf would turn a skipped 0 * inf (NaN) into 0.
    (Against the build without the skip, not ORT: ORT's dense-masked sum also multiplies the
    experts a token did not choose by 0, so it is NaN wherever one of those gives inf; see
    moe_forms.dense_masked.)"""
    gelu = dense_masked_moe(32, 48, 8, 2, tokens=4, activation="gelu", seed=8)
    assert _skip_details(sparsec.compile(gelu)) == [(False, None)]
    model = dense_masked_moe(32, 48, 8, 2, tokens=4, seed=8)
    w2 = next(i for i in model.graph.initializer if i.name == "l0_w2")
    weights = onnx.numpy_helper.to_array(w2).copy()
    weights[3, 5, 7] = np.inf
    w2.CopyFrom(onnx.numpy_helper.from_array(weights, w2.name))
    compiled = sparsec.compile(model)
    assert _skip_details(compiled) == [(False, None)]
    plain = sparsec.compile(model, pass_options={"moe-dispatch": {"zero_skip": "off"}})
    feeds = {"x": rng.standard_normal((4, 32)).astype(np.float32)}
    np.testing.assert_array_equal(compiled.run(feeds)[0], plain.run(feeds)[0])


@pytest.mark.parametrize("tokens", [1, 6])
def test_zero_skip_kernel_never_reads_the_rows_of_zero_activations(tokens, rng):
    """Shown to fire: the row-major W2 given to the kernel holds NaN in the rows whose activation
    is zero for every token (their b1 is very negative), so any read of one would reach the
    output; single-row experts must skip them, experts with more rows read the (finite) panels."""
    import tvm

    from sparsec.backends.tvm.kernels.experts import moe_kernel, pack_expert_weights

    experts, hidden, ffn, k = 6, 16, 32, 2
    x = rng.standard_normal((tokens, hidden)).astype(np.float32)
    logits = rng.standard_normal((tokens, experts)).astype(np.float32)
    w1 = rng.standard_normal((experts, hidden, ffn)).astype(np.float32)
    b1 = rng.standard_normal((experts, ffn)).astype(np.float32)
    dead = rng.random(ffn) < 0.5
    b1[:, dead] = -1e6  # these columns are zero after ReLU for every input here
    w2, b2 = rng.standard_normal((experts, ffn, hidden)).astype(np.float32), rng.standard_normal((experts, hidden)).astype(np.float32)
    poisoned = w2.copy()
    poisoned[:, dead, :] = np.nan
    kernel = moe_kernel(tokens, hidden, ffn, experts, k, "relu", softmax="before", normalize=True, skip_zeros=True)
    lib = tvm.compile(tvm.IRModule({"main": kernel.with_attr("global_symbol", "main")}), target="llvm")
    w1p, b1p, w2p = pack_expert_weights(w1, b1, w2)
    panels = [w2p] if tokens > 1 else []  # at one token the kernel takes only the rows
    y = tvm.runtime.tensor(np.zeros((tokens, hidden), np.float32))
    lib["main"](*(tvm.runtime.tensor(a) for a in (x, logits, w1p, b1p, *panels, poisoned, b2)), y)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    idx = np.argsort(-probs, axis=-1, kind="stable")[:, :k].astype(np.int32)
    gate = np.take_along_axis(probs, idx, -1)
    gate /= gate.sum(-1, keepdims=True)
    expected = _reference_moe(x, idx, gate, w1, b1, w2, b2, "relu", False, ffn)
    assert np.isfinite(y.numpy()).all()
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
