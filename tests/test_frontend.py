import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import sparsec
from sparsec import ModelLoadError
from sparsec.backends import ort
from sparsec.models import mlp


def roundtrip_equal(model, feeds):
    graph = sparsec.load(model)
    sparsec.verify(graph)
    exported = sparsec.to_onnx(graph)
    onnx.checker.check_model(exported)
    for a, b in zip(ort.run(model, feeds), ort.run(exported, feeds)):
        np.testing.assert_array_equal(a, b)
    return graph


def if_model():
    then = helper.make_graph([helper.make_node("Add", ["x", "one"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2])],
                             initializer=[numpy_helper.from_array(np.ones(2, np.float32), "one")])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2])])
    nodes = [
        helper.make_node("Constant", [], ["zero"], value_float=0.0),
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["c"]),
        helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other),
    ]
    graph = helper.make_graph(nodes, "if", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_mlp_roundtrip(rng):
    roundtrip_equal(mlp((8, 16, 4)), {"x": rng.standard_normal((3, 8)).astype(np.float32)})


def test_subgraph_and_constant_nodes_roundtrip():
    graph = None
    for x in (np.array([1.0, 2.0], np.float32), np.array([-3.0, 1.0], np.float32)):
        graph = roundtrip_equal(if_model(), {"x": x})
    if_node = next(n for n in graph.walk() if n.op_type == "If")
    assert len(list(if_node.subgraphs())) == 2
    assert "zero" in graph.initializers  # the Constant node became a constant


def test_custom_domain_is_kept(rng):
    nodes = [helper.make_node("FusedMatMul", ["a", "b"], ["y"], domain="com.microsoft", alpha=2.0, transB=1)]
    graph = helper.make_graph(nodes, "ms", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3]),
                                            helper.make_tensor_value_info("b", TensorProto.FLOAT, [4, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    g = roundtrip_equal(model, {"a": rng.standard_normal((2, 3)).astype(np.float32),
                                "b": rng.standard_normal((4, 3)).astype(np.float32)})
    assert g.nodes[0].domain == "com.microsoft" and g.opset("com.microsoft") == 1


def test_external_data_loads_and_roundtrips(tmp_path, rng):
    model = mlp((64, 128, 32))
    path = tmp_path / "m.onnx"
    onnx.save_model(model, path, save_as_external_data=True, location="m.data", size_threshold=0)
    graph = sparsec.load(path)
    assert isinstance(graph.initializers["w0"].const, np.memmap)
    x = rng.standard_normal((2, 64)).astype(np.float32)
    np.testing.assert_array_equal(ort.run(str(path), {"x": x})[0], ort.run(sparsec.to_onnx(graph), {"x": x})[0])


def test_external_data_outside_the_folder_is_refused(tmp_path):
    model = mlp((8, 8))
    inner = tmp_path / "inner"
    inner.mkdir()
    onnx.save_model(model, inner / "m.onnx", save_as_external_data=True, location="m.data", size_threshold=0)
    proto = onnx.load(inner / "m.onnx", load_external_data=False)
    os.rename(inner / "m.data", tmp_path / "secret.data")
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../secret.data"
    onnx.save_model(proto, inner / "m.onnx")
    with pytest.raises(ModelLoadError, match="outside the model's folder"):
        sparsec.load(inner / "m.onnx")


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (b"this is not a protobuf at all \xff\xfe", "not a valid ONNX model"),
])
def test_malformed_files(tmp_path, content, message):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=message):
        sparsec.load(path)


def test_truncated_file(tmp_path):
    data = mlp((32, 32)).SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError):
        sparsec.load(path)


def test_an_element_type_onnx_does_not_define_is_a_load_error():
    # found by mutating the ONNX node suite: the checker lets elem_type 99 through
    model = mlp((4, 4))
    model.graph.input[0].type.tensor_type.elem_type = 99
    with pytest.raises(ModelLoadError, match="value 'x': unknown ONNX element type 99"):
        sparsec.load(model)


def test_text_that_is_not_utf8_is_a_load_error(tmp_path):
    # found by flipping bytes (tests/mutation_fuzz.py): protobuf hands such a field over as bytes,
    # and the export inside type inference raised UnicodeDecodeError
    model = mlp((4, 4))
    model.producer_name = "backend-test"
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString().replace(b"backend-test", b"backend-t\xfdst"))
    with pytest.raises(ModelLoadError, match="model.producer_name is not valid UTF-8"):
        sparsec.compile(path)


def test_missing_file():
    with pytest.raises(ModelLoadError, match="not found"):
        sparsec.load("/nonexistent/model.onnx")


def test_old_opset_is_upgraded(rng):
    model = mlp((4, 4), opset=11)
    graph = sparsec.load(model)
    assert graph.opset("") == 13
    x = rng.standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_allclose(ort.run(model, {"x": x})[0], ort.run(sparsec.to_onnx(graph), {"x": x})[0], rtol=1e-6)


def test_outputs_without_a_shape_field_load_as_onnx_runtime_loads_them(rng):
    from onnx import TensorProto, helper

    from conftest import assert_matches_ort

    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    compiled = sparsec.compile(model)
    assert compiled.outputs[0].shape == [2, 3]  # inferred
    assert_matches_ort(compiled, model, {"x": rng.standard_normal((2, 3)).astype(np.float32)})
