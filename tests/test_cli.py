import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from sparsec.cli import main
from sparsec.models import mlp


def cli(capsys, *args):
    with pytest.raises(SystemExit) as done:
        main(list(args))
    captured = capsys.readouterr()
    return done.value.code or 0, captured.out, captured.err


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save(mlp((16, 32, 8)), path)
    return path


def test_compile_then_run(capsys, tmp_path, model_file, rng):
    code, out, _ = cli(capsys, "compile", str(model_file), "-o", str(tmp_path / "c"))
    assert code == 0 and "compiled" in out
    x = rng.standard_normal((3, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code, out, _ = cli(capsys, "run", str(tmp_path / "c"), "--input", f"x={tmp_path / 'x.npy'}", "-o", str(tmp_path / "res"))
    assert code == 0
    from sparsec.backends import ort

    np.testing.assert_allclose(np.load(tmp_path / "res" / "y.npy"), ort.run(str(model_file), {"x": x})[0], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("make_args, message", [
    (lambda t, m: ["compile", str(t / "missing.onnx"), "-o", str(t / "o")], "not found"),
    (lambda t, m: ["run", str(m), "--input", f"nope={t / 'x.npy'}", "-o", str(t / "o")], "unknown input 'nope'"),
    (lambda t, m: ["run", str(m), "--input", f"x={t / 'x64.npy'}", "-o", str(t / "o")], "dtype float64, expected float32"),
    (lambda t, m: ["run", str(m), "--input", f"x={t / 'wide.npy'}", "-o", str(t / "o")], "has shape [3, 17]"),
    (lambda t, m: ["run", str(m), "--input", f"x={t / 'absent.npy'}", "-o", str(t / "o")], "not found"),
    (lambda t, m: ["compile", str(m), "-o", str(t / "o"), "--target", "tpu9000"], "unknown target 'tpu9000'"),
    (lambda t, m: ["compile", str(m), "-o", str(t / "o"), "--passes", "nope"], "unknown pass 'nope'"),
    (lambda t, m: ["compile", str(t / "custom.onnx"), "-o", str(t / "o")], "Frobnicate (domain acme"),
    (lambda t, m: ["inspect", str(t / "garbage.onnx")], "not a valid ONNX model"),
])
def test_user_mistakes_are_one_line_errors(capsys, tmp_path, model_file, make_args, message):
    np.save(tmp_path / "x.npy", np.zeros((3, 16), np.float32))
    np.save(tmp_path / "x64.npy", np.zeros((3, 16), np.float64))
    np.save(tmp_path / "wide.npy", np.zeros((3, 17), np.float32))
    (tmp_path / "garbage.onnx").write_bytes(b"\x00garbage\xff" * 10)
    node = helper.make_node("Frobnicate", ["x"], ["y"], domain="acme")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("acme", 1)]),
              tmp_path / "custom.onnx")
    code, out, err = cli(capsys, *make_args(tmp_path, model_file))
    assert code == 2
    assert "Traceback" not in err and message in " ".join(err.split())
    assert err.strip().startswith("error:")


def test_inspect_reports_sparsity(capsys, tmp_path):
    model = mlp((16, 32, 8))
    w = onnx.numpy_helper.to_array(model.graph.initializer[0]).copy()
    w[:, ::2] = 0
    model.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(w, "w0"))
    onnx.save(model, tmp_path / "m.onnx")
    code, out, _ = cli(capsys, "inspect", str(tmp_path / "m.onnx"), "--json")
    info = json.loads(out)
    assert code == 0 and info["ops"]["MatMul"] == 2
    assert {w["name"]: w["sparsity"] for w in info["weights"]}["w0"] == pytest.approx(0.5)
    code, out, _ = cli(capsys, "inspect", str(tmp_path / "m.onnx"))
    assert code == 0 and "50.0%" in out


def test_targets_and_passes_and_example(capsys):
    code, out, _ = cli(capsys, "targets")
    assert code == 0 and all(t in out for t in ("llvm", "cuda", "opencl"))
    code, out, _ = cli(capsys, "passes")
    assert code == 0 and "sparse-weights" in out
    code, out, _ = cli(capsys, "example", "--batch", "3")
    assert code == 0 and "outputs match" in out
