"""Generated model families for `sparsec bench --family NAME --sweep PARAM=V1,V2,...`.

A family builds an ONNX model from keyword parameters (``sparsec.models`` builders); a sweep runs
every combination of the values given and plots the speed-up against the first swept parameter.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import onnx

from ..errors import SparsecError


@dataclass(frozen=True)
class Family:
    name: str
    build: Callable[..., onnx.ModelProto]
    params: dict  # parameter -> default (its type converts command-line values)
    doc: str


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    _FAMILIES[family.name] = family
    return family


def get_family(name: str) -> Family:
    if name not in _FAMILIES:
        raise SparsecError(f"unknown model family {name!r}; available: {', '.join(sorted(_FAMILIES))}")
    return _FAMILIES[name]


def families() -> list[Family]:
    return [_FAMILIES[k] for k in sorted(_FAMILIES)]


def parse_sweep(family: Family, items: list[str]) -> dict[str, list]:
    """``["experts=8,64", "tokens=1"]`` -> ``{"experts": [8, 64], "tokens": [1]}``, typed by the defaults."""
    grid = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not values.strip():
            raise SparsecError(f"--sweep expects PARAM=V1,V2,..., got {item!r}")
        if key not in family.params:
            raise SparsecError(f"family {family.name!r} has no parameter {key!r}; it has: {', '.join(family.params)}")
        kind = type(family.params[key])
        try:
            grid[key] = [kind(v.strip()) if kind is not bool else v.strip().lower() in ("1", "true", "yes")
                         for v in values.split(",")]
        except ValueError:
            raise SparsecError(f"--sweep {key}: values must be {kind.__name__}, got {values!r}") from None
    return grid


def _mlp(hidden: int = 768, ffn: int = 3072, layers: int = 1, activation: str = "relu", batch: int = 32, seed: int = 0):
    from ..models.mlp import mlp

    sizes = [hidden] + [ffn, hidden] * layers
    return mlp(tuple(sizes), activation=activation, batch=batch, seed=seed)


register_family(Family("mlp", _mlp, {"hidden": 768, "ffn": 3072, "layers": 1, "activation": "relu", "batch": 32, "seed": 0},
                       "dense MLP stack hidden -> ffn -> hidden (x layers), static batch rows"))


def _pruned_ffn(hidden: int = 768, ffn: int = 3072, layers: int = 1, sparsity: float = 0.9, block: str = "16x1",
                tokens: int = 32, seed: int = 0):
    from ..models.pruned import pruned_ffn

    if ":" in block:
        n, m = (int(v) for v in block.split(":"))
        return pruned_ffn(hidden, ffn, layers=layers, sparsity=sparsity, nm=(n, m), tokens=tokens, seed=seed)
    r, c = (int(v) for v in block.lower().split("x"))
    return pruned_ffn(hidden, ffn, layers=layers, sparsity=sparsity, block=(r, c), tokens=tokens, seed=seed)


register_family(Family("pruned-ffn", _pruned_ffn,
                       {"hidden": 768, "ffn": 3072, "layers": 1, "sparsity": 0.9, "block": "16x1", "tokens": 32, "seed": 0},
                       "FFN stack (MatMul, ReLU, MatMul) with magnitude-pruned weights: block RxC (outputs x inputs) or N:M"))


def _pruned_convnet(channels: int = 96, expand: int = 576, layers: int = 1, image: int = 14, batch: int = 1,
                    sparsity: float = 0.9, block: str = "1x1", seed: int = 0):
    from ..models.pruned import pruned_convnet

    if not re.fullmatch(r"\d+x\d+", block.lower()):
        raise ValueError(f"pruned-convnet: block must look like 1x1 or 16x1 (outputs x inputs), got {block!r}")
    r, c = (int(v) for v in block.lower().split("x"))
    return pruned_convnet(channels, expand, layers=layers, image=(image, image), batch=batch, sparsity=sparsity,
                          block=(r, c), seed=seed)


register_family(Family("pruned-convnet", _pruned_convnet,
                       {"channels": 96, "expand": 576, "layers": 1, "image": 14, "batch": 1, "sparsity": 0.9, "block": "1x1",
                        "seed": 0},
                       "MobileNetV2-style inverted bottlenecks (1x1 expand, 3x3 depthwise, 1x1 project) with pruned 1x1 weights"))


def _depthwise_conv(channels: int = 576, image: int = 14, kernel: int = 3, stride: int = 1, seed: int = 0):
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    out = (image + 2 * (kernel // 2) - kernel) // stride + 1
    weight = (rng.standard_normal((channels, 1, kernel, kernel)) / kernel).astype(np.float32)
    bias = (0.1 * rng.standard_normal(channels)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[kernel, kernel], pads=[kernel // 2] * 4,
                              strides=[stride, stride], group=channels),
             helper.make_node("Relu", ["y"], ["z"])]
    graph = helper.make_graph(nodes, "depthwise_conv",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, image, image])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, channels, out, out])],
                              [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


register_family(Family("depthwise-conv", _depthwise_conv, {"channels": 576, "image": 14, "kernel": 3, "stride": 1, "seed": 0},
                       "one depthwise convolution (+ bias, ReLU) over [1, channels, image, image], 'same' padding"))


def _moe(hidden: int = 512, ffn: int = 2048, experts: int = 64, top_k: int = 2, tokens: int = 16,
         activation: str = "relu", layers: int = 1, seed: int = 0):
    from ..models.moe_layers import dense_masked_moe

    return dense_masked_moe(hidden, ffn, experts, top_k, tokens=tokens, activation=activation, layers=layers, seed=seed)


register_family(Family("moe", _moe, {"hidden": 512, "ffn": 2048, "experts": 64, "top_k": 2, "tokens": 16,
                                     "activation": "relu", "layers": 1, "seed": 0},
                       "dense-masked mixture of experts (every expert evaluated, gated by a scattered top-k)"))
