"""Sparsity analysis, the `sparse-weights` pass (BSR kernels) and its measured cost model."""

import json

import numpy as np
import onnx
import pytest

import sparsec
from conftest import assert_matches_ort, cuda_source
from sparsec.analysis.sparsity import analyze
from sparsec.cli import main
from sparsec.models.pruned import pruned_convnet, pruned_ffn
from sparsec.passes.pruning import magnitude_prune
from sparsec.passes.sparse_cost import SparseCostModel, density_bucket, row_bucket
from sparsec.passes.sparse_formats import BSR

ALWAYS = {"sparse-weights": {"policy": "always"}}


@pytest.fixture(autouse=True)
def private_cost_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSEC_CACHE_DIR", str(tmp_path / "cache"))


@pytest.mark.parametrize("block", [(32, 1), (16, 1), (8, 1), (4, 4), (1, 16), (1, 4)])
def test_block_structure_is_detected(block, rng):
    weight = magnitude_prune(rng.standard_normal((64, 96)).astype(np.float32), 0.75, block)
    info = analyze(weight)
    assert info.sparsity == pytest.approx(0.75, abs=0.01)
    assert block in info.blocks and info.structure.startswith("block ")
    r, c = info.blocks[0]
    assert r * c >= block[0] * block[1]  # the largest block that holds is reported first


def test_nm_and_unstructured_are_told_apart(rng):
    weight = rng.standard_normal((32, 64)).astype(np.float32)
    assert analyze(magnitude_prune(weight, 0.5, nm=(2, 4))).structure == "2:4"
    unstructured = magnitude_prune(weight, 0.6)
    info = analyze(unstructured)
    assert info.structure == "unstructured" and not info.blocks
    assert analyze(weight).structure == "dense"


@pytest.mark.parametrize("block", [(32, 1), (16, 1), (8, 1), (4, 4), (1, 1)])
@pytest.mark.parametrize("tokens", [1, 7, 32, 70])
def test_sparse_rewrite_is_exact_and_fires(block, tokens, rng):
    model = pruned_ffn(64, 128, layers=2, sparsity=0.8, block=block, tokens=tokens, residual=True)
    compiled = sparsec.compile(model, pass_options=ALWAYS)
    kind = "csr" if block == (1, 1) else "bsr"
    assert compiled.report["rewrites"] == {f"sparse-weights.{kind}": 4}
    rewritten = compiled.report["details"]["sparse-weights"]["rewritten"]
    assert {d["block"] for d in rewritten} == {f"{block[0]}x{block[1]}"}
    feeds = {"x": rng.standard_normal((tokens, 64)).astype(np.float32)}
    assert_matches_ort(compiled, model, feeds)


@pytest.mark.parametrize("block", [(16, 1), (8, 1), (4, 4)])
@pytest.mark.parametrize("tokens", [1, 7, 70])
def test_bsr_k_blocks_are_exact(block, tokens, rng, monkeypatch):
    """A layer whose row tiles' activations exceed L1 (K = 2112) runs the BSR kernel in K blocks,
    partial sums kept between them, every task's block rows passing over each slice of x (two
    cores: four tasks of 16 / 32 / 64 block rows' quarter)."""
    from sparsec.backends.tvm.kernels import sparse
    from sparsec.backends.tvm.kernels.sparse import bsr_block_pointers, bsr_k_blocks
    from test_compile import _scheduled_module

    monkeypatch.setattr(sparse, "_threads", lambda: 2)
    blocks = bsr_k_blocks(tokens, 2112, 256, block)
    assert blocks > 1
    model = pruned_ffn(256, 2112, layers=1, sparsity=0.8, block=block, tokens=tokens)
    kernels = [gv.name_hint for gv, _ in _scheduled_module(model, ALWAYS).functions_items()]
    assert any(name.startswith(f"bsr_matmul_{tokens}x2112x256") and f"_k{blocks}" in name for name in kernels), kernels
    compiled = sparsec.compile(model, pass_options=ALWAYS)
    assert compiled.report["rewrites"] == {"sparse-weights.bsr": 2}
    assert_matches_ort(compiled, model, {"x": rng.standard_normal((tokens, 256)).astype(np.float32)})
    # each block row's non-zero range splits at the K blocks' first columns
    indices, indptr = np.array([0, 3, 5, 9, 2, 8]), np.array([0, 4, 6])
    assert bsr_block_pointers(indices, indptr, 10, (1, 1), 2).tolist() == [0, 2, 4, 4, 5, 6]
    # blocks of 4 inputs: block indices 0, 2, 3 start at columns 0, 8, 12 (K blocks of 8 columns)
    assert bsr_block_pointers(np.array([0, 2, 3]), np.array([0, 3]), 16, (1, 4), 2).tolist() == [0, 1, 3]


