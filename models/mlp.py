"""Small MLP stacks: the built-in example and the simplest differential test model."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

_ACTIVATIONS = {"relu": "Relu", "gelu": "Gelu", "sigmoid": "Sigmoid", "tanh": "Tanh", "none": None}


def mlp(sizes=(64, 256, 64), *, activation: str = "relu", batch: "int | str" = "batch", seed: int = 0,
        opset: int = 20, linear: str = "matmul") -> onnx.ModelProto:
    """``x[batch, sizes[0]] -> (MatMul + Add + act) * (len(sizes) - 1) -> y[batch, sizes[-1]]``;
    no activation after the last layer. Weights ~ N(0, 1/fan_in), seeded. ``linear="gemm"``
    writes each layer as torch exports ``nn.Linear`` on 2-D inputs: ``Gemm(x, W[out, in], b, transB=1)``."""
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}")
    if linear not in ("matmul", "gemm"):
        raise ValueError(f"linear must be 'matmul' or 'gemm', got {linear!r}")
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    current = "x"
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        b = (0.1 * rng.standard_normal(fan_out)).astype(np.float32)
        if linear == "gemm":
            inits += [numpy_helper.from_array(np.ascontiguousarray(w.T), f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
            nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [f"h{i}"], name=f"gemm{i}", transB=1))
        else:
            inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
            nodes.append(helper.make_node("MatMul", [current, f"w{i}"], [f"mm{i}"], name=f"matmul{i}"))
            nodes.append(helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"h{i}"], name=f"bias{i}"))
        current = f"h{i}"
        op = _ACTIVATIONS[activation]
        if op and i < len(sizes) - 2:
            nodes.append(helper.make_node(op, [current], [f"a{i}"], name=f"act{i}"))
            current = f"a{i}"
    nodes.append(helper.make_node("Identity", [current], ["y"], name="output"))
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, sizes[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, sizes[-1]])],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="sparsec.models")
