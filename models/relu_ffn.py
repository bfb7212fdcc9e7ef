"""ReLU FFN stacks whose activations have a chosen fraction of zeros (relu-skip's test and
benchmark model).

Each layer is ``x @ W1 + b1 -> Relu -> @ W2 + b2 [+ x]`` with W ~ N(0, 1/fan_in). The zeros come
from the first bias: for random-normal inputs x, neuron j's pre-activation ``x @ W1[:, j]`` is a
sum of many independent terms, so about normal with a mean m_j and deviation s_j that the builder
measures on 512 sample inputs propagated through the layers before it. Then

- ``pattern="token"`` (default, contextual sparsity): ``b1_j = -(m_j + s_j * z)`` with
  ``z = Phi^-1(zero_fraction)``, so each neuron is zero for ``zero_fraction`` of the tokens,
  independently per token: one token has that fraction of zero activations, and T tokens share
  fewer all-zero columns (about ``zero_fraction ** T`` of them);
- ``pattern="neuron"`` (structured, the same neurons for every token): a random
  ``zero_fraction`` of the neurons get ``b1_j = -(m_j + 8 s_j)`` (zero for every input, up to
  P = 6e-16) and the others ``b1_j = -(m_j - 8 s_j)`` (never zero), so every row of the
  activations has the same zero columns.

``z`` is clipped to [-8, 8]: ``zero_fraction=1.0`` gives all zeros, ``0.0`` none (up to 6e-16).
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

_SAMPLES = 512
_CLIP = 8.0


def relu_ffn(hidden: int, ffn: int, layers: int = 1, tokens: "int | str | None" = None, zero_fraction: float = 0.9,
             residual: bool = False, seed: int = 0, opset: int = 17, pattern: str = "token") -> onnx.ModelProto:
    """``layers`` x (x @ W1 + b1 -> Relu -> @ W2 + b2 [+ x]); input ``x[tokens, hidden]``, output
    ``y[tokens, hidden]``; ``tokens=None`` makes the token count the symbolic dim "tokens"."""
    if not 0.0 <= zero_fraction <= 1.0:
        raise ValueError("zero_fraction must be within [0, 1]")
    if pattern not in ("token", "neuron"):
        raise ValueError("pattern must be 'token' or 'neuron'")
    rng = np.random.default_rng(seed)
    samples = rng.standard_normal((_SAMPLES, hidden)).astype(np.float32)
    nodes, inits = [], []
    current = "x"
    for layer in range(layers):
        w1 = (rng.standard_normal((hidden, ffn)) / np.sqrt(hidden)).astype(np.float32)
        w2 = (rng.standard_normal((ffn, hidden)) / np.sqrt(ffn)).astype(np.float32)
        b2 = (0.1 * rng.standard_normal(hidden)).astype(np.float32)
        b1 = _sparsifying_bias(samples @ w1, zero_fraction, pattern, rng)
        names = {k: f"l{layer}_{k}" for k in ("w1", "b1", "w2", "b2", "mm1", "pre", "act", "mm2", "out")}
        inits += [numpy_helper.from_array(a, names[k]) for k, a in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2))]
        nodes += [
            helper.make_node("MatMul", [current, names["w1"]], [names["mm1"]], name=f"l{layer}_matmul1"),
            helper.make_node("Add", [names["mm1"], names["b1"]], [names["pre"]], name=f"l{layer}_bias1"),
            helper.make_node("Relu", [names["pre"]], [names["act"]], name=f"l{layer}_relu"),
            helper.make_node("MatMul", [names["act"], names["w2"]], [names["mm2"]], name=f"l{layer}_matmul2"),
        ]
        out = names["out"] if residual or layer < layers - 1 else "y"
        nodes.append(helper.make_node("Add", [names["mm2"], names["b2"]], [out if not residual else names["out"] + "_ffn"],
                                      name=f"l{layer}_bias2"))
        new_samples = np.maximum(samples @ w1 + b1, 0) @ w2 + b2
        if residual:
            final = "y" if layer == layers - 1 else out
            nodes.append(helper.make_node("Add", [names["out"] + "_ffn", current], [final], name=f"l{layer}_residual"))
            new_samples = new_samples + samples
            out = final
        samples, current = new_samples.astype(np.float32), out
    dim = "tokens" if tokens is None else tokens
    graph = helper.make_graph(nodes, "relu_ffn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [dim, hidden])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [dim, hidden])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="sparsec.models")


def _sparsifying_bias(pre: np.ndarray, zero_fraction: float, pattern: str, rng) -> np.ndarray:
    """b1 such that ``pre + b1`` is negative for about ``zero_fraction`` of the entries (see the
    module docstring); ``pre`` is the sampled pre-activation ``[samples, ffn]``."""
    mean, std = pre.mean(axis=0), pre.std(axis=0)
    if pattern == "token":
        if zero_fraction <= 0.0 or zero_fraction >= 1.0:
            z = _CLIP if zero_fraction >= 1.0 else -_CLIP
        else:
            z = float(np.clip(NormalDist().inv_cdf(zero_fraction), -_CLIP, _CLIP))
        return (-(mean + std * z)).astype(np.float32)
    dead = rng.permutation(pre.shape[1]) < round(zero_fraction * pre.shape[1])
    return (-(mean + std * np.where(dead, _CLIP, -_CLIP))).astype(np.float32)