def test_batched_rows_and_the_ort_decomposition(rng):
    # [batch, sequence, hidden] activations; the rewritten graph also runs on ORT (decomposed).
    model = pruned_ffn(48, 96, sparsity=0.9, block=(16, 1), tokens=6)
    graph = sparsec.load(model)
    graph.inputs[0].type = sparsec.ir.types.TensorType("float32", (2, 3, 48))
    graph.outputs[0].type = sparsec.ir.types.TensorType("float32", (2, 3, 48))
    model3d = sparsec.to_onnx(graph)
    feeds = {"x": rng.standard_normal((2, 3, 48)).astype(np.float32)}
    for backend in ("tvm", "ort"):
        compiled = sparsec.compile(model3d, pass_options=ALWAYS, backend=backend)
        assert compiled.report["rewrites"] == {"sparse-weights.bsr": 2}
        assert_matches_ort(compiled, model3d, feeds)


def test_a_dense_model_compiles_to_exactly_what_it_was():
    model = pruned_ffn(32, 64, sparsity=0.0, tokens=4)
    graph = sparsec.load(model)
    sparsec.prepare(graph)
    before = str(graph)
    from sparsec.passmanager import PassContext, PassManager, resolve_passes

    report = PassManager(resolve_passes(["sparse-weights"])).run(graph, PassContext())
    assert report["rewrites"] == {} and str(graph) == before


def test_declined_candidates_say_why(rng):
    barely = pruned_ffn(32, 64, sparsity=0.2, tokens=4)
    compiled = sparsec.compile(barely, pass_options=ALWAYS)
    assert compiled.report["rewrites"] == {}
    assert any("too dense" in note for note in compiled.report["notes"]["sparse-weights"])
    symbolic = pruned_ffn(32, 64, sparsity=0.9)  # unstructured, symbolic token count: CSR needs static rows
    compiled = sparsec.compile(symbolic, pass_options=ALWAYS)
    assert compiled.report["rewrites"] == {}
    assert any("static row count" in note for note in compiled.report["notes"]["sparse-weights"])


def test_bsr_takes_a_symbolic_row_count(rng):
    model = pruned_ffn(32, 64, layers=2, sparsity=0.9, block=(16, 1))  # "tokens" dim left symbolic
    compiled = sparsec.compile(model, pass_options=ALWAYS)
    assert compiled.report["rewrites"] == {"sparse-weights.bsr": 4}
    for tokens in (1, 9, 40):
        assert_matches_ort(compiled, model, {"x": rng.standard_normal((tokens, 32)).astype(np.float32)})


def _seed_cost(rows, k, n, block, density, dense_ms, sparse_ms, threads=2):
    model = SparseCostModel(threads)
    key = f"{model.host}|m{row_bucket(rows)}|k{k}|n{n}|b{block[0]}x{block[1]}|d{density}"
    model.cache[key] = {"dense_ms": dense_ms, "sparse_ms": sparse_ms, "repeat": 1}
    model._save()


def test_cost_model_keeps_dense_when_sparse_would_be_slower(rng):
    # Seeded measurements: at the 50% density bucket the sparse kernel costs 0.75x dense (1.33x:
    # rewritten); at the 70% bucket 1.2x dense (0.83x: kept dense).
    for k, n in ((64, 128), (128, 64)):
        _seed_cost(8, k, n, (16, 1), 0.5, 1.0, 0.75)
        _seed_cost(8, k, n, (16, 1), 0.7, 1.0, 1.2)
    half = pruned_ffn(64, 128, sparsity=0.5, block=(16, 1), tokens=8)
    compiled = sparsec.compile(half, num_threads=2)
    assert compiled.report["rewrites"] == {"sparse-weights.bsr": 2}
    assert {d["predicted_speedup"] for d in compiled.report["details"]["sparse-weights"]["rewritten"]} == {1.33}
    mostly_dense = pruned_ffn(64, 128, sparsity=0.3, block=(16, 1), tokens=8)
    compiled = sparsec.compile(mostly_dense, num_threads=2)
    assert compiled.report["rewrites"] == {}
    assert all("kept dense" in note for note in compiled.report["notes"]["sparse-weights"])
    assert_matches_ort(compiled, mostly_dense, {"x": rng.standard_normal((8, 64)).astype(np.float32)})


