"""The MoE forms ``moe-dispatch`` recognises, each a function from its anchor node to a
``MoEMatch`` (or ``Mismatch`` with the reason):

- ``dense_masked``: every expert evaluated over stacked weights, multiplied by a top-k gate
  scattered into zeros, summed (hand-written MoEs; ``sparsec.models.moe_layers``). Anchor: the
  ``ReduceSum`` over the expert axis.
- ``unrolled``: the same with one FFN per expert (an ``nn.ModuleList`` loop): ``sum_e y_e *
  gate[:, e:e+1]`` as a chain of Adds. Anchor: the top Add of the chain.
- ``batched_mm``: transformers' ``batched_mm`` experts (Mixtral, Qwen2-MoE, Qwen3-MoE): each
  token repeated k times, the chosen experts' weights gathered per (token, slot), batched
  MatMuls, weighted, summed over the k slots. Anchor: the ``ReduceSum`` over the slots.
- ``eager``: transformers' ``eager`` experts traced by the TorchScript exporter: a Python loop
  over the experts hit (``NonZero`` of the expert mask, ``Split`` into as many ids as the trace
  hit), each gathering its tokens, its stacked weights and its gate weights, and ``index_add``-ing
  into zeros. Anchor: the top ``Add`` of the scattered terms.
- ``contrib``: ONNX Runtime's ``com.microsoft.MoE`` op (TVM has no converter for it).

Each condition that makes the rewrite exact is checked here, from the graph's structure and its
inferred shapes; what cannot be proven is a ``Mismatch``.
"""

from __future__ import annotations

import numpy as np
import onnx

from sparsec.ir.graph import Node, Value

from .moe_match import (Mismatch, MoEMatch, const, expert_bias, ints, match_activation, match_router, producer,
                        shape_of, through_casts)


def match_hidden(h: Value) -> tuple[str, Value, bool]:
    """The expert hidden layer: ``act(u[..., :F]) * u[..., F:]`` (gated) or ``act(u)``; returns
    (activation, u, gated)."""
    node = h.producer
    if node is not None and node.op_type == "Mul":
        for a, b in ((node.input(0), node.input(1)), (node.input(1), node.input(0))):
            try:
                activation, gate = match_activation(a)
            except Mismatch:
                continue
            gate_half, up_half = _half_of(gate), _half_of(b)
            if gate_half and up_half and gate_half[0] is up_half[0] and (gate_half[1], up_half[1]) == (0, 1):
                return activation, gate_half[0], True
    activation, pre = match_activation(h)
    return activation, pre, False


def _half_of(value: Value) -> tuple[Value, int] | None:
    """(u, 0) for the first half of u's last axis (static width W), (u, 1) for the second, written
    as ``u[..., :W/2]`` / ``u[..., W/2:]`` (Slice, the TorchScript exporter) or as the outputs of
    a Split in two equal parts (the dynamo exporter's ``chunk``); else None."""
    node = value.producer
    if node is None or node.domain not in ("", "ai.onnx") or node.op_type not in ("Slice", "Split"):
        return None
    shape = shape_of(node.input(0))
    if shape is None or not isinstance(shape[-1], int) or shape[-1] % 2:
        return None
    rank, width = len(shape), shape[-1]
    half = width // 2
    if node.op_type == "Split":
        if node.attr("axis", 0) % rank != rank - 1 or len(node.outputs) != 2:
            return None
        sizes = node.input(1) if len(node.inputs) > 1 else None
        if sizes is not None and (sizes.const is None or list(np.ravel(sizes.const)) != [half, half]):
            return None
        return node.input(0), node.outputs.index(value)
    if node.op_type != "Slice" or any(v is not None and v.const is None for v in node.inputs[1:]):
        return None
    starts, ends = ints(node, 1, "starts"), ints(node, 2, "ends")
    axes = ints(node, 3, "axes") or list(range(len(starts)))
    steps = ints(node, 4, "steps") or [1] * len(starts)
    if len(starts) != 1 or axes[0] % rank != rank - 1 or steps != [1]:
        return None
    start, end = (min(max(b + width if b < 0 else b, 0), width) for b in (starts[0], ends[0]))
    return {(0, half): (node.input(0), 0), (half, width): (node.input(0), 1)}.get((start, end))


def _check_hidden_width(w1: np.ndarray, w2: np.ndarray, gated: bool) -> None:
    experts, ffn, hidden = w2.shape
    if w1.shape != (experts, hidden, 2 * ffn if gated else ffn):
        raise Mismatch(f"expert weights {list(w1.shape)} and {list(w2.shape)} are not [E, H, {'2F' if gated else 'F'}]"
                       " and [E, F, H]")
    if w1.dtype != np.float32 or w2.dtype != np.float32:
        raise Mismatch("expert weights are not float32")


# --- dense-masked ---------------------------------------------------------------------------

