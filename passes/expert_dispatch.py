"""``moe-dispatch`` (exact, default): a mixture of experts that computes more than the router
selects (every expert, masked; or the chosen experts' weights copied per token) becomes one
``sparsec.MoE`` node that runs only the experts each token's router picked.

The forms it recognises, and why each rewrite is exact, are in ``moe_forms``; a candidate that
fails a condition is left as it is, with a note in the report saying which.

ReLU experts (plain or gated) also skip, for an expert with a single row, the rows of W2 whose
activation is exactly zero (``skip_zeros`` on the node, decided here: W2 must be finite, since
0 * inf is NaN, not 0). The CPU kernel reads those rows from a row-major copy of W2, held
besides its panels unless the layer only ever sees one token; the report gives the copy's bytes.

Options (``pass_options={"moe-dispatch": {...}}``, or ``-O moe-dispatch.KEY=VALUE``):
``zero_skip`` = ``"auto"`` (default, as above) or ``"off"`` (every row of W2 is read; W2 held once).
"""

from __future__ import annotations

import numpy as np

from sparsec.ir.graph import Graph, Node
from sparsec.ir.types import TensorType
from sparsec.ops import DOMAIN
from sparsec.passmanager import Pass, PassContext, PassResult, register_pass

from . import moe_forms
from .moe_match import Mismatch, MoEMatch, producer


def _sums_weighted_slots(node: Node) -> bool:
    """ReduceSum(Reshape(Mul(y, Unsqueeze(Reshape(weights, [-1]))))): the batched_mm anchor."""
    try:
        mul = producer(producer(node.input(0), "Reshape").input(0), "Mul")
    except Mismatch:
        return False
    for scale in mul.inputs:
        try:
            moe_forms._flat_rows(moe_forms._unsqueezed_last(scale))
            return True
        except Mismatch:
            continue
    return False


def _sums_masked_experts(node: Node) -> bool:
    """ReduceSum(Mul(...)): the dense-masked anchor."""
    mul = node.input(0).producer if node.input(0) is not None else None
    return mul is not None and mul.op_type == "Mul"


def _tops_an_expert_sum(node: Node) -> bool:
    """The top Add of a sum with a term ``y * gate[:, e:e+1]``: the unrolled anchor."""
    if node.op_type != "Add" or node.domain not in ("", "ai.onnx"):
        return False
    if any(c.op_type == "Add" for c in node.outputs[0].consumers()):
        return False
    for term in moe_forms.sum_terms(node.outputs[0]):
        mul = term.producer
        if mul is not None and mul.op_type == "Mul" and any(moe_forms._gate_column(v) for v in mul.inputs):
            return True
    return False


def _einsum_over_experts(node: Node) -> bool:
    """Einsum("eth,te->th", y, gate): the dense-masked anchor written as an Einsum."""
    return node.op_type == "Einsum" and node.domain in ("", "ai.onnx") and len(node.inputs) == 2 and any(
        v.producer is not None and v.producer.op_type == "ScatterElements" for v in node.inputs)


def _tops_a_scattered_sum(node: Node) -> bool:
    """The top Add of a sum of rows scattered at ids NonZero found (a shared expert may be added
    above it): the eager anchor."""
    def scattered_sum(add: Node) -> bool:
        if add.op_type != "Add" or add.domain not in ("", "ai.onnx"):
            return False
        terms = [term.producer for term in moe_forms.sum_terms(add.outputs[0])]
        return bool(terms) and all(t is not None and t.op_type == "ScatterElements" and
                                   _derives_from(t.input(1), "NonZero", hops=6) for t in terms)
    return scattered_sum(node) and not any(scattered_sum(c) for c in node.outputs[0].consumers())


def _is_contrib_moe(node: Node) -> bool:
    return node.op_type == "MoE" and node.domain == "com.microsoft"


def _is_reduce_sum(node: Node) -> bool:
    return node.op_type == "ReduceSum" and node.domain in ("", "ai.onnx")


# (form, is the node a candidate?, recogniser): a candidate that does not match gets a note.
FORMS = [
    ("batched_mm", lambda n: _is_reduce_sum(n) and _sums_weighted_slots(n), moe_forms.batched_mm),
    ("stacked", lambda n: _is_reduce_sum(n) and _sums_masked_experts(n), moe_forms.dense_masked),
    ("stacked", _einsum_over_experts, moe_forms.dense_masked),
    ("unrolled", _tops_an_expert_sum, moe_forms.unrolled),
    ("eager", _tops_a_scattered_sum, moe_forms.eager),
    ("com.microsoft.MoE", _is_contrib_moe, moe_forms.contrib),
]