def test_cost_model_measures_once_and_caches(tmp_path):
    model = SparseCostModel(1)
    dense, sparse = model.times(8, 32, 64, BSR((16, 1)), 0.5)
    assert dense > 0 and sparse > 0
    cached = json.loads(model.path.read_text())
    assert len(cached) == 1 and SparseCostModel(1).times(8, 32, 64, BSR((16, 1)), 0.5) == (dense, sparse)


def test_density_buckets():
    assert [density_bucket(d) for d in (0.01, 0.1, 0.11, 0.5, 0.69, 0.95)] == [0.02, 0.1, 0.2, 0.5, 0.7, 1.0]


def test_inspect_shows_the_structure(tmp_path, capsys):
    path = tmp_path / "pruned.onnx"
    onnx.save(pruned_ffn(32, 64, sparsity=0.75, block=(16, 1), tokens=4), path)
    with pytest.raises(SystemExit) as done:
        main(["inspect", str(path), "--json"])
    assert done.value.code == 0
    info = json.loads(capsys.readouterr().out)
    weights = {w["name"]: w for w in info["weights"]}
    assert weights["l0_w1"]["structure"] == "block 16x1" and "16x1" in weights["l0_w1"]["blocks"]


def test_cuda_gets_cuda_sparse_kernels_when_asked_and_a_reason_when_not():
    """No GPU here: the CUDA build is checked by what it contains. The cost model times the host
    CPU, so by default a CUDA build stays dense and says why; policy=always uses the CUDA kernel."""
    model = pruned_ffn(64, 128, sparsity=0.9, block=(32, 1), tokens=8)
    default = sparsec.compile(model, target="cuda", arch="sm_80")
    assert default.report["rewrites"] == {}
    assert all("not cuda" in note for note in default.report["notes"]["sparse-weights"])
    forced = sparsec.compile(model, target="cuda", arch="sm_80", pass_options=ALWAYS)
    assert forced.report["rewrites"] == {"sparse-weights.bsr": 2}
    source = cuda_source(forced)
    assert source.count("bsr_matmul_cuda_8x64x128_32x1_relu_kernel(") == 2  # declared and defined
    assert "bsr_matmul_cuda_8x128x64_32x1_kernel(" in source and "blockIdx.x" in source


