"""``sparse-weights``: MatMuls and Gemms whose constant weight is sparse run as BSR, N:M or CSR kernels.

Exact: the kernel multiplies by exactly the stored non-zero weights and skips only zeros (sums
may be reordered, as in any GEMM). A weight is rewritten only when (1) it is 2-D and feeds a
MatMul as its right operand, or is a Gemm's B (``x @ W + C`` or ``x @ W.T + C``, as torch
exports ``nn.Linear`` on 2-D inputs: no transA, alpha 1, C absent or a constant row), (2) it is at least 30% zeros, in the format that fits it best
(``sparse_formats.format_of``): BSR with the largest block shape that holds (R outputs x C
inputs, R the vector axis), else N:M (2:4, 4:8) compressed, else CSR (unstructured), and (3) the
host-measured cost model predicts a speed-up for that format at its density. Everything declined gets a note saying why; a model with no
sparse weights is left exactly as it was.

Options (``pass_options={"sparse-weights": {...}}``): ``policy`` = ``"auto"`` (cost model,
default), ``"always"`` (every weight with a usable block shape, for testing), ``"never"``;
``min_speedup`` (default 1.1); ``rows`` (the row count the cost model assumes when the model's is
symbolic, default 32). The CSR kernel needs a static row count (pin the model's dims).
"""

from __future__ import annotations

import numpy as np

from sparsec.analysis.sparsity import analyze
from sparsec.backends.tvm.targets import CPU_TARGETS
from sparsec.ir.graph import Graph, Node
from sparsec.ir.types import TensorType
from sparsec.ops import DOMAIN
from sparsec.passmanager import Pass, PassContext, PassResult, register_pass

from .sparse_cost import SparseCostModel, row_bucket
from .sparse_formats import SparseFormat, format_of

MIN_SPARSITY = 0.3  # below this no block kernel beats dense; skip the calibration cost


@register_pass
class SparseWeights(Pass):
    name = "sparse-weights"
    description = "sparse constant MatMul / Gemm weights run as BSR, N:M or CSR kernels when measured faster (exact)"
    exact = True
    default = True

    @staticmethod
    def candidates(graph: Graph) -> list[str]:
        """What ``sparsec inspect`` lists: sparse MatMul / Gemm weights and the format each would run in."""
        found = []
        for node in graph.walk():
            weight = _dense_weight(node)
            if weight is None or isinstance(weight, str):
                continue
            info = analyze(weight[0])
            if info.sparsity >= MIN_SPARSITY:
                found.append(f"{node.name}: {node.input(1).name} {info.sparsity:.0%} sparse, {format_of(info).describe()}")
        return found

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        options = ctx.options_of(self.name)
        policy = options.get("policy", "auto")
        result = PassResult()
        if policy == "never":
            return result
        # The cost model times kernels on this host: it speaks for the CPU targets alone.
        measured = ctx.target in CPU_TARGETS
        cost = None
        for node in list(graph.walk()):
            weight = _dense_weight(node)
            if weight is None:
                continue
            if isinstance(weight, str):
                if analyze(_as_out_in(node)).sparsity >= MIN_SPARSITY:
                    result.notes.append(f"{node.name}: sparse weight kept dense: {weight}")
                continue
            out_in, gemm_bias = weight
            info = analyze(out_in)
            if info.sparsity < MIN_SPARSITY:
                if info.sparsity > 0:
                    result.notes.append(f"{node.name}: {info.sparsity:.0%} sparse, too dense for a sparse kernel to pay")
                continue
            fmt = format_of(info)
            described = f"{info.sparsity:.0%} sparse, {fmt.describe()}"
            rows = _rows(node)
            if rows is None and fmt.needs_static_rows:
                result.notes.append(f"{node.name}: {described}, kept dense: the {fmt.kind.upper()} kernel needs a static "
                                    "row count; pin the model's dims (dims= / --dim)")
                continue
            if not ctx.has_kernel(fmt.op_type):
                result.notes.append(f"{node.name}: {described}, kept dense: no {fmt.kind.upper()} kernel for {ctx.target}")
                continue
            if policy == "auto" and not measured:
                result.notes.append(f"{node.name}: {described}, kept dense: the cost model measures this host's CPU, "
                                    f"not {ctx.target}; policy=always uses the {ctx.target} kernel (-O sparse-weights.policy=always)")
                continue
            detail = {"node": node.name, "weight": node.input(1).name, "shape": list(out_in.shape), "format": fmt.kind,
                      "block": fmt.label, "sparsity": round(info.sparsity, 4)}
            if policy == "auto":
                cost = cost or SparseCostModel(ctx.options.get("num_threads"))
                bucket = row_bucket(rows if rows is not None else int(options.get("rows", 32)))
                speedup = cost.predicted_speedup(bucket, out_in.shape[1], out_in.shape[0], fmt, fmt.work(info))
                detail.update(rows=bucket, predicted_speedup=round(speedup, 2))
                if speedup < float(options.get("min_speedup", 1.1)):
                    result.notes.append(f"{node.name}: {described}, kept dense: the measured cost model predicts "
                                        f"{speedup:.2f}x at {bucket} rows")
                    result.details.setdefault("declined", []).append(detail)
                    continue
            _rewrite(node, out_in, fmt, gemm_bias)
            result.rewrites[f"{self.name}.{fmt.kind}"] += 1
            result.details.setdefault("rewritten", []).append(detail)
        return result