def dense_masked(anchor: Node) -> MoEMatch:
    """The expert outputs ``y [E, T, H]`` weighted by ``gate [T, E]`` and summed over E, as
    ``ReduceSum_0(Mul(y, Unsqueeze(Transpose(gate), 2)))`` or ``Einsum("eth,te->th", y, gate)``,
    with ``y = hidden(x @ W1 + b1) @ W2 + b2`` over stacked weights (batched MatMuls or Einsums,
    ``[E, in, out]`` or ``[E, out, in]``) and ``gate = ScatterElements(zeros, idx, weights, axis=1)``
    from the router's TopK.

    Exact: the skipped terms are ``0 * y_e``, zero for every finite ``y_e`` (an expert producing
    inf or NaN for a token that did not choose it would turn ORT's sum into NaN; sparsec's stays
    finite)."""
    y_value, gate = _weighted_expert_sum(anchor)
    scatter = producer(gate, "ScatterElements")
    if scatter.attr("axis", 0) not in (1, -1) or scatter.attr("reduction", "none") not in ("none", b"none"):
        raise Mismatch("the gate is not scattered along the expert axis without reduction")
    _check_zeros(scatter.input(0))
    router = match_router(scatter.input(1), scatter.input(2))
    w2, b2, h = _stacked_linear(y_value)
    activation, pre, gated = match_hidden(h)
    w1, b1, x = _stacked_linear(pre)
    _check_hidden_width(w1, w2, gated)
    experts, hidden, width1 = w1.shape
    if shape_of(x) is None or len(shape_of(x)) != 2:
        raise Mismatch("the experts' input is not [tokens, hidden]")
    if router["experts"] != experts:
        raise Mismatch(f"the router scores {router['experts']} experts, the weights hold {experts}")
    return MoEMatch(x, router["logits"], w1, expert_bias(b1, experts, width1, "b1"), w2,
                    expert_bias(b2, experts, hidden, "b2"), router["k"], activation, router["softmax"],
                    router["normalize"], gated, "stacked")


def _weighted_expert_sum(anchor: Node) -> tuple[Value, Value]:
    """(y, gate) from the sum over experts: ReduceSum(Mul(y, Unsqueeze(Transpose(gate)))) or Einsum."""
    if anchor.op_type == "Einsum":
        eq = _einsum_terms(anchor)
        if eq is None or len(eq[0]) != 2:
            raise Mismatch("the Einsum is not a two-operand product")
        (a, b), out = eq
        for (y_value, y_sub), (gate_value, gate_sub) in (((anchor.input(0), a), (anchor.input(1), b)),
                                                         ((anchor.input(1), b), (anchor.input(0), a))):
            if len(y_sub) == 3 and len(gate_sub) == 2 and gate_sub == y_sub[1] + y_sub[0] and out == y_sub[1:]:
                return y_value, gate_value
        raise Mismatch("the Einsum is not sum_e y[e, t, h] * gate[t, e]")
    if ints(anchor, 1, "axes") != [0] or anchor.attr("keepdims", 1) != 0:
        raise Mismatch("the sum is not over axis 0 with keepdims=0")
    mul = producer(anchor.input(0), "Mul")
    for y_value, gate_value in ((mul.input(0), mul.input(1)), (mul.input(1), mul.input(0))):
        try:
            gate_node = producer(gate_value, "Unsqueeze")
            break
        except Mismatch:
            continue
    else:
        raise Mismatch("no gate (Unsqueeze(Transpose(gate))) multiplies the expert outputs")
    if ints(gate_node, 1, "axes") != [2]:
        raise Mismatch("the gate is not unsqueezed on axis 2")
    transpose = producer(gate_node.input(0), "Transpose")
    if list(transpose.attr("perm", [])) != [1, 0]:
        raise Mismatch("the gate is not transposed [1, 0]")
    return y_value, transpose.input(0)


def _einsum_terms(node: Node) -> tuple[list[str], str] | None:
    """(input subscripts, output subscripts) of a plain Einsum equation (no ellipsis), else None."""
    equation = node.attr("equation", "")
    equation = equation.decode() if isinstance(equation, bytes) else str(equation)
    equation = equation.replace(" ", "")
    if "->" not in equation or "." in equation:
        return None
    inputs, out = equation.split("->")
    return inputs.split(","), out


def _stacked_linear(value: Value) -> tuple[np.ndarray, np.ndarray | None, Value]:
    """``a @ W + b`` over stacked constant weights, per expert: ``MatMul(a, W [E, in, out])`` or
    ``Einsum`` (``th,ehf->etf`` for the first layer, ``etf,efh->eth`` for the second; W may also
    be ``[E, out, in]``), plus an optional constant bias; returns (W as [E, in, out], b, a)."""
    bias = None
    node = value.producer
    if node is not None and node.op_type == "Add":
        for inner, other in ((node.input(0), node.input(1)), (node.input(1), node.input(0))):
            if other.const is not None and inner.producer is not None and inner.producer.op_type in ("MatMul", "Einsum"):
                bias, node = other.const, inner.producer
                break
    if node is None or node.op_type not in ("MatMul", "Einsum"):
        raise Mismatch(f"an expert layer is {node.op_type if node else 'an input'}, not a batched MatMul or Einsum (+ bias)")
    a, w = node.input(0), const(node.input(1), "the stacked expert weights")
    if w.ndim != 3:
        raise Mismatch(f"expert weights of shape {list(w.shape)} are not stacked [E, ...]")
    if node.op_type == "Einsum":
        eq = _einsum_terms(node)
        layout = _einsum_layout(eq) if eq is not None and len(eq[0]) == 2 else None
        if layout is None:
            raise Mismatch(f"the Einsum {node.attr('equation')!r} is not a per-expert linear layer")
        w = np.ascontiguousarray(w.transpose(0, 2, 1)) if layout == "out_in" else w
    return w, bias, a


def _einsum_layout(eq: tuple[list[str], str]) -> str | None:
    """'in_out' / 'out_in' for a per-expert linear Einsum: (t i | e t i), (e i o | e o i) -> e t o."""
    (a, w), out = eq
    if len(w) != 3 or len(out) != 3 or len(set(a + w + out)) != 4:
        return None
    e, t, o = out
    i = a[-1]
    if a not in (t + i, e + t + i) or o in (i, e, t):
        return None
    return {e + i + o: "in_out", e + o + i: "out_in"}.get(w)


