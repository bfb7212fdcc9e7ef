import numpy as np
import pytest

import sparsec
from sparsec.ir import Graph, TensorType, VerificationError, to_networkx, topological_order, verify
from sparsec.models import mlp


def small_graph():
    g = Graph("g")
    x = g.add_input("x", TensorType("float32", ("n", 4)))
    w = g.add_constant(np.ones((4, 3), np.float32), "w")
    mm = g.add_node("MatMul", [x, w], name="mm")
    relu = g.add_node("Relu", [mm.outputs[0]], name="relu")
    g.outputs.append(relu.outputs[0])
    return g, x, w, mm, relu


def test_uses_are_tracked_and_replace_all_uses_keeps_output_names():
    g, x, w, mm, relu = small_graph()
    assert mm.outputs[0].consumers() == [relu]
    out_name = relu.outputs[0].name
    tanh = g.add_node("Tanh", [mm.outputs[0]], name="tanh")
    relu.outputs[0].replace_all_uses_with(tanh.outputs[0])
    assert g.outputs[0] is tanh.outputs[0] and g.outputs[0].name == out_name
    g.remove_node(relu)
    verify(g)


def test_remove_refuses_a_used_node():
    g, x, w, mm, relu = small_graph()
    with pytest.raises(ValueError, match="still used"):
        g.remove_node(mm)


def test_insert_before_and_topological_sort():
    g, x, w, mm, relu = small_graph()
    neg = g.add_node("Neg", [x], name="neg", before=mm)
    mm.set_input(0, neg.outputs[0])
    verify(g)
    g.move_before(neg, relu)  # now out of order
    with pytest.raises(VerificationError, match="not defined before use"):
        verify(g)
    g.topological_sort()
    verify(g)
    assert [n.name for n in g.nodes] == ["neg", "mm", "relu"]
    assert to_networkx(g).number_of_edges() == 2
    assert topological_order(g) == list(g.nodes)


def test_verifier_reports_dangling_and_duplicate_definitions():
    g, x, w, mm, relu = small_graph()
    other = Graph("other")
    stray = other.add_input("stray", None)
    relu.set_input(0, stray)
    with pytest.raises(VerificationError, match="stray"):
        verify(g)


def test_text_form_is_stable_and_deterministic():
    model = mlp((4, 8, 2), batch="n", seed=1)
    a, b = sparsec.load(model), sparsec.load(model)
    sparsec.prepare(a)
    sparsec.prepare(b)
    text = str(a)
    assert text == str(b)
    assert "%mm0: f32[n,8] = MatMul(%x, %w0)  # matmul0" in text
    assert "const %w0: f32[4,8] = <32 values, 0.0% zero, sha1" in text
    assert "const %b1: f32[2] = [" in text


def test_clone_is_independent():
    g, x, w, mm, relu = small_graph()
    c = g.clone()
    c.add_node("Neg", [c.outputs[0]], name="extra")
    assert len(g) == 2 and len(c) == 3
    verify(c)
    assert c.initializers["w"].const is w.const  # weights are shared, not copied
