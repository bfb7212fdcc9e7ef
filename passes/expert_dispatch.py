"""``moe-dispatch`` (exact, default): a dense-masked mixture of experts (every expert evaluated,
multiplied by a top-k gate scattered into zeros, summed) becomes one ``sparsec.MoE`` node that
runs only the experts each token's router picked.

Recognised form (what hand-written MoEs export; ``sparsec.models.moe_layers`` builds it):
``ReduceSum_0(Mul(y, Unsqueeze(Transpose(gate))))`` with ``y = act(x @ W1 + b1) @ W2 + b2`` over
stacked constant weights ``W1 [E, H, F]``, ``W2 [E, F, H]``, ``gate = ScatterElements(zeros, idx,
weights, axis=1)`` and ``idx, weights`` from ``TopK`` of the router's softmax (optionally
renormalised) or of its logits (softmax after). Each condition that makes the rewrite exact is
checked; a candidate that fails one is left as it is, with a note saying which.

Exactness: the skipped terms are ``0 * y_e``, zero for every finite ``y_e`` (an expert producing
inf or NaN for a token that did not choose it would turn ORT's sum into NaN; sparsec's stays finite).
"""

from __future__ import annotations

import numpy as np

from sparsec.ir.graph import Graph, Node, Value
from sparsec.ir.types import TensorType
from sparsec.ops import DOMAIN
from sparsec.passmanager import Pass, PassContext, PassResult, register_pass


class Mismatch(Exception):
    """Why a candidate is not the recognised MoE form."""


@register_pass
class MoEDispatch(Pass):
    name = "moe-dispatch"
    description = "dense-masked mixture-of-experts -> dispatch that runs only the selected experts (exact)"
    exact = True
    default = True

    @staticmethod
    def candidates(graph: Graph) -> list[str]:
        found = []
        for node in graph.walk():
            if node.op_type == "ReduceSum":
                try:
                    moe = _match(node)
                except Mismatch:
                    continue
                found.append(f"{node.name}: {moe['experts']} experts, top-{moe['k']}, {moe['activation']}")
        return found

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        result = PassResult()
        for node in list(graph.walk()):
            if node.graph is not None and node.op_type == "MoE" and node.domain == "com.microsoft":
                self._contrib(node, result)
                continue
            if node.graph is None or node.op_type != "ReduceSum" or node.domain not in ("", "ai.onnx"):
                continue
            if not _looks_like_expert_sum(node):
                continue
            try:
                moe = _match(node)
            except Mismatch as why:
                result.notes.append(f"{node.name}: sums over an expert axis but is not rewritten: {why}")
                continue
            tokens = moe["x"].type.shape[0] if isinstance(moe["x"].type, TensorType) and moe["x"].type.shape else None
            _rewrite(node, moe)
            result.rewrites[self.name] += 1
            result.details.setdefault("moe", []).append(
                {"node": node.name, "experts": moe["experts"], "k": moe["k"], "activation": moe["activation"],
                 "softmax": moe["softmax"], "normalize": bool(moe["normalize"]), "tokens": tokens, "layout": "stacked"})
        if result.rewrites:
            graph.eliminate_dead_code()
        return result


    @staticmethod
    def _contrib(node: Node, result: PassResult) -> None:
        """ONNX Runtime's ``com.microsoft.MoE`` (TVM has no converter for it): same semantics as
        sparsec.MoE with softmax before top-k; its expert weights are stored ``[E, out, in]``."""
        try:
            moe = _match_contrib(node)
        except Mismatch as why:
            result.notes.append(f"{node.name}: com.microsoft.MoE not rewritten: {why}")
            return
        _rewrite_contrib(node, moe)
        result.rewrites["moe-dispatch.contrib"] += 1
        result.details.setdefault("moe", []).append(
            {"node": node.name, "experts": moe["experts"], "k": moe["k"], "activation": moe["activation"],
             "softmax": "before", "normalize": bool(moe["normalize"]), "layout": "com.microsoft.MoE"})


# com.microsoft.MoE activation_type -> sparsec.MoE activation, checked against ORT's CPU kernel (its "gelu"
# differs from erf-GELU by ~4e-4: not the same function, so it is not rewritten).
_CONTRIB_ACTIVATIONS = {"relu": "relu", "silu": "silu"}


