"""Pattern-matching helpers shared by the MoE forms ``moe-dispatch`` recognises: what a match
yields (``MoEMatch``), the router (softmax / top-k / renormalisation) and the expert activation.

Every helper either returns what it recognised or raises ``Mismatch`` saying what it found
instead; the pass turns that into the report's note for the candidate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sparsec.ir.graph import Node, Value
from sparsec.ir.types import TensorType


class Mismatch(Exception):
    """Why a candidate is not a recognised MoE form."""


@dataclass
class MoEMatch:
    """A recognised MoE, in ``sparsec.MoE``'s terms: W1 ``[E, H, F or 2F]``, W2 ``[E, F, H]``."""

    x: Value
    logits: Value
    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray
    k: int
    activation: str
    softmax: str
    normalize: int
    gated: bool
    layout: str
    traced_experts: int | None = None  # eager exports: the experts hit while tracing (the file runs only there)

    @property
    def experts(self) -> int:
        return int(self.w2.shape[0])

    def describe(self) -> str:
        return f"{self.experts} experts, top-{self.k}, {'gated ' if self.gated else ''}{self.activation} ({self.layout})"


def producer(value: Value | None, *ops: str) -> Node:
    node = value.producer if value is not None else None
    if node is None or node.op_type not in ops or node.domain not in ("", "ai.onnx"):
        raise Mismatch(f"expected {' or '.join(ops)} producing {value.name if value is not None else '?'}, "
                       f"found {node.op_type if node else 'a graph input or constant'}")
    return node


def const(value: Value | None, what: str) -> np.ndarray:
    if value is None or value.const is None:
        raise Mismatch(f"{what} is not a constant")
    return value.const


def ints(node: Node, index: int, attr: str):
    """An int-list operand given as input ``index`` (opset 13+) or attribute ``attr`` (older)."""
    value = node.input(index) if index < len(node.inputs) else None
    if value is not None and value.const is not None:
        return [int(v) for v in np.ravel(value.const)]
    return node.attr(attr)


def through_casts(value: Value) -> Value:
    """The value under a chain of Casts that keep its dtype (exporters add ``.float()`` no-ops)."""
    while value.producer is not None and value.producer.op_type == "Cast" and \
            isinstance(value.type, TensorType) and isinstance(value.producer.input(0).type, TensorType) and \
            value.producer.input(0).type.dtype == value.type.dtype:
        value = value.producer.input(0)
    return value


def shape_of(value: Value) -> list | None:
    t = value.type
    return list(t.shape) if isinstance(t, TensorType) and t.shape is not None else None


def expert_bias(array: np.ndarray | None, experts: int, width: int, what: str) -> np.ndarray:
    if array is None:
        return np.zeros((experts, width), np.float32)
    if array.size == width:
        return np.broadcast_to(array.reshape(1, width), (experts, width)).astype(np.float32)
    if array.size == experts * width and array.shape[-1] == width:
        return array.reshape(experts, width).astype(np.float32)
    raise Mismatch(f"{what} of shape {list(array.shape)} is not per expert [E, 1, {width}]")


def match_router(idx: Value, weights: Value) -> dict:
    """``idx, weights`` (expert ids and their gate weights, ``[T, k]``) from TopK of the router's
    softmax (optionally renormalised over the k) or of its logits (softmax after)."""
    topk = producer(idx, "TopK")
    if idx is not topk.outputs[1] or topk.attr("axis", -1) not in (-1, 1) or topk.attr("largest", 1) != 1:
        raise Mismatch("the expert ids are not the largest-k indices of TopK along the last axis")
    k = int(const(topk.input(1), "k").ravel()[0])
    values, scores, weights = topk.outputs[0], through_casts(topk.input(0)), through_casts(weights)
    normalize = 0
    if weights is values:
        softmax = "before"
    elif weights.producer is not None and weights.producer.op_type == "Softmax" and weights.producer.input(0) is values:
        softmax = "after"
    elif weights.producer is not None and weights.producer.op_type == "Div" and weights.producer.input(0) is values:
        total = producer(weights.producer.input(1), "ReduceSum")
        if total.input(0) is not values or ints(total, 1, "axes") not in ([-1], [1]) or total.attr("keepdims", 1) != 1:
            raise Mismatch("the top-k weights are divided by something other than their sum")
        softmax, normalize = "before", 1
    else:
        raise Mismatch("the gate weights are not the top-k values, their softmax, or their renormalisation")
    if softmax == "before":
        sm = producer(scores, "Softmax")
        if sm.attr("axis", -1) not in (-1, 1):
            raise Mismatch("the router softmax is not over the expert axis")
        logits = sm.input(0)
    else:
        if weights.producer.attr("axis", -1) not in (-1, 1):
            raise Mismatch("the softmax after top-k is not over the k axis")
        logits = scores
    shape = shape_of(logits)
    if shape is None or len(shape) != 2 or not isinstance(shape[1], int):
        raise Mismatch("the router logits are not [tokens, experts]")
    return {"logits": logits, "k": k, "softmax": softmax, "normalize": normalize, "experts": int(shape[1]),
            "topk": topk}


def match_activation(h: Value) -> tuple[str, Value]:
    """``act(pre)`` -> (name, pre) for ReLU, exact GELU (op or erf form) and SiLU (x * sigmoid(x))."""
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
        pre = _erf_gelu_input(node)
        if pre is not None:
            return "gelu", pre
    raise Mismatch(f"the expert activation ({node.op_type}) is not ReLU, GELU or SiLU")


def _erf_gelu_input(mul: Node) -> Value | None:
    """x from ``x * 0.5 * (1 + erf(x / sqrt 2))`` written as two Muls in any grouping, the scale as
    ``Mul(x, 1/sqrt 2)`` or ``Div(x, sqrt 2)`` (what hand-written and torch-exported GELUs give)."""
    a, b = mul.input(0), mul.input(1)
    groupings = []
    for inner, outer in ((a, b), (b, a)):
        if inner.producer is not None and inner.producer.op_type == "Mul":
            groupings.append([inner.producer.input(0), inner.producer.input(1), outer])
    for leaves in groupings:
        half = [v for v in leaves if v.const is not None and v.const.size == 1 and np.isclose(float(v.const.ravel()[0]), 0.5)]
        erf_terms = [v for v in leaves if _one_plus_erf_of(v) is not None]
        if len(half) != 1 or len(erf_terms) != 1:
            continue
        rest = [v for v in leaves if v is not half[0] and v is not erf_terms[0]]
        if len(rest) == 1 and _one_plus_erf_of(erf_terms[0]) is rest[0]:
            return rest[0]
    return None


def _one_plus_erf_of(value: Value) -> Value | None:
    """x from ``Add(Erf(x * 1/sqrt 2 or x / sqrt 2), 1)``."""
    add = value.producer
    if add is None or add.op_type != "Add":
        return None
    erf_value, one = (add.input(0), add.input(1)) if add.input(1).const is not None else (add.input(1), add.input(0))
    if one.const is None or not np.allclose(one.const, 1.0) or erf_value.producer is None or erf_value.producer.op_type != "Erf":
        return None
    scaled = erf_value.producer.input(0).producer
    if scaled is None or scaled.op_type not in ("Mul", "Div"):
        return None
    x, scale = scaled.input(0), scaled.input(1)
    if scaled.op_type == "Mul" and scale.const is None:
        x, scale = scale, x
    want = 1 / np.sqrt(2) if scaled.op_type == "Mul" else np.sqrt(2)
    if scale.const is None or scale.const.size != 1 or not np.allclose(scale.const, want, rtol=1e-6):
        return None
    return x
