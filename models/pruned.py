"""Pruned test and benchmark models: MLP / FFN stacks whose weights are magnitude-pruned to a
chosen sparsity and structure (unstructured, RxC blocks, N:M), as ONNX MatMul models."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sparsec.passes.pruning import magnitude_prune


def pruned_ffn(hidden: int = 768, ffn: int = 3072, *, layers: int = 1, sparsity: float = 0.9,
               block: tuple[int, int] = (1, 1), nm: tuple[int, int] | None = None, tokens: "int | str" = "tokens",
               activation: str = "Relu", residual: bool = False, seed: int = 0, opset: int = 17) -> onnx.ModelProto:
    """``layers`` x (x @ W1 + b1 -> activation -> @ W2 + b2 [+ x]), every W pruned; input x[tokens, hidden]."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    current = "x"
    for layer in range(layers):
        for i, (fan_in, fan_out) in enumerate(((hidden, ffn), (ffn, hidden))):
            out_in = (rng.standard_normal((fan_out, fan_in)) / np.sqrt(fan_in)).astype(np.float32)
            pruned = magnitude_prune(out_in, sparsity, block, nm) if sparsity or nm else out_in
            w, b = f"l{layer}_w{i + 1}", f"l{layer}_b{i + 1}"
            inits += [numpy_helper.from_array(np.ascontiguousarray(pruned.T), w),
                      numpy_helper.from_array((0.1 * rng.standard_normal(fan_out)).astype(np.float32), b)]
            mm, add = f"l{layer}_mm{i + 1}", f"l{layer}_h{i + 1}"
            nodes += [helper.make_node("MatMul", [current, w], [mm]), helper.make_node("Add", [mm, b], [add])]
            current = add
            if i == 0:
                nodes.append(helper.make_node(activation, [current], [f"l{layer}_act"]))
                current = f"l{layer}_act"
        if residual:
            nodes.append(helper.make_node("Add", [current, "x" if layer == 0 else f"l{layer - 1}_out"], [f"l{layer}_out"]))
        else:
            nodes.append(helper.make_node("Identity", [current], [f"l{layer}_out"]))
        current = f"l{layer}_out"
    graph = helper.make_graph(nodes, "pruned_ffn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [tokens, hidden])],
                              [helper.make_tensor_value_info(current, TensorProto.FLOAT, [tokens, hidden])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def pruned_convnet(channels: int = 128, expand: int = 512, *, layers: int = 1, image: tuple[int, int] = (14, 14),
                   batch: int = 1, sparsity: float = 0.9, block: tuple[int, int] = (1, 1), seed: int = 0,
                   opset: int = 17) -> onnx.ModelProto:
    """MobileNet-style inverted bottlenecks with pruned pointwise weights: ``layers`` x (1x1 Conv
    C -> E + bias, ReLU, 3x3 depthwise Conv (dense), ReLU, 1x1 Conv E -> C + bias, + x) on
    ``x[batch, C, H, W]``. The 1x1 weights are magnitude-pruned (as ``[out, in]``)."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    current = "x"

    def weight(name, out, fan_in, kernel=1, pruned=True):
        w = (rng.standard_normal((out, fan_in * kernel * kernel)) / np.sqrt(fan_in * kernel * kernel)).astype(np.float32)
        if pruned and sparsity:
            w = magnitude_prune(w, sparsity, block)
        inits.append(numpy_helper.from_array(w.reshape(out, fan_in, kernel, kernel), name))
        inits.append(numpy_helper.from_array((0.1 * rng.standard_normal(out)).astype(np.float32), name + "_b"))
        return [name, name + "_b"]

    for layer in range(layers):
        p = f"l{layer}_"
        nodes += [helper.make_node("Conv", [current, *weight(p + "expand", expand, channels)], [p + "e"], kernel_shape=[1, 1]),
                  helper.make_node("Relu", [p + "e"], [p + "e_act"]),
                  helper.make_node("Conv", [p + "e_act", *weight(p + "dw", expand, 1, 3, pruned=False)], [p + "d"],
                                   kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=expand),
                  helper.make_node("Relu", [p + "d"], [p + "d_act"]),
                  helper.make_node("Conv", [p + "d_act", *weight(p + "project", channels, expand)], [p + "p"], kernel_shape=[1, 1]),
                  helper.make_node("Add", [p + "p", current], [p + "out"])]
        current = p + "out"
    shape = [batch, channels, *image]
    graph = helper.make_graph(nodes, "pruned_convnet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(current, TensorProto.FLOAT, shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
