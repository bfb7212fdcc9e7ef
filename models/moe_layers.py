"""Dense-masked mixture-of-experts layers: every expert is evaluated and the results are
multiplied by a gate that is zero except for each token's top-k experts, then summed, as
hand-written MoEs exported to ONNX do. ``sparsec``'s ``moe-dispatch`` pass turns them into a
dispatch that runs only the selected experts.

Layout (``x[T, H]``, E experts, FFN width F):
    logits = x @ Wr + br                          [T, E]
    top-k: softmax before (probabilities) or after (over the k logits), optional renormalisation
    gate = ScatterElements(zeros[T, E], idx, weights, axis=1)
    h = act(x @ W1 + b1)                          W1 [E, H, F] (batched MatMul): [E, T, F]
      gated (SwiGLU-style): u = x @ W1 + b1, W1 [E, H, 2F]; h = act(u[..., :F]) * u[..., F:]
    y = h @ W2 + b2                               W2 [E, F, H]: [E, T, H]
    out = ReduceSum(y * Unsqueeze(Transpose(gate)), axis 0)   [T, H]
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ACTIVATIONS = ("relu", "gelu", "silu")


def dense_masked_moe(hidden: int = 64, ffn: int = 128, experts: int = 8, top_k: int = 2, *, tokens: "int | str" = "tokens",
                     activation: str = "relu", softmax: str = "before", normalize: bool = True, layers: int = 1,
                     gated: bool = False, form: str = "stacked", seed: int = 0, opset: int = 17) -> onnx.ModelProto:
    """``form``: ``stacked`` (batched MatMuls over [E, ...] weights, ReduceSum over experts),
    ``einsum`` (the same as Einsums, combined by ``Einsum("eth,te->th", y, gate)``) or ``unrolled``
    (one MatMul chain per expert, summed with Adds: an ``nn.ModuleList`` export); all compute the
    same function for the same seed."""
    forms = ("stacked", "einsum", "unrolled")
    if activation not in ACTIVATIONS or softmax not in ("before", "after") or form not in forms:
        raise ValueError(f"activation in {ACTIVATIONS}, softmax in ('before', 'after'), form in {forms}")
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def const(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(op, inputs, name, **attrs):
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    const("k", np.array([top_k], np.int64))
    const("axes0", np.array([0], np.int64))
    const("axes2", np.array([2], np.int64))
    const("axes1", np.array([1], np.int64))
    const("axes_last", np.array([-1], np.int64))
    current = "x"
    for layer in range(layers):
        p = f"l{layer}_"
        wr = const(p + "wr", (rng.standard_normal((hidden, experts)) / np.sqrt(hidden)).astype(np.float32))
        br = const(p + "br", (0.1 * rng.standard_normal(experts)).astype(np.float32))
        width1 = 2 * ffn if gated else ffn
        w1 = const(p + "w1", (rng.standard_normal((experts, hidden, width1)) / np.sqrt(hidden)).astype(np.float32))
        b1 = const(p + "b1", (0.1 * rng.standard_normal((experts, 1, width1))).astype(np.float32))
        w2 = const(p + "w2", (rng.standard_normal((experts, ffn, hidden)) / np.sqrt(ffn)).astype(np.float32))
        b2 = const(p + "b2", (0.1 * rng.standard_normal((experts, 1, hidden))).astype(np.float32))
        logits = node("Add", [node("MatMul", [current, wr], p + "router_mm"), br], p + "logits")
        scores = node("Softmax", [logits], p + "probs", axis=-1) if softmax == "before" else logits
        nodes.append(helper.make_node("TopK", [scores, "k"], [p + "top_vals", p + "top_idx"], name=p + "topk", axis=-1))
        weights = p + "top_vals"
        if softmax == "after":
            weights = node("Softmax", [weights], p + "top_softmax", axis=-1)
        elif normalize:
            total = node("ReduceSum", [weights, "axes_last"], p + "top_sum", keepdims=1)
            weights = node("Div", [weights, total], p + "top_norm")
        zeros = node("Mul", [logits, const(p + "zero", np.zeros((), np.float32))], p + "zeros")
        gate = node("ScatterElements", [zeros, p + "top_idx", weights], p + "gate", axis=1)
        if form == "einsum":
            y = _ffn(node, const, current, w1, b1, w2, b2, p, ffn, activation, gated, opset, einsum=True)
            current = node("Einsum", [y, gate], p + "out", equation="eth,te->th")
            continue
        if form == "stacked":
            y = _ffn(node, const, current, w1, b1, w2, b2, p, ffn, activation, gated, opset)
            gate_e = node("Unsqueeze", [node("Transpose", [gate], p + "gate_t", perm=[1, 0]), "axes2"], p + "gate_e")
            current = node("ReduceSum", [node("Mul", [y, gate_e], p + "weighted"), "axes0"], p + "out", keepdims=0)
            continue
        arrays = {n.name: numpy_helper.to_array(n) for n in inits if n.name in (w1, b1, w2, b2)}
        total = None
        for e in range(experts):  # one FFN per expert, as an nn.ModuleList loop exports
            q = f"{p}e{e}_"
            ws = [const(q + key, arrays[name][e].reshape(arrays[name].shape[-2:] if key[0] == "w" else -1))
                  for key, name in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2))]
            y = _ffn(node, const, current, *ws, q, ffn, activation, gated, opset)
            column = node("Slice", [gate, const(q + "start", np.array([e], np.int64)),
                                    const(q + "end", np.array([e + 1], np.int64)), "axes1"], q + "gate")
            term = node("Mul", [y, column], q + "weighted")
            total = term if total is None else node("Add", [total, term], q + "sum")
        current = total
        for name in (w1, b1, w2, b2):  # the stacked arrays were only the source of the per-expert ones
            inits[:] = [i for i in inits if i.name != name]
    graph = helper.make_graph(nodes, "dense_masked_moe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [tokens, hidden])],
                              [helper.make_tensor_value_info(current, TensorProto.FLOAT, [tokens, hidden])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _ffn(node, const, x, w1, b1, w2, b2, p, ffn, activation, gated, opset, einsum=False):
    """``act(x @ W1 + b1) @ W2 + b2``; gated: ``act(u[..., :F]) * u[..., F:]`` with ``u = x @ W1 + b1``."""
    def linear(a, w, name, equation):
        return node("Einsum", [a, w], name, equation=equation) if einsum else node("MatMul", [a, w], name)

    h = u = node("Add", [linear(x, w1, p + "mm1", "th,ehf->etf"), b1], p + "h_pre")
    if gated:
        cuts = [const(p + f"cut{i}", np.array([b], np.int64)) for i, b in enumerate((0, ffn, 2 * ffn, -1))]
        h = node("Slice", [u, cuts[0], cuts[1], cuts[3]], p + "gate_half")
        up = node("Slice", [u, cuts[1], cuts[2], cuts[3]], p + "up_half")
    if activation == "relu":
        h = node("Relu", [h], p + "h")
    elif activation == "gelu":
        h = node("Gelu", [h], p + "h") if opset >= 20 else _gelu(node, h, p, const)
    else:
        h = node("Mul", [h, node("Sigmoid", [h], p + "sig")], p + "h")
    if gated:
        h = node("Mul", [h, up], p + "h_gated")
    return node("Add", [linear(h, w2, p + "mm2", "etf,efh->eth"), b2], p + "y")


def _gelu(node, h, p, const):
    half = const(p + "half", np.array(0.5, np.float32))
    one = const(p + "one", np.array(1.0, np.float32))
    inv_sqrt2 = const(p + "inv_sqrt2", np.array(1 / np.sqrt(2), np.float32))
    erf = node("Erf", [node("Mul", [h, inv_sqrt2], p + "gelu_scaled")], p + "gelu_erf")
    return node("Mul", [node("Mul", [h, half], p + "gelu_half"), node("Add", [erf, one], p + "gelu_1p")], p + "h")