def _check_zeros(value: Value) -> None:
    if _is_zeros(value):
        return
    node = producer(value, "Mul")
    zero = next((v for v in node.inputs if v is not None and v.const is not None), None)
    if zero is None or zero.const.size != 1 or float(zero.const.ravel()[0]) != 0.0:
        raise Mismatch("the gate is scattered into something not known to be zero")


# --- unrolled: one FFN per expert -----------------------------------------------------------

def unrolled(top: Node) -> MoEMatch:
    """``sum_e y_e * gate[:, e:e+1]`` (Adds in any order, optionally onto zeros) where every
    expert e of the router appears exactly once, ``y_e = lin2_e(hidden(lin1_e(x)))`` with its own
    constant 2-D weights (MatMul + bias or Gemm) on the same x, and the gate as in ``dense_masked``.
    Exact for the same reason: the skipped terms are zeros times finite values."""
    outputs, gate = {}, None
    for term in sum_terms(top.outputs[0]):
        mul = producer(term, "Mul")
        picked = _gate_column(mul.input(1)) or _gate_column(mul.input(0))
        if picked is None:
            raise Mismatch("a summed term is not an expert output times its gate column")
        column_of, expert = picked
        y_value = mul.input(0) if _gate_column(mul.input(1)) else mul.input(1)
        if gate is not None and column_of is not gate:
            raise Mismatch("the summed terms take their gate columns from different gates")
        if expert in outputs:
            raise Mismatch(f"expert {expert} is summed twice")
        gate, outputs[expert] = column_of, y_value
    scatter = producer(gate, "ScatterElements")
    if scatter.attr("axis", 0) not in (1, -1) or scatter.attr("reduction", "none") not in ("none", b"none"):
        raise Mismatch("the gate is not scattered along the expert axis without reduction")
    _check_zeros(scatter.input(0))
    router = match_router(scatter.input(1), scatter.input(2))
    if sorted(outputs) != list(range(router["experts"])):
        raise Mismatch(f"the sum covers experts {sorted(outputs)}, not each of the router's {router['experts']} once")
    layers = [_expert_ffn(outputs[e]) for e in range(router["experts"])]
    x, activation, gated = layers[0][0], layers[0][1], layers[0][2]
    if any(layer[0] is not x or layer[1:3] != (activation, gated) for layer in layers):
        raise Mismatch("the experts do not all read the same input with the same activation")
    if shape_of(x) is None or len(shape_of(x)) != 2:
        raise Mismatch("the experts' input is not [tokens, hidden]")
    try:
        w1, b1, w2, b2 = (np.stack([layer[i] for layer in layers]).astype(np.float32) for i in range(3, 7))
    except ValueError:
        raise Mismatch("the experts' weights differ in shape") from None
    _check_hidden_width(w1, w2, gated)
    return MoEMatch(x, router["logits"], w1, b1, w2, b2, router["k"], activation, router["softmax"],
                    router["normalize"], gated, "unrolled")


def sum_terms(value: Value) -> list[Value]:
    """The leaves of a tree of Adds, without constant zeros (a sum started from ``zeros_like``)."""
    return [leaf for leaf in _add_tree(value)[1] if not _is_zeros(leaf)]


def _is_zeros(value: Value) -> bool:
    """A constant of zeros, or ``ConstantOfShape`` filling zeros (``torch.zeros_like``)."""
    if value.const is not None:
        return not np.any(value.const)
    node = value.producer
    if node is None or node.op_type != "ConstantOfShape":
        return False
    fill = node.attr("value")
    return fill is None or not np.any(np.asarray(fill))


def _gate_column(value: Value) -> tuple[Value, int] | None:
    """(gate, e) for ``Slice(gate, e, e + 1, axis 1)`` or ``Unsqueeze(Gather(gate, e, axis=1), 1)``."""
    node = value.producer
    if node is None or node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "Slice" and all(v is None or v.const is not None for v in node.inputs[1:]):
        starts, ends = ints(node, 1, "starts"), ints(node, 2, "ends")
        axes = ints(node, 3, "axes") or [0]
        steps = ints(node, 4, "steps") or [1]
        if len(starts) == 1 and axes[0] in (1, -1) and steps == [1] and starts[0] >= 0 and ends[0] == starts[0] + 1:
            return node.input(0), starts[0]
        return None
    if node.op_type == "Unsqueeze" and ints(node, 1, "axes") in ([1], [-1]):
        gather = node.input(0).producer
        if gather is not None and gather.op_type == "Gather" and gather.attr("axis", 0) in (1, -1) \
                and gather.input(1).const is not None and gather.input(1).const.ndim == 0:
            return gather.input(0), int(gather.input(1).const)
    return None


def _expert_ffn(y: Value) -> tuple:
    """(x, activation, gated, W1 [H, F'], b1 [F'], W2 [F, H], b2 [H]) of one expert's FFN."""
    w2, b2, h = _linear(y)
    activation, pre, gated = match_hidden(h)
    w1, b1, x = _linear(pre)
    return x, activation, gated, w1, b1, w2, b2