def _match_contrib(node: Node) -> dict:
    act = node.attr("activation_type", "relu")
    if act not in _CONTRIB_ACTIVATIONS:
        raise Mismatch(f"activation_type {act!r} has no kernel yet (supported: {', '.join(_CONTRIB_ACTIVATIONS)})")
    if node.attr("use_sparse_mixer", 0):
        raise Mismatch("use_sparse_mixer routing is not supported")
    if len(node.inputs) > 6 and node.input(6) is not None:
        raise Mismatch("gated experts (fc3) are not supported yet")
    fc1, fc2 = _const(node.input(2), "fc1_experts_weights"), _const(node.input(4), "fc2_experts_weights")
    if fc1.ndim != 3 or fc2.ndim != 3 or fc1.dtype != np.float32 or fc2.dtype != np.float32:
        raise Mismatch("expert weights are not 3-D float32 constants")
    experts, ffn, hidden = fc1.shape
    if fc2.shape != (experts, hidden, ffn):
        raise Mismatch(f"fc1 {list(fc1.shape)} and fc2 {list(fc2.shape)} are not [E, F, H] and [E, H, F]")
    b1 = _const(node.input(3), "fc1_experts_bias") if node.input(3) is not None else np.zeros((experts, ffn), np.float32)
    b2 = _const(node.input(5), "fc2_experts_bias") if len(node.inputs) > 5 and node.input(5) is not None \
        else np.zeros((experts, hidden), np.float32)
    return {"x": node.input(0), "logits": node.input(1), "w1": np.ascontiguousarray(fc1.transpose(0, 2, 1)),
            "w2": np.ascontiguousarray(fc2.transpose(0, 2, 1)), "b1": _bias(b1, experts, ffn, "fc1_experts_bias"),
            "b2": _bias(b2, experts, hidden, "fc2_experts_bias"), "experts": int(experts), "k": int(node.attr("k", 1)),
            "activation": _CONTRIB_ACTIVATIONS[act], "normalize": int(node.attr("normalize_routing_weights", 0))}


def _rewrite_contrib(node: Node, moe: dict) -> None:
    g = node.graph
    consts = [g.add_constant(moe[key], f"{node.name}_{key}") for key in ("w1", "b1", "w2", "b2")]
    new = g.add_node("MoE", [moe["x"], moe["logits"], consts[0], consts[1], consts[2], consts[3]],
                     {"k": moe["k"], "activation": moe["activation"], "softmax": "before", "normalize": moe["normalize"]},
                     domain=DOMAIN, name=node.name + "_dispatch", before=node)
    new.outputs[0].type = node.outputs[0].type
    node.outputs[0].replace_all_uses_with(new.outputs[0])
    g.remove_node(node)
    g.root.opset_imports.setdefault(DOMAIN, 1)


def _looks_like_expert_sum(node: Node) -> bool:
    mul = node.input(0).producer if node.input(0) is not None else None
    return mul is not None and mul.op_type == "Mul"


def _producer(value: Value | None, *ops: str) -> Node:
    node = value.producer if value is not None else None
    if node is None or node.op_type not in ops or node.domain not in ("", "ai.onnx"):
        raise Mismatch(f"expected {' or '.join(ops)} producing {value.name if value is not None else '?'}, "
                       f"found {node.op_type if node else 'a graph input or constant'}")
    return node


def _const(value: Value | None, what: str) -> np.ndarray:
    if value is None or value.const is None:
        raise Mismatch(f"{what} is not a constant")
    return value.const


def _ints(node: Node, index: int, attr: str):
    value = node.input(index)
    if value is not None and value.const is not None:
        return [int(v) for v in np.ravel(value.const)]
    return node.attr(attr)