@pytest.mark.parametrize("block, rows, relu", [((32, 1), 7, True), ((16, 1), 40, False), ((1, 1), 3, True), ((4, 4), 65, False)])
def test_cuda_bsr_kernel_arithmetic_on_the_cpu(block, rows, relu, rng):
    """The CUDA kernel's index arithmetic and epilogue, with its thread loops made serial and
    built for the CPU, against numpy: what can be checked of it without a GPU."""
    import tvm

    from sparsec.backends.tvm.kernels.sparse import bsr_kernel_cuda
    from sparsec.ops.sparse import to_bsr

    k, n = 64, 128
    weight = rng.standard_normal((n, k)).astype(np.float32)
    weight[(rng.random((n // block[0], k // block[1])) < 0.8).repeat(block[0], 0).repeat(block[1], 1)] = 0
    data, indices, indptr = to_bsr(weight, block)
    kernel = bsr_kernel_cuda(rows, k, n, block, len(indices), relu, bind=False).with_attr("global_symbol", "main")
    lib = tvm.compile(tvm.IRModule({"main": kernel}), target="llvm")
    x, bias = rng.standard_normal((rows, k)).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    y = tvm.runtime.tensor(np.zeros((rows, n), np.float32))
    lib["main"](*(tvm.runtime.tensor(a) for a in (x, data, indices, indptr, bias)), y)
    expected = x @ weight.T + bias
    np.testing.assert_allclose(y.numpy(), np.maximum(expected, 0) if relu else expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n, m", [(2, 4), (4, 8)])
def test_nm_compression_round_trips(n, m, rng):
    from sparsec.ops.sparse import from_nm, to_nm

    weight = magnitude_prune(rng.standard_normal((12, 40)).astype(np.float32), 0.0, nm=(n, m))
    weight[0, :m] = 0  # a group with no kept weight
    weight[1, 1:m] = 0  # one with fewer than N
    values, positions = to_nm(weight, n, m)
    assert values.shape == positions.shape == (12, 40 // m * n) and positions.dtype == np.uint8
    assert np.array_equal(from_nm(values, positions, n, m), weight)


NM_SHAPES = [(64, 128, 1), (64, 128, 7), (64, 128, 32), (24, 40, "tokens")]


@pytest.mark.parametrize("n, m, hidden, ffn, tokens", [(2, 4, *shape) for shape in NM_SHAPES + [(20, 52, 5)]]
                         + [(4, 8, *shape) for shape in NM_SHAPES + [(40, 88, 5)]])
def test_nm_rewrite_is_exact_and_fires(n, m, hidden, ffn, tokens, rng):
    """N:M weights run compressed. 20 / 52 / 40 / 88 inputs end in a window shorter than the
    vector and outputs that are not a multiple of it pad the last panel; a symbolic row count
    runs any number of rows."""
    model = pruned_ffn(hidden, ffn, layers=2, nm=(n, m), tokens=tokens, residual=True)
    compiled = sparsec.compile(model, pass_options=ALWAYS)
    assert compiled.report["rewrites"] == {"sparse-weights.nm": 4}
    assert {d["block"] for d in compiled.report["details"]["sparse-weights"]["rewritten"]} == {f"{n}:{m}"}
    for rows in ((1, 9, 40) if isinstance(tokens, str) else (tokens,)):
        assert_matches_ort(compiled, model, {"x": rng.standard_normal((rows, hidden)).astype(np.float32)})


@pytest.mark.parametrize("options", [{"target": "c"}, {"mcpu": "x86-64"}, {"backend": "ort"}])
def test_nm_without_a_permute_instruction(options, rng):
    """The c target and a CPU without AVX2 (mcpu=x86-64: the permute intrinsic would abort LLVM)
    gather lane by lane; ORT runs the op decomposed to its dense MatMul."""
    import platform

    if "mcpu" in options and platform.machine() not in ("x86_64", "AMD64"):
        options = {"mcpu": "generic"}
    model = pruned_ffn(32, 64, nm=(2, 4), tokens=5)
    compiled = sparsec.compile(model, pass_options=ALWAYS, **options)
    assert compiled.report["rewrites"] == {"sparse-weights.nm": 2}
    assert_matches_ort(compiled, model, {"x": rng.standard_normal((5, 32)).astype(np.float32)})


def test_nm_kernel_uses_the_permute_where_the_target_has_it():
    from sparsec.backends.tvm.kernels.nm_sparse import target_permute
    from sparsec.backends.tvm.targets import _llvm_target

    with _llvm_target({"mcpu": "haswell"}):
        assert target_permute(8) == "llvm.x86.avx2.permps"
    with _llvm_target({"mcpu": "x86-64"}):
        assert target_permute(8) is None
    with _llvm_target({"mcpu": "skylake-avx512"}):
        assert target_permute(16) == "llvm.x86.avx512.permvar.sf.512"


def test_nm_on_cuda_compiles_its_kernel():
    model = pruned_ffn(64, 128, nm=(2, 4), tokens=8)
    compiled = sparsec.compile(model, target="cuda", arch="sm_80", pass_options=ALWAYS)
    assert compiled.report["rewrites"] == {"sparse-weights.nm": 2}
    source = cuda_source(compiled)
    assert "nm24_matmul_cuda_8x64x128_relu_kernel(" in source and "nm24_matmul_cuda_8x128x64_kernel(" in source


@pytest.mark.parametrize("n, m, rows, relu", [(2, 4, 7, True), (4, 8, 40, False), (2, 4, 1, False)])
def test_cuda_nm_kernel_arithmetic_on_the_cpu(n, m, rows, relu, rng):
    import tvm

    from sparsec.backends.tvm.kernels.nm_sparse import nm_kernel_cuda
    from sparsec.ops.sparse import to_nm

    k, out = 64, 72
    weight = magnitude_prune(rng.standard_normal((out, k)).astype(np.float32), 0.0, nm=(n, m))
    values, positions = (np.ascontiguousarray(a.T) for a in to_nm(weight, n, m))
    kernel = nm_kernel_cuda(rows, k, out, n, m, relu, bind=False).with_attr("global_symbol", "main")
    lib = tvm.compile(tvm.IRModule({"main": kernel}), target="llvm")
    x, bias = rng.standard_normal((rows, k)).astype(np.float32), rng.standard_normal(out).astype(np.float32)
    y = tvm.runtime.tensor(np.zeros((rows, out), np.float32))
    lib["main"](*(tvm.runtime.tensor(a) for a in (x, values, positions, bias)), y)
    expected = x @ weight.T + bias
    np.testing.assert_allclose(y.numpy(), np.maximum(expected, 0) if relu else expected, rtol=1e-5, atol=1e-5)


def test_inspect_names_the_nm_format(tmp_path, capsys):
    path = tmp_path / "nm.onnx"
    onnx.save(pruned_ffn(32, 64, nm=(2, 4), tokens=4), path)
    with pytest.raises(SystemExit) as done:
        main(["inspect", str(path), "--json"])
    assert done.value.code == 0
    info = json.loads(capsys.readouterr().out)
    assert {w["structure"] for w in info["weights"] if w["name"].endswith(("w1", "w2"))} == {"2:4"}
    assert len(info["pass_candidates"]["sparse-weights"]) == 2
    assert all(c.endswith("50% sparse, 2:4 (N:M)") for c in info["pass_candidates"]["sparse-weights"])


def gemm_mlp(rng, rows, trans_b, beta, c_shape, block=(16, 1), nm=None):
    """x -> Gemm -> Relu -> Gemm, as torch exports nn.Linear on 2-D inputs (transB=1), pruned."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, current = [], [], "x"
    for i, (fan_in, fan_out) in enumerate(((48, 96), (96, 48))):
        out_in = magnitude_prune(rng.standard_normal((fan_out, fan_in)).astype(np.float32), 0.8, block, nm)
        c = rng.standard_normal(c_shape(fan_out)).astype(np.float32)
        inits += [numpy_helper.from_array(out_in if trans_b else np.ascontiguousarray(out_in.T), f"w{i}"),
                  numpy_helper.from_array(c, f"c{i}")]
        nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"c{i}"], [f"g{i}"], transB=trans_b, beta=beta))
        current = f"g{i}"
        if i == 0:
            nodes.append(helper.make_node("Relu", [current], ["h"]))
            current = "h"
    graph = helper.make_graph(nodes, "gemm_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, 48])],
                              [helper.make_tensor_value_info(current, TensorProto.FLOAT, [rows, 48])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("trans_b, beta, c_shape, block, nm, kind", [
    (1, 1.0, lambda n: (n,), (16, 1), None, "bsr"),
    (0, 0.5, lambda n: (1, n), (8, 1), None, "bsr"),
    (1, 1.0, lambda n: (n,), (1, 1), None, "csr"),
    (1, 2.0, lambda n: (n,), (1, 1), (2, 4), "nm")])
def test_gemm_weights_are_rewritten_too(trans_b, beta, c_shape, block, nm, kind, rng):
    """torch's nn.Linear on 2-D inputs exports as Gemm(x, W, b, transB=1): its B is the weight and
    its C (times beta) the bias, fused with the ReLU after it."""
    model = gemm_mlp(rng, 6, trans_b, beta, c_shape, block, nm)
    compiled = sparsec.compile(model, pass_options=ALWAYS)
    assert compiled.report["rewrites"] == {f"sparse-weights.{kind}": 2}
    assert_matches_ort(compiled, model, {"x": rng.standard_normal((6, 48)).astype(np.float32)})


def test_gemm_c_scalar_and_beta_zero(rng):
    """A one-element C is one bias for every output; with beta 0, C is not read at all (ORT
    ignores it, infinities included), so the rewrite must not fold 0 * inf into NaN."""
    scalar = gemm_mlp(rng, 4, 1, 1.0, lambda n: (1,))
    compiled = sparsec.compile(scalar, pass_options=ALWAYS)
    assert compiled.report["rewrites"] == {"sparse-weights.bsr": 2}
    assert_matches_ort(compiled, scalar, {"x": rng.standard_normal((4, 48)).astype(np.float32)})
    ignored = sparsec.load(gemm_mlp(rng, 4, 1, 0.0, lambda n: (n,)))
    for name in ("c0", "c1"):
        ignored.initializers[name].const = np.full_like(ignored.initializers[name].const, np.inf)
    model = sparsec.to_onnx(ignored)
    compiled = sparsec.compile(model, pass_options=ALWAYS)
    assert compiled.report["rewrites"] == {"sparse-weights.bsr": 2}
    out = compiled.run({"x": rng.standard_normal((4, 48)).astype(np.float32)})[0]
    assert np.isfinite(out).all()
    assert_matches_ort(compiled, model, {"x": rng.standard_normal((4, 48)).astype(np.float32)})


def test_a_gemm_that_is_not_x_at_w_plus_a_row_says_why(rng):
    model = gemm_mlp(rng, 6, 1, 1.0, lambda n: (6, n))  # C a full [rows, N] matrix, not a bias row
    compiled = sparsec.compile(model, pass_options=ALWAYS)
    assert compiled.report["rewrites"] == {}
    assert all("C is not a constant row of biases" in note for note in compiled.report["notes"]["sparse-weights"])
    assert_matches_ort(compiled, model, {"x": rng.standard_normal((6, 48)).astype(np.float32)})


@pytest.mark.parametrize("batch, image, sparsity, block", [(1, (8, 8), 0.8, (1, 1)), (2, (7, 11), 0.9, (16, 1)),
                                                          (1, (20, 20), 0.7, (1, 1))])
def test_pointwise_convolutions_run_sparse_over_their_pixels(batch, image, sparsity, block, rng):
    """1x1 convolutions (MobileNet's pointwise layers) run the CSR kernel with the pixels on the
    vector axis, reading NCHW as it is: 77 and 400 pixels end in a partial vector tile; the
    depthwise 3x3 between them stays dense; the ReLU after the expand layer is fused."""
    model = pruned_convnet(32, 96, layers=2, image=image, batch=batch, sparsity=sparsity, block=block)
    compiled = sparsec.compile(model, pass_options=ALWAYS)
    assert compiled.report["rewrites"] == {"sparse-weights.csr": 4}
    rewritten = compiled.report["details"]["sparse-weights"]["rewritten"]
    assert {(d["op"], d["block"]) for d in rewritten} == {("Conv", "conv1x1")}
    assert_matches_ort(compiled, model, {"x": rng.standard_normal((batch, 32, *image)).astype(np.float32)})


def test_convolutions_without_a_sparse_kernel_say_why(rng):
    from onnx import TensorProto, helper, numpy_helper

    weight = magnitude_prune(rng.standard_normal((16, 8 * 9)).astype(np.float32), 0.9).reshape(16, 8, 3, 3)
    pointwise = magnitude_prune(rng.standard_normal((16, 8)).astype(np.float32), 0.9).reshape(16, 8, 1, 1)
    nodes = [helper.make_node("Conv", ["x", "w3"], ["a"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["x", "w1"], ["b"], kernel_shape=[1, 1], strides=[2, 2])]
    graph = helper.make_graph(nodes, "convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6])],
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 16, 6, 6]),
                               helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 16, 3, 3])],
                              [numpy_helper.from_array(weight, "w3"), numpy_helper.from_array(pointwise, "w1")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    compiled = sparsec.compile(model, pass_options=ALWAYS)
    assert compiled.report["rewrites"] == {}
    notes = " ".join(compiled.report["notes"]["sparse-weights"])
    assert "only 1x1 convolutions have a sparse kernel" in notes and "strides, padding" in notes
    assert_matches_ort(compiled, model, {"x": rng.standard_normal((1, 8, 6, 6)).astype(np.float32)})
    on_cuda = sparsec.compile(pruned_convnet(16, 32, image=(4, 4)), target="cuda", arch="sm_80", pass_options=ALWAYS)
    assert on_cuda.report["rewrites"] == {}
    assert all("no CSR kernel for 1x1 convolutions for cuda" in n for n in on_cuda.report["notes"]["sparse-weights"])


def test_cost_model_times_the_dense_convolution_against_the_kernel():
    from sparsec.passes.sparse_formats import ChannelsCSR

    model = SparseCostModel(1)
    dense, sparse = model.times(128, 64, 96, ChannelsCSR((1, 1)), 0.1)
    assert dense > 0 and sparse > 0
    assert any("|bconv1x1|" in key for key in json.loads(model.path.read_text()))