def _linear(value: Value) -> tuple[np.ndarray, np.ndarray, Value]:
    """``x @ W + b`` with constant 2-D W: MatMul (+ Add of a constant bias) or Gemm; returns
    (W as [in, out], b [out], x)."""
    node = value.producer
    bias = None
    if node is not None and node.op_type == "Add":
        for inner, other in ((node.input(0), node.input(1)), (node.input(1), node.input(0))):
            if other.const is not None and inner.producer is not None and inner.producer.op_type == "MatMul":
                bias, node = other.const, inner.producer
                break
    if node is not None and node.op_type == "Gemm":
        if node.attr("transA", 0) or node.attr("alpha", 1.0) != 1.0 or node.attr("beta", 1.0) != 1.0:
            raise Mismatch("an expert Gemm transposes its input or scales")
        w = const(node.input(1), "an expert weight")
        w = w.T if node.attr("transB", 0) else w
        bias = const(node.input(2), "an expert bias") if len(node.inputs) > 2 and node.input(2) is not None else None
    elif node is not None and node.op_type == "MatMul":
        w = const(node.input(1), "an expert weight")
    else:
        raise Mismatch(f"an expert layer is {node.op_type if node else 'an input'}, not MatMul (+ bias) or Gemm")
    if w.ndim != 2:
        raise Mismatch("an expert weight is not 2-D")
    width = w.shape[1]
    b = np.zeros(width, np.float32) if bias is None else np.broadcast_to(np.ravel(bias), (width,)) \
        if np.size(bias) in (1, width) else None
    if b is None:
        raise Mismatch(f"an expert bias of shape {list(np.shape(bias))} is not per output column")
    return w, b, node.input(0)


# --- transformers batched_mm ----------------------------------------------------------------

def batched_mm(reduce: Node) -> MoEMatch:
    """``ReduceSum_1(Reshape(Mul(y, Unsqueeze(Reshape(weights, [-1]))), [T, k, H]))`` where, per
    (token, slot) row s = t * k + j: ``y = lin2(hidden(lin1(x[t])))`` and each ``lin`` is a batched
    MatMul with ``Gather(W, Reshape(ids, [-1]))``, W ``[E, out, in]`` (or ``[E, in, out]``), plus an
    optional gathered bias; ``x[t]`` repeated k times by ``Tile(Unsqueeze(x, 1), [1, k, 1])``.

    Exact: each row computes the chosen expert on its token, as the dispatch does."""
    if ints(reduce, 1, "axes") != [1] or reduce.attr("keepdims", 1) != 0:
        raise Mismatch("the sum is not over axis 1 with keepdims=0")
    regroup = producer(reduce.input(0), "Reshape")
    mul = producer(regroup.input(0), "Mul")
    for y_value, scale in ((mul.input(0), mul.input(1)), (mul.input(1), mul.input(0))):
        try:
            weights = _flat_rows(_unsqueezed_last(scale))
            break
        except Mismatch:
            continue
    else:
        raise Mismatch("the expert outputs are not multiplied by the flattened gate weights")
    w2, b2, ids, h = _batched_linear(y_value)
    activation, pre, gated = match_hidden(h)
    w1, b1, ids1, rows = _batched_linear(pre)
    if ids1 is not ids:
        raise Mismatch("the two expert layers gather weights by different ids")
    router = match_router(_flat_rows(ids), weights)
    k, experts = router["k"], w2.shape[0]
    _check_hidden_width(w1, w2, gated)
    if router["experts"] != experts:
        raise Mismatch(f"the router scores {router['experts']} experts, the weights hold {experts}")
    x = _repeated_rows(rows, k)
    x_shape, grouped = shape_of(x), shape_of(regroup.outputs[0])
    hidden = w2.shape[2]
    if x_shape is None or len(x_shape) != 2 or grouped is None or grouped != [x_shape[0], k, hidden]:
        raise Mismatch(f"cannot show that the sum regroups the k slots of each token ({grouped} vs "
                       f"[{x_shape[0] if x_shape else '?'}, {k}, {hidden}])")
    return MoEMatch(x, router["logits"], w1, expert_bias(b1, experts, w1.shape[2], "b1"), w2,
                    expert_bias(b2, experts, hidden, "b2"), k, activation, router["softmax"],
                    router["normalize"], gated, "batched_mm")


def _unsqueezed_last(value: Value) -> Value:
    node = producer(value, "Unsqueeze")
    if ints(node, 1, "axes") not in ([-1], [1]):
        raise Mismatch("the gate weights are not unsqueezed on the last axis")
    return node.input(0)


def _flat_rows(value: Value) -> Value:
    """``Reshape(v, [-1])`` -> v (the [T, k] routing tensor, flattened token-major)."""
    node = producer(value, "Reshape")
    target = node.input(1).const if node.input(1) is not None else None
    source = shape_of(node.input(0))
    if target is None or list(np.ravel(target)) != [-1] or source is None or len(source) != 2:
        raise Mismatch("the routing tensor is not flattened from [tokens, k]")
    return node.input(0)


def _batched_linear(value: Value) -> tuple[np.ndarray, np.ndarray | None, Value, Value]:
    """``Squeeze(MatMul(Gather(W, ids), Unsqueeze(a, -1)), -1)`` (W ``[E, out, in]``) or
    ``Squeeze(MatMul(Unsqueeze(a, 1), Gather(W, ids)), 1)`` (W ``[E, in, out]``), plus an optional
    gathered bias; returns (W as ``[E, in, out]``, B ``[E, out]`` or None, ids, a). A gather is
    ``Gather`` or ``GatherND`` (``_gathered_rows``)."""
    bias, bias_ids = None, None
    node = value.producer
    if node is not None and node.op_type == "Add":
        for lin, other in ((node.input(0), node.input(1)), (node.input(1), node.input(0))):
            gathered = _gathered_rows(other)
            if gathered is not None and gathered[0].const is not None:
                (bias_table, bias_ids), value = gathered, lin
                bias = bias_table.const
                break
        else:
            raise Mismatch("an expert layer adds something other than a gathered bias")
    squeeze = producer(value, "Squeeze")
    mm = producer(squeeze.input(0), "MatMul")
    left, right = mm.input(0), mm.input(1)
    on_left, on_right = _gathered_rows(left), _gathered_rows(right)
    if on_left is not None:
        gathered, vector, vector_axis, squeeze_axes, transpose = on_left, right, ([-1], [2]), ([-1], [2]), True
    elif on_right is not None:
        gathered, vector, vector_axis, squeeze_axes, transpose = on_right, left, ([1],), ([1],), False
    else:
        raise Mismatch("neither side of the batched MatMul gathers expert weights along the expert axis")
    table, ids = gathered
    weights = const(table, "the gathered expert weights")
    unsqueeze = producer(vector, "Unsqueeze")
    if weights.ndim != 3 or ints(unsqueeze, 1, "axes") not in vector_axis or ints(squeeze, 1, "axes") not in squeeze_axes:
        raise Mismatch("the batched MatMul is not a per-row vector-matrix product over [E, out, in] weights")
    if bias_ids is not None and bias_ids is not ids:
        raise Mismatch("an expert bias is gathered by other ids than its weights")
    w = np.ascontiguousarray(weights.transpose(0, 2, 1)) if transpose else weights
    return w, bias, ids, unsqueeze.input(0)


