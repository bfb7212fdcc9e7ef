"""``relu-skip``: the MatMul after a Relu skips the weight rows whose activations are all zero.

In an FFN ``MatMul -> (Add) -> Relu -> MatMul(W2)``, row j of W2 contributes ``h[:, j] * W2[j, :]``,
which is exactly zero when column j of the Relu output is zero in every row. The rewrite turns
``MatMul(Relu(...), W2) [+ bias]`` into ``sparsec.ReluSkipMatMul(h, W2[, bias])``, whose kernel
finds the active columns of each call's activations and multiplies by those rows of W2 only
(running the dense product at run time when too few are zero). Exact: skipped terms are exact
zeros, so only the order of the sums changes.

A MatMul, or a Gemm that is one (no transA, alpha and beta 1, C a constant row: HF OPT's fc2), is
rewritten when (1) its left input is a Relu output (directly; the Relu stays and may
have other consumers), float32, with a static last dim, (2) its right input is a constant 2-D
float32 weight with finite values (0 * inf would be NaN, not 0), (3) that weight is not itself
sparse (those are ``sparse-weights``' to take), (4) the product is large enough to pay for the
scan, and (5) the target is the CPU (the kernel is a CPU kernel). A bias Add right after it (a
constant of N values) is fused. MatMuls fed by another activation are noted, not rewritten:
only Relu's zeros are exact and frequent.

Options (``pass_options={"relu-skip": {...}}``, or ``-O relu-skip.KEY=VALUE``): ``row_copy`` =
``"auto"`` (default: the CPU kernel keeps a row-major copy of W for calls with fewer than 4 rows,
noted in the report with its bytes) or ``"off"`` (no copy: W is held once and small row counts
gather from the panels, about half as fast at one token).
"""

from __future__ import annotations

import numpy as np

from sparsec.ir.graph import Graph, Node, Value
from sparsec.ir.types import TensorType
from sparsec.ops import DOMAIN
from sparsec.passmanager import Pass, PassContext, PassResult, register_pass

# A weight with this many exact zeros is weight-sparse: the sparse-weights pass handles it.
WEIGHT_SPARSE = 0.2
# Below this many weight elements the dense product takes a few microseconds: nothing to win.
MIN_WEIGHT_ELEMENTS = 4096
# Activations whose outputs feed FFN MatMuls but whose zeros are not exact (noted when declined).
OTHER_ACTIVATIONS = {"Sigmoid", "Tanh", "Gelu", "Erf", "LeakyRelu", "Elu", "Selu", "Celu", "Softplus",
                     "HardSigmoid", "HardSwish", "PRelu", "Mish", "ThresholdedRelu", "Clip"}


@register_pass
class ReluSkip(Pass):
    name = "relu-skip"
    description = "MatMul after Relu multiplies only by the weight rows of non-zero activations, decided per call (exact)"
    exact = True
    default = True

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        result = PassResult()
        row_copy = str(ctx.options_of(self.name).get("row_copy", "auto")).lower() not in ("off", "false", "0")
        for node in list(graph.nodes):  # top level only: If/Loop bodies are left as they are
            if node.op_type not in ("MatMul", "Gemm") or node.domain not in ("", "ai.onnx") or node.graph is None:
                continue
            producer = node.input(0).producer if node.input(0) is not None else None
            if producer is None or producer.domain not in ("", "ai.onnx"):
                continue
            if producer.op_type in OTHER_ACTIVATIONS and _is_weight(node.input(1)):
                result.notes.append(f"{node.name}: its input is a {producer.op_type} output, not Relu: "
                                    "no exact zeros to skip")
                continue
            if producer.op_type != "Relu":
                continue
            why = _declined(node, ctx)
            if why:
                result.notes.append(f"{node.name}: after Relu {producer.name!r} but {why}")
                continue
            extra = _row_copy_bytes(node) if row_copy else 0
            detail = _rewrite(graph, node, producer, row_copy)
            if extra:
                detail["row_copy_bytes"] = extra
                result.notes.append(f"{node.name}: the kernel also holds W row-major ({extra / 2**20:.1f} MB more) for "
                                    "calls with fewer than 4 rows, so their gathers read whole rows")
            result.rewrites[self.name] += 1
            result.details.setdefault("rewritten", []).append(detail)
        return result


def _is_weight(value: Value | None) -> bool:
    return value is not None and value.const is not None and value.const.ndim == 2


def _weight(node: Node) -> np.ndarray | None:
    """W as ``[F, N]``: MatMul's right input, or Gemm's B (transposed when ``transB``)."""
    value = node.input(1)
    if value is None or value.const is None:
        return None
    if node.op_type == "Gemm" and node.attr("transB", 0) and value.const.ndim == 2:
        return value.const.T
    return value.const


