"""``sparsec.MoE``: a mixture-of-experts FFN that runs only the experts the router picks.

Inputs: x ``[T, H]``, router logits ``[T, E]``, W1 ``[E, H, F]``, b1 ``[E, F]``, W2 ``[E, F, H]``,
b2 ``[E, H]``. Attributes: ``k``; ``activation`` (relu | gelu | silu); ``softmax``: ``before`` (top-k
of the softmax probabilities, renormalised over the k when ``normalize``=1) or ``after`` (softmax
over the k largest logits); ``gated`` (0 | 1). Output ``[T, H]``:
``out[t] = sum_j weight[t, j] * (act(x[t] @ W1[e] + b1[e]) @ W2[e] + b2[e])``, ``e = top[t, j]``.
Gated experts (SwiGLU and kin: Mixtral, Qwen-MoE) hold ``W1 [E, H, 2F]``, ``b1 [E, 2F]``: with
``u = x[t] @ W1[e] + b1[e]``, the hidden layer is ``act(u[:F]) * u[F:]``.

The decomposition is the dense-masked computation (every expert, multiplied by a scattered gate),
so ONNX Runtime checks the dispatch against the same semantics.
"""

from __future__ import annotations

import numpy as np

from ..ir.graph import Node
from ..ir.types import TensorType
from . import OpDef, register_op


def _infer(node: Node):
    x = node.input(0).type
    return [TensorType(x.dtype, x.shape) if isinstance(x, TensorType) else None]


def _decompose(node: Node) -> None:
    g = node.graph
    x, logits, w1, b1, w2, b2 = (node.input(i) for i in range(6))
    k, act = int(node.attr("k")), node.attr("activation")
    experts, ffn, hidden = w2.const.shape if w2.const is not None else (None, None, None)

    def add(op, inputs, outputs=1, **attrs):
        return g.add_node(op, inputs, attrs, before=node, name=f"{node.name}_{op.lower()}", num_outputs=outputs)

    kk = g.add_constant(np.array([k], np.int64), node.name + "_k")
    scores = add("Softmax", [logits], axis=-1).outputs[0] if node.attr("softmax") == "before" else logits
    topk = add("TopK", [scores, kk], outputs=2, axis=-1)
    weights, idx = topk.outputs[0], topk.outputs[1]
    if node.attr("softmax") == "after":
        weights = add("Softmax", [weights], axis=-1).outputs[0]
    elif node.attr("normalize", 0):
        axes = g.add_constant(np.array([-1], np.int64), node.name + "_axes")
        weights = add("Div", [weights, add("ReduceSum", [weights, axes], keepdims=1).outputs[0]]).outputs[0]
    zero = g.add_constant(np.zeros((), np.float32), node.name + "_zero")
    gate = add("ScatterElements", [add("Mul", [logits, zero]).outputs[0], idx, weights], axis=1).outputs[0]
    b1e = g.add_constant(b1.const[:, None, :], node.name + "_b1e")
    b2e = g.add_constant(b2.const[:, None, :], node.name + "_b2e")
    h = add("Add", [add("MatMul", [x, w1]).outputs[0], b1e]).outputs[0]
    if node.attr("gated", 0):
        width = w1.const.shape[2] // 2

        def cut(start, stop):
            bounds = [g.add_constant(np.array([b], np.int64), f"{node.name}_{b}") for b in (start, stop, 2)]
            return add("Slice", [h] + bounds).outputs[0]

        h = add("Mul", [_activate(add, g, node.name, act, cut(0, width)), cut(width, 2 * width)]).outputs[0]
    else:
        h = _activate(add, g, node.name, act, h)
    y = add("Add", [add("MatMul", [h, w2]).outputs[0], b2e]).outputs[0]
    axes2 = g.add_constant(np.array([2], np.int64), node.name + "_axes2")
    axes0 = g.add_constant(np.array([0], np.int64), node.name + "_axes0")
    gate_e = add("Unsqueeze", [add("Transpose", [gate], perm=[1, 0]).outputs[0], axes2]).outputs[0]
    out = add("ReduceSum", [add("Mul", [y, gate_e]).outputs[0], axes0], keepdims=0).outputs[0]
    out.type = node.outputs[0].type
    node.outputs[0].replace_all_uses_with(out)
    g.remove_node(node)


def _activate(add, g, name: str, act: str, h):
    if act == "relu":
        return add("Relu", [h]).outputs[0]
    if act == "gelu":
        half = g.add_constant(np.array(0.5, np.float32), name + "_half")
        inv = g.add_constant(np.array(1 / np.sqrt(2), np.float32), name + "_inv_sqrt2")
        one = g.add_constant(np.array(1.0, np.float32), name + "_one")
        erf = add("Erf", [add("Mul", [h, inv]).outputs[0]]).outputs[0]
        return add("Mul", [h, add("Mul", [add("Add", [erf, one]).outputs[0], half]).outputs[0]]).outputs[0]
    return add("Mul", [h, add("Sigmoid", [h]).outputs[0]]).outputs[0]


MOE = register_op(OpDef("MoE", _infer, _decompose, __doc__))