def _gathered_rows(value: Value) -> tuple[Value, Value] | None:
    """(table, ids) for ``Gather(table, ids)`` along axis 0, or for ``GatherND(table,
    Unsqueeze(ids, -1))`` with no batch dims, which reads the same rows (how the dynamo exporter
    writes ``W[ids]``); else None."""
    node = value.producer
    if node is None or node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "Gather" and node.attr("axis", 0) == 0:
        return node.input(0), node.input(1)
    if node.op_type == "GatherND" and node.attr("batch_dims", 0) == 0:
        index = node.input(1).producer
        ids_shape = shape_of(node.input(1))
        if index is not None and index.op_type == "Unsqueeze" and ids_shape is not None and \
                ints(index, 1, "axes") in ([-1], [len(ids_shape) - 1]):
            return node.input(0), index.input(0)
    return None


def _repeated_rows(rows: Value, k: int) -> Value:
    """x from ``Flatten(Tile(Unsqueeze(x, 1), [1, k, 1]), 2)`` (or Reshape to [-1, H]; or Expand
    to ``[1, k, 1]`` instead of the Tile, as the dynamo exporter writes it): each token repeated k
    times, token-major, as ``repeat_interleave`` exports; top-1 may use x itself."""
    node = rows.producer
    if k == 1 and (node is None or node.op_type not in ("Flatten", "Reshape")):
        return rows
    node = producer(rows, "Flatten", "Reshape")
    if node.op_type == "Flatten" and node.attr("axis", 1) != 2:
        raise Mismatch("the repeated tokens are not flattened at axis 2")
    if node.op_type == "Reshape" and (node.input(1).const is None or list(np.ravel(node.input(1).const))[:1] != [-1]
                                      or len(np.ravel(node.input(1).const)) != 2):
        raise Mismatch("the repeated tokens are not reshaped to [-1, hidden]")
    tile = producer(node.input(0), "Tile", "Expand")
    repeats = const(tile.input(1), f"the {tile.op_type} {'repeats' if tile.op_type == 'Tile' else 'shape'}")
    if list(np.ravel(repeats)) != [1, k, 1]:
        raise Mismatch(f"tokens are repeated by {tile.op_type} {list(np.ravel(repeats))}, not [1, {k}, 1]")
    unsqueeze = producer(tile.input(0), "Unsqueeze")
    if ints(unsqueeze, 1, "axes") != [1]:
        raise Mismatch(f"tokens are not unsqueezed on axis 1 before the {tile.op_type}")
    return unsqueeze.input(0)


# --- transformers eager: a loop over the experts hit, unrolled by the trace ------------------

