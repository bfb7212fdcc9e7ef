"""What is in a model: ops, parameters, per-weight sparsity, and what each pass could do with it."""

from __future__ import annotations

from collections import Counter

import numpy as np

from .analysis.sparsity import analyze, out_in_weight
from .ir.graph import Graph

WEIGHT_OPS = {"MatMul", "Gemm", "Conv", "ConvTranspose", "Einsum", "MatMulInteger", "QLinearMatMul"}


def weight_stats(graph: Graph) -> list[dict]:
    """Constant weights feeding GEMM-like ops, with their sparsity."""
    rows, seen = [], set()
    for node in graph.walk():
        if node.op_type not in WEIGHT_OPS:
            continue
        for value in node.inputs:
            if value is None or value.const is None or value.const.ndim < 2 or id(value) in seen:
                continue
            seen.add(id(value))
            array = value.const
            nonzero = int(np.count_nonzero(array)) if array.dtype.kind in "fiub" else array.size
            row = {"name": value.name, "op": node.op_type, "node": node.name, "shape": list(array.shape),
                   "dtype": str(array.dtype), "sparsity": round(1.0 - nonzero / max(array.size, 1), 4),
                   "structure": "dense" if nonzero == array.size else "unstructured", "blocks": [], "nm": []}
            out_in = out_in_weight(node.op_type, array, {"transB": node.attr("transB", 0)}) if array.dtype.kind == "f" else None
            if out_in is not None and nonzero < array.size:
                info = analyze(out_in)
                row.update(structure=info.structure, blocks=[f"{r}x{c}" for r, c in info.blocks],
                           nm=[f"{n}:{m}" for n, m in info.nm])
            rows.append(row)
    return rows


def summarize(graph: Graph) -> dict:
    from sparsec.backends.tvm.lower import unsupported_ops

    from .passmanager import registered_passes

    constants = [v for g in graph.all_graphs() for v in g.initializers.values() if v.const is not None]
    candidates = {}
    for cls in registered_passes():
        probe = getattr(cls, "candidates", None)
        if probe:  # passes that can tell beforehand what they would rewrite
            candidates[cls.name] = probe(graph)
    return {
        "inputs": [f"{v.name}: {v.type}" for v in graph.inputs if v.const is None],
        "outputs": [f"{v.name}: {v.type}" for v in graph.outputs],
        "opsets": {d or "ai.onnx": v for d, v in graph.opset_imports.items()},
        "nodes": sum(1 for _ in graph.walk()),
        "ops": dict(Counter(n.qualified_op for n in graph.walk()).most_common()),
        "parameters": int(sum(v.const.size for v in constants)),
        "parameter_bytes": int(sum(v.const.nbytes for v in constants)),
        "weights": weight_stats(graph),
        "pass_candidates": candidates,
        "tvm_unsupported": [{"op": o, "domain": d or "ai.onnx", "node": n, "opset": s} for o, d, n, s in unsupported_ops(graph)],
    }
