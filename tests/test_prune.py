"""The `prune` pass: approximate, opt-in, and always reporting the error it causes."""

import numpy as np
import onnx
import pytest

import sparsec
from sparsec.analysis.sparsity import analyze
from sparsec.cli import main
from sparsec.models import mlp
from sparsec.passmanager import PassContext, PassManager, resolve_passes


@pytest.fixture(autouse=True)
def private_cost_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSEC_CACHE_DIR", str(tmp_path / "cache"))


def pruned_graph(model, **options):
    graph = sparsec.load(model)
    sparsec.prepare(graph)
    report = PassManager(resolve_passes(["prune"])).run(graph, PassContext(pass_options={"prune": options}))
    weights = {v.name: v.const for v in graph.initializers.values()}
    return graph, report, weights


@pytest.mark.parametrize("block, structure", [("1x1", "unstructured"), ("16x1", "block 16x1"), ("4x4", "block 4x4"),
                                              ("2:4", "2:4")])
def test_prune_reaches_the_target_in_the_requested_structure(block, structure):
    model = mlp((128, 256, 64), batch=4)
    sparsity = 0.5 if ":" in block else 0.8
    graph, report, weights = pruned_graph(model, sparsity=sparsity, block=block, min_size=1)
    assert report["rewrites"] == {"prune": 2}
    for name in ("w0", "w1"):
        info = analyze(weights[name].T)  # MatMul B[K, N] -> [out, in]
        assert info.sparsity == pytest.approx(sparsity, abs=0.01)
        assert info.structure == structure
    error = report["details"]["prune"]["error"]
    assert error["max_abs"] > 0 and 0 < error["relative"] and error["inputs"] == "4 generated batches"


def test_global_scope_spreads_sparsity_by_magnitude(rng):
    model = mlp((64, 256, 64), batch=2)
    # Make the second weight tiny: a global threshold must prune it harder than the first.
    graph = sparsec.load(model)
    graph.initializers["w1"].const = graph.initializers["w1"].const * 1e-3
    graph, report, weights = pruned_graph(sparsec.to_onnx(graph), sparsity=0.5, scope="global", min_size=1)
    by_name = {w["weight"]: w["sparsity"] for w in report["details"]["prune"]["weights"]}
    assert by_name["w1"] > 0.9 and by_name["w0"] < 0.2
    total = sum(np.count_nonzero(weights[n] == 0) for n in ("w0", "w1")) / sum(weights[n].size for n in ("w0", "w1"))
    assert total == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("block, kind, linear", [("16x1", "bsr", "matmul"), ("2:4", "nm", "matmul"), ("16x1", "bsr", "gemm")])
def test_prune_then_sparse_weights_in_one_compile(block, kind, linear, rng):
    model = mlp((64, 256, 64), batch=8, linear=linear)
    compiled = sparsec.compile(model, passes=["prune", "sparse-weights"],
                               pass_options={"prune": {"sparsity": 0.9, "block": block, "min_size": 1},
                                             "sparse-weights": {"policy": "always"}})
    assert compiled.report["rewrites"] == {"prune": 2, f"sparse-weights.{kind}": 2}
    x = rng.standard_normal((8, 64)).astype(np.float32)
    ours = compiled.run({"x": x})[0]
    dense = sparsec.backends.ort.run(model, {"x": x})[0]
    assert np.abs(ours - dense).max() > 1e-3  # approximate: it must not pretend otherwise
    error = compiled.report["details"]["prune"]["error"]
    assert error["max_abs"] > 1e-3  # and the report says so


def test_prune_is_never_in_the_default_pipeline():
    assert "prune" not in [p.name for p in resolve_passes("default")]


def test_cli_prints_the_error(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    onnx.save(mlp((64, 128, 64), batch=4), path)
    with pytest.raises(SystemExit) as done:
        main(["compile", str(path), "-o", str(tmp_path / "out"), "--passes", "prune,sparse-weights",
              "-O", "prune.sparsity=0.75", "-O", "prune.block=16x1", "-O", "prune.min_size=1"])
    assert done.value.code == 0
    assert "prune changed the outputs: max abs error" in capsys.readouterr().out


@pytest.mark.parametrize("option, message", [("prune.sparsity=1.5", "sparsity must be in"),
                                             ("prune.block=16by1", "block must look like"),
                                             ("prune.scope=everything", "scope must be")])
def test_bad_prune_options_are_one_line_errors(option, message, tmp_path, capsys):
    path = tmp_path / "m.onnx"
    onnx.save(mlp((64, 128, 64), batch=4), path)
    with pytest.raises(SystemExit) as done:
        main(["compile", str(path), "-o", str(tmp_path / "out"), "--passes", "prune", "-O", option])
    assert done.value.code == 2 and message in capsys.readouterr().err


def test_prune_takes_convolutions_and_leaves_depthwise_ones(rng):
    from sparsec.models.pruned import pruned_convnet

    model = pruned_convnet(32, 64, layers=1, image=(6, 6), sparsity=0.0)
    compiled = sparsec.compile(model, passes=["prune", "sparse-weights"],
                               pass_options={"prune": {"sparsity": 0.8, "min_size": 1}, "sparse-weights": {"policy": "always"}})
    assert compiled.report["rewrites"] == {"prune": 2, "sparse-weights.csr": 2}
    pruned = {w["weight"]: w["sparsity"] for w in compiled.report["details"]["prune"]["weights"]}
    assert set(pruned) == {"l0_expand", "l0_project"} and all(v == pytest.approx(0.8, abs=0.01) for v in pruned.values())
    assert any("grouped convolution has no sparse kernel" in note for note in compiled.report["notes"]["prune"])
    x = rng.standard_normal((1, 32, 6, 6)).astype(np.float32)
    assert np.abs(compiled.run({"x": x})[0] - sparsec.backends.ort.run(model, {"x": x})[0]).max() > 1e-3  # approximate


def test_prune_leaves_spatial_convolutions_dense(rng):
    """Only 1x1 convolutions have a sparse kernel: pruning a 3x3 one would cost accuracy for nothing."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(rng.standard_normal((16, 8, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])], "c",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 6, 6])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    _, report, weights = pruned_graph(model, sparsity=0.8, min_size=1)
    assert report["rewrites"] == {} and np.count_nonzero(weights["w"]) == weights["w"].size
    assert any("spatial convolution has no sparse kernel" in note for note in report["notes"]["prune"])