def _match(reduce: Node) -> dict:
    if _ints(reduce, 1, "axes") != [0] or reduce.attr("keepdims", 1) != 0:
        raise Mismatch("the sum is not over axis 0 with keepdims=0")
    mul = _producer(reduce.input(0), "Mul")
    for y_value, gate_value in ((mul.input(0), mul.input(1)), (mul.input(1), mul.input(0))):
        try:
            gate_node = _producer(gate_value, "Unsqueeze")
            break
        except Mismatch:
            continue
    else:
        raise Mismatch("no gate (Unsqueeze(Transpose(gate))) multiplies the expert outputs")
    if _ints(gate_node, 1, "axes") != [2]:
        raise Mismatch("the gate is not unsqueezed on axis 2")
    transpose = _producer(gate_node.input(0), "Transpose")
    if list(transpose.attr("perm", [])) != [1, 0]:
        raise Mismatch("the gate is not transposed [1, 0]")
    scatter = _producer(transpose.input(0), "ScatterElements")
    if scatter.attr("axis", 0) not in (1, -1) or scatter.attr("reduction", "none") not in ("none", b"none"):
        raise Mismatch("the gate is not scattered along the expert axis without reduction")
    _check_zeros(scatter.input(0))
    router = _match_router(scatter.input(1), scatter.input(2))
    y_add = _producer(y_value, "Add")
    mm2, b2 = _matmul_plus_bias(y_add)
    w2 = _const(mm2.input(1), "W2")
    h_value = mm2.input(0)
    activation, h_pre = _match_activation(h_value)
    mm1, b1 = _matmul_plus_bias(_producer(h_pre, "Add"))
    w1 = _const(mm1.input(1), "W1")
    x = mm1.input(0)
    if w1.ndim != 3 or w2.ndim != 3 or w1.shape[0] != w2.shape[0] or w1.shape[2] != w2.shape[1] or w1.shape[1] != w2.shape[2]:
        raise Mismatch(f"expert weights {list(w1.shape)} and {list(w2.shape)} are not [E, H, F] and [E, F, H]")
    experts, hidden, ffn = w1.shape
    if router["logits"] is None or not _same_rows(router, x):
        raise Mismatch("the router does not read the experts' input")
    if router["experts"] != experts:
        raise Mismatch(f"the router scores {router['experts']} experts, the weights hold {experts}")
    if w1.dtype != np.float32 or w2.dtype != np.float32:
        raise Mismatch("expert weights are not float32")
    b1 = _bias(b1, experts, ffn, "b1")
    b2 = _bias(b2, experts, hidden, "b2")
    return {"x": x, "w1": mm1.input(1), "w2": mm2.input(1), "b1": b1, "b2": b2, "experts": int(experts),
            "activation": activation, **router}


def _same_rows(router, x) -> bool:
    t = x.type
    return isinstance(t, TensorType) and t.shape is not None and len(t.shape) == 2


def _check_zeros(value: Value) -> None:
    if value.const is not None:
        if np.any(value.const != 0):
            raise Mismatch("the gate is scattered into a non-zero matrix")
        return
    node = _producer(value, "Mul", "ConstantOfShape")
    if node.op_type == "ConstantOfShape":
        fill = node.attr("value")
        if fill is not None and np.any(np.asarray(fill) != 0):
            raise Mismatch("the gate is scattered into a non-zero matrix")
        return
    zero = next((v for v in node.inputs if v is not None and v.const is not None), None)
    if zero is None or zero.const.size != 1 or float(zero.const.ravel()[0]) != 0.0:
        raise Mismatch("the gate is scattered into something not known to be zero")


def _match_router(idx: Value, weights: Value) -> dict:
    topk = _producer(idx, "TopK")
    if idx is not topk.outputs[1] or topk.attr("axis", -1) not in (-1, 1) or topk.attr("largest", 1) != 1:
        raise Mismatch("the expert ids are not the largest-k indices of TopK along the last axis")
    k = int(_const(topk.input(1), "k").ravel()[0])
    values = topk.outputs[0]
    scores = topk.input(0)
    normalize = 0
    if weights is values:
        softmax = "before"
    elif weights.producer is not None and weights.producer.op_type == "Softmax" and weights.producer.input(0) is values:
        softmax = "after"
    elif weights.producer is not None and weights.producer.op_type == "Div" and weights.producer.input(0) is values:
        total = _producer(weights.producer.input(1), "ReduceSum")
        if total.input(0) is not values or _ints(total, 1, "axes") not in ([-1], [1]) or total.attr("keepdims", 1) != 1:
            raise Mismatch("the top-k weights are divided by something other than their sum")
        softmax, normalize = "before", 1
    else:
        raise Mismatch("the gate weights are not the top-k values, their softmax, or their renormalisation")
    if softmax == "before":
        sm = _producer(scores, "Softmax")
        if sm.attr("axis", -1) not in (-1, 1):
            raise Mismatch("the router softmax is not over the expert axis")
        logits = sm.input(0)
    else:
        if weights.producer.attr("axis", -1) not in (-1, 1):
            raise Mismatch("the softmax after top-k is not over the k axis")
        logits = scores
    t = logits.type
    if not isinstance(t, TensorType) or t.shape is None or len(t.shape) != 2 or not isinstance(t.shape[1], int):
        raise Mismatch("the router logits are not [tokens, experts]")
    return {"logits": logits, "k": k, "softmax": softmax, "normalize": normalize, "experts": int(t.shape[1])}