def eager(top: Node) -> MoEMatch:
    """``zeros + sum_i ScatterElements(zeros, tok_i, y_i * w_i)`` (``index_add_`` per loop step),
    where step i takes the i-th id of the experts hit, ``e_i = Split(NonZero(Greater(ReduceSum(
    mask), 0)))[i]`` (split into ones, each piece used by one step), its rows ``(slot, tok) =
    NonZero(mask[e_i])`` of ``mask = Transpose(OneHot(ids), [2, 1, 0])`` over the router's TopK
    ids, ``y_i = lin2(hidden(lin1(x[tok])))`` with ``lin`` a MatMul by ``Gather(W, e_i)`` from one
    stacked W, and ``w_i = weights.flatten()[tok * k + slot]``.

    The file computes the MoE only when the input hits as many experts as the trace did (ORT fails
    on others); there the steps together cover every expert hit, each token once per expert (top-k
    ids are distinct), which is what the dispatch computes for every input."""
    hits, steps = None, []
    sums, leaves = _add_tree(top.outputs[0])
    for term in sum_terms(top.outputs[0]):
        step = _eager_step(term)
        if hits is not None and step["hits"] is not hits:
            raise Mismatch("the scattered terms take their expert ids from different NonZeros")
        hits = step["hits"]
        steps.append(step)
    if not steps:
        raise Mismatch("no scattered expert terms")
    first = steps[0]
    for key in ("x", "mask", "weights", "w1", "w1_out_in", "w2", "w2_out_in", "b1", "b2", "activation", "gated", "stride"):
        if any(step[key] != first[key] for step in steps):
            raise Mismatch(f"the loop steps differ in their {key}")
    if sorted(step["piece"] for step in steps) != list(range(len(hits.outputs))):
        raise Mismatch(f"the {len(steps)} steps do not use each of the {len(hits.outputs)} expert ids once")
    _check_expert_hits(hits, first["mask"])
    onehot = _one_hot_mask(first["mask"])
    router = match_router(onehot.input(0), first["weights"])
    w1, w2 = (const(first[key], "the stacked expert weights") for key in ("w1", "w2"))
    w1 = np.ascontiguousarray(w1.transpose(0, 2, 1)) if first["w1_out_in"] else w1
    w2 = np.ascontiguousarray(w2.transpose(0, 2, 1)) if first["w2_out_in"] else w2
    _check_hidden_width(w1, w2, first["gated"])
    experts, hidden = w2.shape[0], w2.shape[2]
    depth = const(onehot.input(1), "the one-hot depth")
    if router["experts"] != experts or depth.size != 1 or int(depth.ravel()[0]) < experts:
        raise Mismatch(f"the router scores {router['experts']} experts, the weights hold {experts}")
    if first["stride"] != router["k"]:
        raise Mismatch(f"the gate weights are read with a row stride of {first['stride']}, not k = {router['k']}")
    if shape_of(first["x"]) is None or len(shape_of(first["x"])) != 2:
        raise Mismatch("the experts' input is not [tokens, hidden]")
    zeros = [step["zeros"] for step in steps] + [leaf for leaf in leaves if _is_zeros(leaf)]
    if not all(_zeros_like(value, first["x"], frozenset(map(id, sums))) for value in zeros):
        raise Mismatch("the rows are scattered into (or summed with) zeros not shaped like the experts' input")
    b1 = None if first["b1"] is None else const(first["b1"], "an expert bias")
    b2 = None if first["b2"] is None else const(first["b2"], "an expert bias")
    return MoEMatch(first["x"], router["logits"], w1, expert_bias(b1, experts, w1.shape[2], "b1"), w2,
                    expert_bias(b2, experts, hidden, "b2"), router["k"], first["activation"], router["softmax"],
                    router["normalize"], first["gated"], "eager", traced_experts=len(hits.outputs))


def _eager_step(term: Value) -> dict:
    """One loop step's ``index_add_``: what it reads, checked to be the step the docstring of
    ``eager`` describes."""
    scatter = producer(term, "ScatterElements")
    if scatter.attr("axis", 0) != 0 or scatter.attr("reduction", "none") not in ("none", b"none") \
            or not _is_zeros(scatter.input(0)):
        raise Mismatch("a summed term is not rows scattered into zeros along axis 0")
    target = shape_of(scatter.input(0))
    updates = _unexpanded(scatter.input(2), target[-1] if target and len(target) == 2 else None)
    index = producer(scatter.input(1), "Expand")
    shape = index.input(1).producer
    if shape is None or shape.op_type != "Shape" or shape.input(0) is not scatter.input(2):
        raise Mismatch("the scattered row ids are not expanded to the rows' shape")
    tok = producer(index.input(0), "Unsqueeze")
    if ints(tok, 1, "axes") not in ([1], [-1]):
        raise Mismatch("the scattered row ids are not unsqueezed on the last axis")
    tok = tok.input(0)
    mul = producer(through_casts(updates), "Mul")
    for y, scale in ((mul.input(0), mul.input(1)), (mul.input(1), mul.input(0))):
        try:
            weights, stride, slot, tok_w = _gate_rows(scale)
            break
        except Mismatch:
            continue
    else:
        raise Mismatch("the expert rows are not multiplied by their gate weights")
    mask, expert, slot_m = _expert_rows(tok)
    if tok_w is not tok or slot is not slot_m:
        raise Mismatch("the gate weights are read at other rows than the expert's tokens and slots")
    w2, b2, h = _gathered_linear(y, expert)
    activation, pre, gated = match_hidden(h)
    w1, b1, rows = _gathered_linear(pre, expert)
    x = producer(rows, "Gather")
    if x.attr("axis", 0) != 0 or x.input(1) is not tok:
        raise Mismatch("the expert's input rows are not its tokens")
    hits, piece = _hit_expert(expert)
    return {"hits": hits, "piece": piece, "x": x.input(0), "zeros": scatter.input(0), "mask": mask,
            "weights": weights, "stride": stride,
            "w1": w1[0], "w1_out_in": w1[1], "w2": w2[0], "w2_out_in": w2[1], "b1": b1, "b2": b2,
            "activation": activation, "gated": gated}


def _add_tree(value: Value) -> tuple[list[Value], list[Value]]:
    """(the sums, the leaves left to right) of a tree of Adds, walked without recursion (a loop
    over 128 experts is a chain of 128)."""
    sums, leaves, stack = [], [], [value]
    while stack:
        v = stack.pop()
        node = v.producer
        if node is not None and node.op_type == "Add" and node.domain in ("", "ai.onnx"):
            sums.append(v)
            stack += [node.input(1), node.input(0)]
        else:
            leaves.append(v)
    return sums, leaves


def _zeros_like(value: Value, x: Value, sums: frozenset = frozenset()) -> bool:
    """Zeros of x's shape: a constant of x's static shape, or ``ConstantOfShape(Shape(v))`` with v
    x, zeros like it, or one of the loop's running sums (``sums``: their ids), which are x's shape
    when all their leaves are (a broadcast would change the output's shape)."""
    if value.const is not None:
        return not np.any(value.const) and list(value.const.shape) == shape_of(x)
    node = value.producer
    if node is None or node.op_type != "ConstantOfShape" or not _is_zeros(value):
        return False
    shape = node.input(0)
    if shape.const is not None:
        return [int(d) for d in np.ravel(shape.const)] == shape_of(x)
    source = shape.producer
    if source is None or source.op_type != "Shape" or source.attr("start") is not None or source.attr("end") is not None:
        return False
    v = source.input(0)
    return v is x or id(v) in sums or _zeros_like(v, x, sums)


