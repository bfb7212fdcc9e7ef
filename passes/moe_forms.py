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
- ``contrib``: ONNX Runtime's ``com.microsoft.MoE`` op (TVM has no converter for it).

Each condition that makes the rewrite exact is checked here, from the graph's structure and its
inferred shapes; what cannot be proven is a ``Mismatch``.
"""

from __future__ import annotations

import numpy as np

from sparsec.ir.graph import Node, Value

from .moe_match import (Mismatch, MoEMatch, const, expert_bias, ints, match_activation, match_router, producer,
                        shape_of)


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
    node = value.producer
    if node is not None and node.op_type == "Add" and node.domain in ("", "ai.onnx"):
        return sum_terms(node.input(0)) + sum_terms(node.input(1))
    return [] if _is_zeros(value) else [value]


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