def _matmul_plus_bias(add: Node) -> tuple[Node, np.ndarray]:
    for mm_value, bias_value in ((add.input(0), add.input(1)), (add.input(1), add.input(0))):
        if mm_value.producer is not None and mm_value.producer.op_type == "MatMul" and bias_value.const is not None:
            return mm_value.producer, bias_value.const
    raise Mismatch(f"{add.name} is not MatMul + constant bias")


def _bias(array: np.ndarray, experts: int, width: int, what: str) -> np.ndarray:
    if array.size == width:
        return np.broadcast_to(array.reshape(1, width), (experts, width)).astype(np.float32)
    if array.size == experts * width and array.shape[-1] == width:
        return array.reshape(experts, width).astype(np.float32)
    raise Mismatch(f"{what} of shape {list(array.shape)} is not per expert [E, 1, {width}]")


def _match_activation(h: Value) -> tuple[str, Value]:
    node = h.producer
    if node is None:
        raise Mismatch("the expert hidden layer has no activation")
    if node.op_type == "Relu":
        return "relu", node.input(0)
    if node.op_type == "Gelu" and node.attr("approximate", "none") in ("none", b"none"):
        return "gelu", node.input(0)
    if node.op_type == "Mul":
        a, b = node.input(0), node.input(1)
        for pre, other in ((a, b), (b, a)):
            if other.producer is not None and other.producer.op_type == "Sigmoid" and other.producer.input(0) is pre:
                return "silu", pre
        pre = _erf_gelu_input(a, b) or _erf_gelu_input(b, a)
        if pre is not None:
            return "gelu", pre
    raise Mismatch(f"the expert activation ({node.op_type}) is not ReLU, GELU or SiLU")


def _erf_gelu_input(half_x: Value, one_plus_erf: Value) -> Value | None:
    """x from ``Mul(Mul(x, 0.5), Add(Erf(Mul(x, 1/sqrt 2)), 1))``."""
    hx, ope = half_x.producer, one_plus_erf.producer
    if hx is None or ope is None or hx.op_type != "Mul" or ope.op_type != "Add":
        return None
    x, half = (hx.input(0), hx.input(1)) if hx.input(1).const is not None else (hx.input(1), hx.input(0))
    if half.const is None or not np.allclose(half.const, 0.5):
        return None
    erf_value, one = (ope.input(0), ope.input(1)) if ope.input(1).const is not None else (ope.input(1), ope.input(0))
    if one.const is None or not np.allclose(one.const, 1.0) or erf_value.producer is None or erf_value.producer.op_type != "Erf":
        return None
    scaled = erf_value.producer.input(0).producer
    if scaled is None or scaled.op_type != "Mul":
        return None
    sx, scale = (scaled.input(0), scaled.input(1)) if scaled.input(1).const is not None else (scaled.input(1), scaled.input(0))
    if sx is not x or scale.const is None or not np.allclose(scale.const, 1 / np.sqrt(2), rtol=1e-6):
        return None
    return x


def _rewrite(reduce: Node, moe: dict) -> None:
    g = reduce.graph
    b1 = g.add_constant(np.ascontiguousarray(moe["b1"]), moe["w1"].name + "_b1")
    b2 = g.add_constant(np.ascontiguousarray(moe["b2"]), moe["w2"].name + "_b2")
    node = g.add_node("MoE", [moe["x"], moe["logits"], moe["w1"], b1, moe["w2"], b2],
                      {"k": moe["k"], "activation": moe["activation"], "softmax": moe["softmax"],
                       "normalize": moe["normalize"]}, domain=DOMAIN, name=reduce.name + "_moe", before=reduce)
    node.outputs[0].type = reduce.outputs[0].type
    reduce.outputs[0].replace_all_uses_with(node.outputs[0])
    g.remove_node(reduce)
    g.root.opset_imports.setdefault(DOMAIN, 1)