def _unexpanded(value: Value, width) -> Value:
    """u from ``Expand(u, shape)`` (or u itself) where u has the scatter target's static ``width``
    columns. The Expand can then only repeat rows, and only a single one (one token): its copies
    scatter the same values to the same token, as u alone does."""
    node = value.producer
    u = node.input(0) if node is not None and node.op_type == "Expand" else value
    own = shape_of(u)
    if not isinstance(width, int) or own is None or len(own) != 2 or own[1] != width:
        raise Mismatch(f"the scattered rows are not [rows, {width}]")
    return u


def _gate_rows(value: Value) -> tuple[Value, int, Value, Value]:
    """(weights [T, k], k, slot, tok) for ``Reshape*(Gather(Flatten(Unsqueeze(weights, 2), 2), slot
    + tok * k))`` (``weights[tok, slot, None]``), the Reshapes keeping ``[rows, 1]``."""
    while value.producer is not None and value.producer.op_type == "Reshape" and _column(value) \
            and _column(value.producer.input(0)):
        value = value.producer.input(0)
    gather = producer(value, "Gather")
    flat = producer(gather.input(0), "Flatten")
    column = producer(flat.input(0), "Unsqueeze")
    weights = column.input(0)
    if gather.attr("axis", 0) != 0 or flat.attr("axis", 1) != 2 or ints(column, 1, "axes") not in ([2], [-1]) \
            or shape_of(weights) is None or len(shape_of(weights)) != 2:
        raise Mismatch("the gate weights are not read from the flattened [tokens, k] weights")
    add = producer(gather.input(1), "Add")
    for slot, scaled in ((add.input(0), add.input(1)), (add.input(1), add.input(0))):
        mul = scaled.producer
        if mul is None or mul.op_type != "Mul":
            continue
        for tok, stride in ((mul.input(0), mul.input(1)), (mul.input(1), mul.input(0))):
            if stride.const is not None and stride.const.size == 1:
                return weights, int(stride.const.ravel()[0]), slot, tok
    raise Mismatch("the gate weights are not read at tok * k + slot")


def _column(value: Value) -> bool:
    shape = shape_of(value)
    return shape is not None and len(shape) == 2 and shape[1] == 1


def _expert_rows(tok: Value) -> tuple[Value, Value, Value]:
    """(mask, e, slot) for ``slot, tok = Squeeze(Split(Transpose(NonZero(mask[e])), axis 1), 1)``."""
    tok_squeeze = producer(tok, "Squeeze")
    split = producer(tok_squeeze.input(0), "Split")
    if split.attr("axis", 0) not in (1, -1) or len(split.outputs) != 2 or split.outputs[1] is not tok_squeeze.input(0):
        raise Mismatch("the expert's tokens are not the second column of its NonZero")
    slot_squeeze = [c for c in split.outputs[0].consumers() if c.op_type == "Squeeze"]
    if len(slot_squeeze) != 1 or any(ints(n, 1, "axes") not in ([1], [-1]) for n in (slot_squeeze[0], tok_squeeze)):
        raise Mismatch("the expert's slots and tokens are not squeezed columns")
    transpose = producer(split.input(0), "Transpose")
    if list(transpose.attr("perm", [])) != [1, 0]:
        raise Mismatch("the NonZero of the expert's mask is not transposed [1, 0]")
    nonzero = producer(transpose.input(0), "NonZero")
    cast = nonzero.input(0).producer  # NonZero of Cast(one-hot, bool) reads the one-hot's non-zeros
    to_bool = cast is not None and cast.op_type == "Cast" and cast.attr("to") == onnx.TensorProto.BOOL
    row = producer(cast.input(0) if to_bool else nonzero.input(0), "Gather")
    if row.attr("axis", 0) != 0:
        raise Mismatch("the expert's mask is not a row of the expert mask")
    return row.input(0), row.input(1), slot_squeeze[0].outputs[0]


def _one_hot_mask(mask: Value) -> Node:
    """The OneHot under ``mask = Transpose(OneHot(ids, depth, [0, on]), [2, 1, 0])``: ``mask[e]`` is
    ``[k, T]``, so NonZero's columns are (slot, token)."""
    transpose = producer(mask, "Transpose")
    onehot = producer(transpose.input(0), "OneHot")
    values = onehot.input(2).const if onehot.input(2) is not None else None
    if list(transpose.attr("perm", [])) != [2, 1, 0] or onehot.attr("axis", -1) not in (-1, 2) or values is None \
            or values.size != 2 or values.ravel()[0] != 0 or values.ravel()[1] == 0:
        raise Mismatch("the expert mask is not the router ids' one-hot, transposed [2, 1, 0]")
    return onehot


def _hit_expert(expert: Value) -> tuple[Node, int]:
    """(Split, i) for ``e = Gather(Squeeze(Split(Transpose(hits), axis 0)[i], 0), 0)``, pieces of one."""
    gather = producer(expert, "Gather")
    index = gather.input(1).const
    if gather.attr("axis", 0) != 0 or index is None or index.size != 1 or int(index.ravel()[0]) != 0:
        raise Mismatch("the expert id is not the first element of its piece of the ids hit")
    squeeze = producer(gather.input(0), "Squeeze", "Reshape")
    split = producer(squeeze.input(0), "Split")
    sizes = split.input(1).const if len(split.inputs) > 1 and split.input(1) is not None else None
    if split.attr("axis", 0) != 0 or sizes is None or not np.all(np.ravel(sizes) == 1):
        raise Mismatch("the ids of the experts hit are not split into pieces of one")
    return split, split.outputs.index(squeeze.input(0))