def _gemm_declined(node: Node) -> str | None:
    """Why a ``Gemm(h, B[, C])`` is not ``h @ W (+ bias)``, or None. (HF OPT's fc2 is a Gemm.)"""
    if node.attr("transA", 0):
        return "it is a Gemm with transA (the kernel reads the activations row by row)"
    c = node.input(2)
    if node.attr("alpha", 1.0) != 1.0 or (c is not None and node.attr("beta", 1.0) != 1.0):
        return "it is a Gemm with alpha or beta other than 1"
    w = _weight(node)
    if c is not None and (c.const is None or c.const.dtype != np.float32 or w is None or w.ndim != 2
                          or c.const.size not in (1, w.shape[1]) or c.const.ndim > 2
                          or (c.const.ndim == 2 and c.const.shape[0] != 1)):
        return "its C is not a constant row of N values (the kernel adds one bias per column)"
    return None


def _declined(node: Node, ctx: PassContext) -> str | None:
    """Why ``MatMul(Relu(..), W)`` (or the Gemm form) cannot be rewritten, or None when it can."""
    h, weight = node.input(0), node.input(1)
    if not ctx.has_kernel("ReluSkipMatMul"):
        return f"the relu-skip kernel exists for CPU targets only, not {ctx.target}"
    if weight is None or weight.const is None:
        return "its weight is not a constant (the kernel reads W's rows by index, packed at compile time)"
    if node.op_type == "Gemm":
        why = _gemm_declined(node)
        if why:
            return why
    w = _weight(node)
    if w.ndim != 2:
        return f"its weight is {w.ndim}-D, not a 2-D matrix"
    if w.dtype != np.float32 or h.dtype != "float32":
        return f"it is {h.dtype} x {w.dtype}; the kernel is float32"
    shape = h.shape
    if shape is None or len(shape) < 2 or shape[-1] != w.shape[0]:
        return f"its input shape {shape} is not [..., {w.shape[0]}] with rows (rank >= 2)"
    if w.size < MIN_WEIGHT_ELEMENTS:
        return f"its weight {list(w.shape)} is too small to pay for the scan"
    if not np.isfinite(w).all():
        return "its weight holds inf or NaN (0 * inf is NaN: skipping would change the result)"
    zeros = float(np.count_nonzero(w == 0)) / w.size
    if zeros >= WEIGHT_SPARSE:
        return f"its weight is {zeros:.0%} zero: left to sparse-weights"
    return None


def _row_copy_bytes(node: Node) -> int:
    """Bytes of the row-major copy of W that the CPU kernel keeps when the row count can be small
    (a symbolic count, or a static one below 4): 0 when it does not."""
    from sparsec.backends.tvm.kernels.relu_skip import needs_rows_copy, padded_width, tile_shape

    lead = node.input(0).shape[:-1]
    rows = int(np.prod(lead)) if all(isinstance(d, int) for d in lead) else None
    if not needs_rows_copy(rows):
        return 0
    f, n = _weight(node).shape
    return f * padded_width(n, tile_shape()[1]) * 4


def _fusable_bias(node: Node, n: int) -> tuple[Node, Value] | None:
    """The ``Add(y, b)`` right after the MatMul when b is a constant of N values that does not
    change y's shape (``[N]``, ``[1, N]``, ...), so it folds into the kernel's write-back."""
    out = node.outputs[0]
    consumers = out.consumers()
    if out.is_graph_output or len(consumers) != 1 or len(out.uses()) != 1:
        return None
    add = consumers[0]
    if add.op_type != "Add" or add.domain not in ("", "ai.onnx"):
        return None
    other = add.input(1) if add.input(0) is out else add.input(0)
    if other is None or other.const is None or other.const.dtype != np.float32 or other.const.size != n:
        return None
    if other.const.ndim == 0:
        return None
    if other.const.shape[-1] != n or other.const.ndim > len(out.shape or ()):
        return None
    return add, other


def _rewrite(graph: Graph, node: Node, relu: Node, row_copy: bool) -> dict:
    h, weight = node.input(0), node.input(1)
    weight_name = weight.name
    w = _weight(node)
    if w is not weight.const:  # Gemm's transB: the kernel takes W as [F, N]
        weight = graph.add_constant(np.ascontiguousarray(w), weight.name + "_fxn")
    n = w.shape[1]
    inputs = [h, weight]
    replaced = node.outputs[0]
    bias = None
    c = node.input(2) if node.op_type == "Gemm" else None
    if c is not None:  # Gemm's C: one value per column (or one for all)
        inputs.append(graph.add_constant(np.broadcast_to(c.const.reshape(-1), (n,)).copy(), c.name + "_bias"))
    else:
        bias = _fusable_bias(node, n)
    if bias is not None:
        add, value = bias
        flat = value.const.reshape(-1)
        inputs.append(value if value.const.ndim == 1 else graph.add_constant(flat, value.name + "_flat"))
        replaced = add.outputs[0]
    fused = graph.add_node("ReluSkipMatMul", inputs, None if row_copy else {"row_copy": 0}, domain=DOMAIN,
                           name=node.name + "_relu_skip", before=node, output_types=[replaced.type])
    if fused.outputs[0].type is None:
        fused.outputs[0].type = TensorType("float32", tuple(h.shape[:-1]) + (n,))
    replaced.replace_all_uses_with(fused.outputs[0])
    if bias is not None:
        graph.remove_node(bias[0])
    graph.remove_node(node)
    graph.remove_unused_constants()
    return {"node": node.name, "relu": relu.name, "weight": weight_name, "shape": list(w.shape),
            "bias": bias is not None or c is not None}
