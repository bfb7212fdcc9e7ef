"""``prune`` (approximate, opt-in): magnitude pruning of MatMul / Gemm / 1x1 Conv weights to a target
sparsity, so that a dense model can try sparsity in one command; the output error it causes is
measured and reported, never hidden.

Options (``pass_options={"prune": {...}}`` or ``--pass-option prune.KEY=VALUE``):
``sparsity`` (default 0.9), ``block`` (``"16x1"``: R outputs x C inputs; ``"1x1"`` unstructured;
``"2:4"`` N:M), ``scope`` (``"layer"``: every weight to the target; ``"global"``: one magnitude
threshold over all weights, tiles compared by their RMS), ``min_size`` (weights with fewer
elements are left alone, default 4096), ``calibration`` (an ``.npz`` of inputs; else seeded inputs
are generated), ``samples`` (generated batches, default 4), ``sample_dim`` (size given to dims the
compile did not pin, default 8).

The report (``details["prune"]``) lists every pruned weight with its sparsity and the error of the
model outputs on the calibration inputs: max abs, relative (max abs / max |dense|) and mean abs.
"""

from __future__ import annotations

import numpy as np

from sparsec.analysis.sparsity import out_in_weight
from sparsec.errors import SparsecError
from sparsec.ir.graph import Graph
from sparsec.passmanager import Pass, PassContext, PassResult, register_pass

from .pruning import magnitude_prune


def parse_structure(text: str) -> tuple[tuple[int, int], tuple[int, int] | None]:
    text = str(text).lower().strip()
    try:
        if ":" in text:
            n, m = (int(v) for v in text.split(":"))
            return (1, 1), (n, m)
        r, c = (int(v) for v in text.split("x"))
        return (r, c), None
    except ValueError:
        raise SparsecError(f"prune: block must look like 16x1 or 2:4, got {text!r}") from None


@register_pass
class Prune(Pass):
    name = "prune"
    description = "magnitude-prune MatMul/Gemm/1x1 Conv weights to a target sparsity (approximate: reports the output error)"
    exact = False
    default = False

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        options = ctx.options_of(self.name)
        sparsity = float(options.get("sparsity", 0.9))
        if not 0.0 <= sparsity < 1.0:
            raise SparsecError(f"prune: sparsity must be in [0, 1), got {sparsity}")
        block, nm = parse_structure(options.get("block", "1x1"))
        scope = options.get("scope", "layer")
        if scope not in ("layer", "global"):
            raise SparsecError(f"prune: scope must be 'layer' or 'global', got {scope!r}")
        result = PassResult()
        candidates = self._candidates(graph, int(options.get("min_size", 4096)), block, nm, result)
        if not candidates:
            return result
        reference = graph.clone()
        if scope == "global" and nm is None:
            sparsity_of = _global_sparsities(candidates, block, sparsity)
        else:
            sparsity_of = {id(v): sparsity for _, v, _ in candidates}
        pruned = []
        for node, weight, out_in in candidates:
            new = magnitude_prune(out_in, sparsity_of[id(weight)], block, nm)
            weight.const = np.ascontiguousarray(_as_stored(node, weight.const, new).astype(weight.const.dtype))
            pruned.append({"weight": weight.name, "node": node.name, "sparsity": round(float(1 - np.count_nonzero(new) / new.size), 4)})
            result.rewrites[self.name] += 1
        result.details["weights"] = pruned
        result.details["structure"] = options.get("block", "1x1")
        result.details["error"] = _output_error(reference, graph, options)
        return result

    @staticmethod
    def _candidates(graph, min_size, block, nm, result):
        found, seen = [], set()
        for node in graph.walk():
            if node.op_type not in ("MatMul", "Gemm", "Conv") or node.domain not in ("", "ai.onnx"):
                continue
            weight = node.input(1)
            if node.op_type == "Conv" and weight is not None and weight.const is not None and \
                    (node.attr("group", 1) != 1 or weight.const.shape[2:] != (1, 1)):
                # Only 1x1 convolutions have a sparse kernel: pruning the others would cost
                # accuracy for no speed (and take a share of a global sparsity budget).
                result.notes.append(f"{node.name}: a {'grouped' if node.attr('group', 1) != 1 else 'spatial'} "
                                    "convolution has no sparse kernel, left dense")
                continue
            if weight is None or weight.const is None or id(weight) in seen or weight.const.dtype.kind != "f":
                continue
            out_in = out_in_weight(node.op_type, weight.const, {"transB": node.attr("transB", 0)})
            if out_in is None or weight.const.size < min_size:
                continue
            if len(weight.uses()) > 1:
                result.notes.append(f"{weight.name}: shared by {len(weight.uses())} nodes, left dense")
                continue
            rows, cols = out_in.shape
            if nm is not None and cols % nm[1] or nm is None and (rows % block[0] or cols % block[1]):
                result.notes.append(f"{weight.name}: [out {rows}, in {cols}] is not tiled by the requested structure")
                continue
            seen.add(id(weight))
            found.append((node, weight, out_in))
        return found


def _as_stored(node, stored: np.ndarray, out_in: np.ndarray) -> np.ndarray:
    """An ``[out, in]`` weight back in the layout the op stores (the inverse of ``out_in_weight``)."""
    if node.op_type == "Conv":
        return out_in.reshape(stored.shape)
    if node.op_type == "Gemm" and node.attr("transB", 0):
        return out_in
    return out_in.T


def _global_sparsities(candidates, block, sparsity) -> dict:
    """Per-weight sparsity from one threshold over every tile's RMS, across all weights."""
    r, c = block
    scores = []
    for _, weight, out_in in candidates:
        rows, cols = out_in.shape
        tiles = out_in.reshape(rows // r, r, cols // c, c).astype(np.float64)
        scores.append(np.sqrt((tiles ** 2).mean(axis=(1, 3))).ravel())
    threshold = np.quantile(np.concatenate(scores), sparsity)
    return {id(weight): float(min(np.mean(s <= threshold), 0.999)) for (_, weight, _), s in zip(candidates, scores)}


def _output_error(dense: Graph, pruned: Graph, options: dict) -> dict:
    """Outputs of the dense and pruned graphs on the same inputs (ONNX Runtime runs both)."""
    from sparsec.backends.ort import make_session
    from sparsec.benchmark.inputs import generate, load_npz

    calibration = options.get("calibration")
    if calibration:
        batches = [load_npz(calibration, dense)]
    else:
        # Symbolic dims the compile did not pin get a modest size for the error estimate.
        dims = {d: int(options.get("sample_dim", 8)) for v in dense.inputs if v.const is None and v.shape
                for d in v.shape if isinstance(d, str)}
        batches = [generate(dense, dims, seed) for seed in range(int(options.get("samples", 4)))]
    before, after = make_session(dense), make_session(pruned)
    max_abs = mean_abs = scale = 0.0
    count = 0
    for feeds in batches:
        for a, b in zip(before.run(None, feeds), after.run(None, feeds)):
            a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
            diff = np.abs(a - b)
            max_abs, scale = max(max_abs, float(diff.max(initial=0))), max(scale, float(np.abs(a).max(initial=0)))
            mean_abs += float(diff.sum())
            count += diff.size
    return {"max_abs": max_abs, "relative": max_abs / scale if scale else max_abs, "mean_abs": mean_abs / max(count, 1),
            "inputs": "calibration" if calibration else f"{len(batches)} generated batches"}