def _dense_weight(node: Node) -> tuple[np.ndarray, np.ndarray | None] | str | None:
    """(W as ``[out, in]``, the Gemm's bias row or None) for a MatMul or Gemm whose weight is a
    constant 2-D float32; the reason, for a Gemm that is not ``x @ W (+ C)``; None otherwise."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in ("MatMul", "Gemm"):
        return None
    weight = node.input(1)
    if weight is None or weight.const is None or weight.const.ndim != 2 or weight.const.dtype.name != "float32":
        return None
    out_in = _as_out_in(node)
    if node.op_type == "MatMul":
        return out_in, None
    if node.attr("transA", 0) or node.attr("alpha", 1.0) != 1.0:
        return "the Gemm has transA or alpha != 1"
    n = out_in.shape[0]
    c = node.input(2) if len(node.inputs) > 2 else None
    if c is None:
        return out_in, None
    if c.const is None or c.const.size != n or c.const.shape[-1:] != (n,) or c.const.ndim > 2:
        return "the Gemm's C is not a constant row of biases"
    return out_in, (np.float32(node.attr("beta", 1.0)) * c.const.reshape(n)).astype(np.float32)


def _as_out_in(node: Node) -> np.ndarray:
    weight = node.input(1).const
    return weight if node.op_type == "Gemm" and node.attr("transB", 0) else weight.T


def _rows(node: Node) -> int | None:
    """Activation rows of the MatMul (the product of x's leading dims) when static."""
    x = node.input(0).type
    if isinstance(x, TensorType) and x.shape is not None and all(isinstance(d, int) for d in x.shape[:-1]):
        rows = 1
        for d in x.shape[:-1]:
            rows *= d
        return rows
    return None


def _sole_consumer(value, op_type: str) -> Node | None:
    users = value.consumers()
    if len(users) == 1 and not value.is_graph_output and users[0].op_type == op_type and users[0].domain in ("", "ai.onnx"):
        return users[0]
    return None


def _epilogue(node: Node, n: int, bias: np.ndarray | None) -> tuple[list[Node], np.ndarray | None, str]:
    """The bias Add (a constant [N] that does not raise the rank) and ReLU that follow the MatMul
    alone (a Gemm brings its own bias): folded into the kernel's write-back, so the output is
    written once. Returns (absorbed nodes, bias, activation)."""
    absorbed, activation, out = [], "none", node.outputs[0]
    add = _sole_consumer(out, "Add") if bias is None else None
    rank = len(out.type.shape) if isinstance(out.type, TensorType) and out.type.shape is not None else 0
    if add is not None:
        other = add.input(1) if add.input(0) is out else add.input(0)
        if other is not None and other.const is not None and other.const.dtype.name == "float32" and other.const.size == n \
                and other.const.shape[-1:] == (n,) and other.const.ndim <= rank:
            absorbed.append(add)
            bias, out = other.const.reshape(n), add.outputs[0]
    relu = _sole_consumer(out, "Relu")
    if relu is not None:
        absorbed.append(relu)
        activation = "relu"
    return absorbed, bias, activation


def _rewrite(node: Node, out_in, fmt: SparseFormat, bias: np.ndarray | None) -> None:
    g = node.graph
    n = int(out_in.shape[0])
    absorbed, bias, activation = _epilogue(node, n, bias)
    if bias is not None:
        bias = g.add_constant(np.ascontiguousarray(bias, np.float32), f"{node.name}_bias")
    sparse = fmt.add_node(g, node.input(0), out_in, bias, activation, f"{node.name}_{fmt.kind}", before=node)
    last = absorbed[-1] if absorbed else node
    sparse.outputs[0].type = last.outputs[0].type
    last.outputs[0].replace_all_uses_with(sparse.outputs[0])
    for dead in reversed([node, *absorbed]):
        g.remove_node(dead)
    g.remove_unused_constants()
    g.root.opset_imports.setdefault(DOMAIN, 1)