def _check_expert_hits(split: Node, mask: Value) -> None:
    """The split ids are ``NonZero(ReduceSum(mask, all but the expert axis) > 0)``: every expert hit."""
    transpose = producer(split.input(0), "Transpose")
    nonzero = producer(transpose.input(0), "NonZero")
    greater = producer(nonzero.input(0), "Greater")
    total = producer(greater.input(0), "ReduceSum")
    zero = greater.input(1).const
    rank = len(shape_of(mask) or [])
    axes = sorted(a % rank for a in (ints(total, 1, "axes") or [])) if rank else None
    hits = shape_of(nonzero.input(0))
    # a zero of shape [1, 1] would make the hits [1, E] and each piece (0, e): every step expert 0
    if list(transpose.attr("perm", [])) != [1, 0] or zero is None or zero.size != 1 or zero.ndim > 1 \
            or np.any(zero) or total.input(0) is not mask or hits is None or len(hits) != 1 \
            or axes != list(range(1, rank)) or total.attr("keepdims", 1) != 0:
        raise Mismatch("the experts looped over are not those the mask routes any token to")


def _gathered_linear(value: Value, expert: Value) -> tuple[tuple[Value, bool], Value | None, Value]:
    """``a @ Gather(W, e)`` (W ``[E, in, out]``) or ``a @ Transpose(Gather(W, e))`` (``[E, out, in]``),
    plus an optional ``Gather(b, e)``; returns ((W, is out-in), b, a)."""
    bias = None
    node = value.producer
    if node is not None and node.op_type == "Add":
        for inner, other in ((node.input(0), node.input(1)), (node.input(1), node.input(0))):
            picked = other.producer
            if picked is not None and picked.op_type == "Gather" and picked.input(1) is expert \
                    and picked.attr("axis", 0) == 0 and picked.input(0).const is not None \
                    and picked.input(0).const.ndim >= 2 and all(d == 1 for d in picked.input(0).const.shape[1:-1]):
                bias, node = picked.input(0), inner.producer
                break
    if node is None or node.op_type != "MatMul":
        raise Mismatch(f"an expert layer is {node.op_type if node else 'an input'}, not a MatMul by gathered weights")
    weight, out_in = node.input(1), False
    if weight.producer is not None and weight.producer.op_type == "Transpose" \
            and list(weight.producer.attr("perm", [])) == [1, 0]:
        weight, out_in = weight.producer.input(0), True
    gather = producer(weight, "Gather")
    if gather.attr("axis", 0) != 0 or gather.input(1) is not expert or gather.input(0).const is None \
            or gather.input(0).const.ndim != 3:
        raise Mismatch("an expert layer's weights are not this step's expert of one stacked constant")
    return (gather.input(0), out_in), bias, node.input(0)


# --- com.microsoft.MoE ----------------------------------------------------------------------

# com.microsoft.MoE activation_type -> sparsec.MoE activation, checked against ORT's CPU kernel (its "gelu"
# differs from erf-GELU by ~4e-4: not the same function, so it is not rewritten).
_CONTRIB_ACTIVATIONS = {"relu": "relu", "silu": "silu"}


def contrib(node: Node) -> MoEMatch:
    """ONNX Runtime's ``com.microsoft.MoE``: softmax before top-k; expert weights stored ``[E, out, in]``."""
    act = node.attr("activation_type", "relu")
    if isinstance(act, bytes):
        act = act.decode()
    if act not in _CONTRIB_ACTIVATIONS:
        raise Mismatch(f"activation_type {act!r} has no kernel yet (supported: {', '.join(_CONTRIB_ACTIVATIONS)})")
    if node.attr("use_sparse_mixer", 0):
        raise Mismatch("use_sparse_mixer routing is not supported")
    fc1, fc2 = const(node.input(2), "fc1_experts_weights"), const(node.input(4), "fc2_experts_weights")
    if fc1.ndim != 3 or fc2.ndim != 3:
        raise Mismatch("expert weights are not 3-D constants")
    experts, ffn, hidden = fc1.shape
    if fc2.shape != (experts, hidden, ffn):
        raise Mismatch(f"fc1 {list(fc1.shape)} and fc2 {list(fc2.shape)} are not [E, F, H] and [E, H, F]")

    def optional(index: int, what: str):
        return const(node.input(index), what) if len(node.inputs) > index and node.input(index) is not None else None

    b1 = expert_bias(optional(3, "fc1_experts_bias"), experts, ffn, "fc1_experts_bias")
    b2 = expert_bias(optional(5, "fc2_experts_bias"), experts, hidden, "fc2_experts_bias")
    if optional(6, "fc3_experts_weights") is not None:
        # The semantics of fc3 (act(fc1 x) * fc3 x, as documented) cannot be checked here: ORT's CPU
        # kernel refuses it ("FC3 is not implemented for CPU MoE"), and exact rewrites need a reference.
        raise Mismatch("gated experts (fc3) are not rewritten: ONNX Runtime's CPU kernel does not implement "
                       "them, so there is no reference to check the rewrite against")
    w1, w2 = np.ascontiguousarray(fc1.transpose(0, 2, 1)), np.ascontiguousarray(fc2.transpose(0, 2, 1))
    _check_hidden_width(w1, w2, False)
    return MoEMatch(node.input(0), node.input(1), w1, b1, w2, b2, int(node.attr("k", 1)), _CONTRIB_ACTIVATIONS[act],
                    "before", int(node.attr("normalize_routing_weights", 0)), False, "com.microsoft.MoE")
