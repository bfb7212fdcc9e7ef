"""``sparse-weights``: MatMuls, Gemms and 1x1 Convs whose constant weight is sparse run as BSR, N:M or CSR kernels.

Exact: the kernel multiplies by exactly the stored non-zero weights and skips only zeros (sums
may be reordered, as in any GEMM). A weight is rewritten only when (1) its op is in a form a
kernel computes (``sparse_sites``): a MatMul's 2-D right operand; a Gemm's B (``x @ W + C`` or
``x @ W.T + C``, as torch exports ``nn.Linear`` on 2-D inputs); a 1x1 convolution's weight over
a static NCHW input (no stride, padding or groups), (2) it is at least 30% zeros, in the format
that fits it best (``sparse_formats.format_of``): BSR with the largest block shape that holds
(R outputs x C inputs, R the vector axis), else N:M (2:4, 4:8) compressed, else CSR
(unstructured); a convolution always runs CSR over its pixels, and (3) the host-measured cost
model predicts a speed-up for that format at its density. Everything declined gets a note
saying why; a model with no sparse weights is left exactly as it was.

Options (``pass_options={"sparse-weights": {...}}``): ``policy`` = ``"auto"`` (cost model,
default), ``"always"`` (every weight with a usable block shape, for testing), ``"never"``;
``min_speedup`` (default 1.1); ``rows`` (the row count the cost model assumes when the model's is
symbolic, default 32). The CSR kernel needs a static row count (pin the model's dims).
"""

from __future__ import annotations

import numpy as np

from sparsec.analysis.sparsity import analyze
from sparsec.backends.tvm.targets import CPU_TARGETS
from sparsec.ir.graph import Graph
from sparsec.passmanager import Pass, PassContext, PassResult, register_pass

from .sparse_cost import SparseCostModel
from .sparse_formats import format_of
from .sparse_sites import Site, site_of

MIN_SPARSITY = 0.3  # below this no block kernel beats dense; skip the calibration cost


@register_pass
class SparseWeights(Pass):
    name = "sparse-weights"
    description = "sparse constant MatMul / Gemm / 1x1 Conv weights run as BSR, N:M or CSR kernels when measured faster (exact)"
    exact = True
    default = True

    @staticmethod
    def candidates(graph: Graph) -> list[str]:
        """What ``sparsec inspect`` lists: sparse weights and the format each would run in."""
        found = []
        for node in graph.walk():
            site = site_of(node)
            if not isinstance(site, Site):
                continue
            info = analyze(site.out_in)
            if info.sparsity >= MIN_SPARSITY:
                fmt = site.fixed_format() or format_of(info)
                found.append(f"{node.name}: {node.input(1).name} {info.sparsity:.0%} sparse, {fmt.describe()}")
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
            site = site_of(node)
            if site is None:
                continue
            if isinstance(site, str):
                weight = node.input(1).const
                sparsity = 1.0 - np.count_nonzero(weight) / max(weight.size, 1)
                if sparsity >= MIN_SPARSITY:
                    result.notes.append(f"{node.name}: {sparsity:.0%} sparse, kept dense: {site}")
                continue
            info = analyze(site.out_in)
            if info.sparsity < MIN_SPARSITY:
                if info.sparsity > 0:
                    result.notes.append(f"{node.name}: {info.sparsity:.0%} sparse, too dense for a sparse kernel to pay")
                continue
            fmt = site.fixed_format() or format_of(info)
            described = f"{info.sparsity:.0%} sparse, {fmt.describe()}"
            if site.rows is None and fmt.needs_static_rows:
                result.notes.append(f"{node.name}: {described}, kept dense: the {fmt.kind.upper()} kernel needs a static "
                                    "row count; pin the model's dims (dims= / --dim)")
                continue
            if not ctx.has_kernel(fmt.op_type) or (site.channels_first and ctx.target not in CPU_TARGETS):
                result.notes.append(f"{node.name}: {described}, kept dense: no {fmt.kind.upper()} kernel "
                                    f"{'for 1x1 convolutions ' if site.channels_first else ''}for {ctx.target}")
                continue
            if policy == "auto" and not measured:
                result.notes.append(f"{node.name}: {described}, kept dense: the cost model measures this host's CPU, "
                                    f"not {ctx.target}; policy=always uses the {ctx.target} kernel (-O sparse-weights.policy=always)")
                continue
            detail = {"node": node.name, "op": node.op_type, "weight": node.input(1).name, "shape": list(site.out_in.shape),
                      "format": fmt.kind, "block": fmt.label, "sparsity": round(info.sparsity, 4)}
            if policy == "auto":
                cost = cost or SparseCostModel(ctx.options.get("num_threads"))
                bucket = fmt.rows_bucket(site.rows if site.rows is not None else int(options.get("rows", 32)))
                speedup = cost.predicted_speedup(bucket, site.out_in.shape[1], site.out_in.shape[0], fmt, fmt.work(info))
                detail.update(rows=bucket, predicted_speedup=round(speedup, 2))
                if speedup < float(options.get("min_speedup", 1.1)):
                    result.notes.append(f"{node.name}: {described}, kept dense: the measured cost model predicts "
                                        f"{speedup:.2f}x at {bucket} rows")
                    result.details.setdefault("declined", []).append(detail)
                    continue
            site.rewrite(fmt)
            result.rewrites[f"{self.name}.{fmt.kind}"] += 1
            result.details.setdefault("rewritten", []).append(detail)
        return result