@register_pass
class MoEDispatch(Pass):
    name = "moe-dispatch"
    description = "mixture-of-experts that computes every expert -> dispatch that runs only the selected ones (exact)"
    exact = True
    default = True

    @staticmethod
    def find(graph: Graph):
        """Each candidate in graph order: (anchor node, form, its match or why it does not match).
        A generator: the caller may rewrite each match before the next is recognised (a stacked
        layer's input is the previous layer's output)."""
        for node in list(graph.walk()):
            if node.graph is None:
                continue
            for form, is_candidate, recognise in FORMS:
                if not is_candidate(node):
                    continue
                try:
                    yield node, form, recognise(node)
                except Mismatch as why:
                    yield node, form, why
                break

    @classmethod
    def candidates(cls, graph: Graph) -> list[str]:
        return [f"{node.name}: {match.describe()}" for node, _, match in cls.find(graph) if isinstance(match, MoEMatch)]

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        result = PassResult()
        zero_skip = str(ctx.options_of(self.name).get("zero_skip", "auto")).lower() not in ("off", "false", "0")
        for node, form, match in self.find(graph):
            if isinstance(match, Mismatch):
                result.notes.append(f"{node.name}: looks like a {form} MoE but is not rewritten: {match}")
                continue
            if not 1 <= match.k <= match.experts:
                result.notes.append(f"{node.name}: a {form} MoE picking the top {match.k} of {match.experts} experts "
                                    "is not rewritten (k must be between 1 and the number of experts)")
                continue
            if not ctx.has_kernel("MoE"):
                result.notes.append(f"{node.name}: a {form} MoE with {match.experts} experts, top-{match.k}, not rewritten: "
                                    f"no expert dispatch kernel for {ctx.target}")
                continue
            x_shape = match.x.type.shape if isinstance(match.x.type, TensorType) else None
            tokens = x_shape[0] if x_shape else None
            # the CPU kernels' row gather (targets with relu-skip's kernel) does the skipping
            skip = (zero_skip and match.activation == "relu" and ctx.has_kernel("ReluSkipMatMul")
                    and bool(np.isfinite(match.w2).all()))
            _rewrite(node, match, skip)
            result.rewrites[self.name] += 1
            detail = {"node": node.name, "experts": match.experts, "k": match.k, "activation": match.activation,
                      "gated": match.gated, "softmax": match.softmax, "normalize": bool(match.normalize),
                      "tokens": tokens, "layout": match.layout, "skip_zeros": skip}
            if skip and tokens != 1:
                detail["row_copy_bytes"] = int(match.w2.size) * 4
                result.notes.append(f"{node.name}: ReLU experts skip the W2 rows of zero activations, from a row-major "
                                    f"copy of W2 ({match.w2.size * 4 / 2**20:.1f} MB more; -O moe-dispatch.zero_skip=off "
                                    "holds it once)")
            result.details.setdefault("moe", []).append(detail)
            if match.traced_experts is not None:
                result.notes.append(
                    f"{node.name}: transformers' 'eager' experts, a loop unrolled for the {match.traced_experts} experts "
                    f"hit while tracing: the file runs only on inputs that route to exactly {match.traced_experts} of "
                    f"the {match.experts} experts (ONNX Runtime fails on others); the dispatch runs on every input.")
        if result.rewrites:
            graph.eliminate_dead_code()  # the rewritten loops' NonZeros are gone before looking for the rest
        for nonzero, count in _loops_unrolled_at_trace_time(graph):
            result.notes.append(
                f"{nonzero.name}: a mixture of experts exported from an expert loop unrolled for the {count} experts hit "
                f"while tracing (NonZero -> Split into {count}, transformers' 'eager' experts): the file runs only on "
                f"inputs that route to exactly {count} experts, and ONNX Runtime fails on others; not rewritten. "
                "Re-export with experts_implementation='batched_mm', which moe-dispatch turns into dispatch.")
            result.details.setdefault("trace_specialised", []).append({"node": nonzero.name, "experts_traced": count})
        return result


def _loops_unrolled_at_trace_time(graph: Graph):
    """(NonZero, n) where the ids of the experts hit (NonZero over a one-hot expert mask) are split
    into a fixed n pieces along the data-dependent axis: a Python loop over them, traced once."""
    for node in graph.walk():
        if node.op_type != "NonZero" or not _derives_from(node.input(0), "OneHot", hops=4):
            continue
        for transpose in node.outputs[0].consumers():
            if transpose.op_type != "Transpose" or list(transpose.attr("perm", [])) != [1, 0]:
                continue
            for split in transpose.outputs[0].consumers():
                if split.op_type == "Split" and split.attr("axis", 0) == 0:
                    yield node, len(split.outputs)


def _derives_from(value, op_type: str, hops: int) -> bool:
    node = value.producer if value is not None else None
    if node is None or hops < 0:
        return False
    return node.op_type == op_type or any(_derives_from(v, op_type, hops - 1) for v in node.inputs if v is not None)


def _rewrite(anchor: Node, match: MoEMatch, skip_zeros: bool = False) -> None:
    """Replace the anchor's output by one sparsec.MoE node; the rest of the old form is dead code."""
    g = anchor.graph
    weights = [g.add_constant(np.ascontiguousarray(array, np.float32), f"{anchor.name}_{key}")
               for key, array in (("w1", match.w1), ("b1", match.b1), ("w2", match.w2), ("b2", match.b2))]
    node = g.add_node("MoE", [match.x, match.logits, *weights],
                      {"k": match.k, "activation": match.activation, "softmax": match.softmax,
                       "normalize": match.normalize, "gated": int(match.gated), "skip_zeros": int(skip_zeros)},
                      domain=DOMAIN, name=anchor.name + "_dispatch", before=anchor)
    node.outputs[0].type = anchor.outputs[0].type
    anchor.outputs[0].replace_all_uses_with(node.outputs[0])
    g.remove_node(anchor)
    g.root.opset_imports.setdefault(DOMAIN, 1)
