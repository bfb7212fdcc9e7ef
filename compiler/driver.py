"""The compile driver: model -> IR -> prepare (pin, infer, fold) -> passes -> backend build."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import onnx

from .analysis import fold_constants, infer_types, pin_dims
from .compiled import FORMAT_VERSION, CompiledModel, TensorSpec
from .errors import SparsecError
from .frontend import load, to_onnx
from .frontend.onnx_export import weight_bytes
from .ir.graph import Graph
from .ir.verifier import verify
from .passmanager import PassContext, PassManager, resolve_passes
from .versions import versions


def as_graph(model: "str | os.PathLike | onnx.ModelProto | Graph") -> tuple[Graph, str]:
    """The model as a fresh Graph (a Graph argument is cloned, never mutated) and a source hash."""
    if isinstance(model, Graph):
        graph = model.clone()
        return graph, _hash_bytes(to_onnx(graph).SerializeToString())
    if isinstance(model, onnx.ModelProto):
        return load(model), _hash_bytes(model.SerializeToString())
    if isinstance(model, str | os.PathLike):
        graph = load(model)
        return graph, hash_file(Path(model))
    raise SparsecError(f"cannot compile a {type(model).__name__}: give a path, an onnx.ModelProto or a sparsec Graph")


def prepare(graph: Graph, *, dims: dict | None = None, shapes: dict | None = None, fold: bool = True) -> dict:
    """Canonicalise before rewriting: pin dims, infer types, fold constants, until nothing changes."""
    stats = {"pinned_dims": pin_dims(graph, dims, shapes) if (dims or shapes) else 0, "folded": 0}
    infer_types(graph)
    for _ in range(4):
        folded = fold_constants(graph) if fold else 0
        stats["folded"] += folded
        if not folded:
            break
        infer_types(graph)
    graph.eliminate_dead_code()
    verify(graph)
    return stats


def compile(  # noqa: A001 - the public name the API promises
    model,
    target: str = "llvm",
    passes="default",
    *,
    dims: dict[str, int] | None = None,
    shapes: dict[str, list[int]] | None = None,
    num_threads: int | None = None,
    backend: str = "tvm",
    pass_options: dict[str, dict] | None = None,
    tune: int = 0,
    tuning_db: str | None = None,
    **target_options,
) -> CompiledModel:
    """Compile an ONNX model (path, ModelProto or Graph) for ``target``.

    ``passes``: ``"default"`` (every exact pass), ``[]`` (plain TVM), or pass names.
    ``dims`` / ``shapes`` pin symbolic input dims; ``num_threads`` sizes the thread pool;
    ``pass_options`` maps a pass name to its options (e.g. ``{"sparse-weights": {"policy": "always"}}``);
    ``tune``: MetaSchedule trials to spend on this model's kernels first (CPU targets; slow, opt-in);
    results go to the tuning database (``tuning_db``: a folder, default $SPARSEC_TUNING_DB or
    ~/.cache/sparsec/tuning; "off" ignores it), which every later compile for the target applies;
    other keywords are target options (``mcpu``, ``arch``; see ``sparsec targets``).
    """
    from sparsec.backends import get_backend

    start = time.perf_counter()
    graph, source_hash = as_graph(model)
    prep = prepare(graph, dims=dims, shapes=shapes)
    pass_list = resolve_passes(passes)
    options = dict(target_options, num_threads=num_threads, tune=tune, tuning_db=tuning_db)
    pass_report = PassManager(pass_list).run(graph, PassContext(target=target, options=options,
                                                                         pass_options=dict(pass_options or {})))
    try:
        runner = get_backend(backend).build(graph, target, options)
    except SparsecError as err:
        # A pass may have seen why the model cannot run as written (a trace-specialised loop, say):
        # that is the first thing to read, ahead of the backend's own words.
        notes = [note for found in pass_report["notes"].values() for note in found]
        if notes:
            err.args = (f"{err.args[0] if err.args else err}\nNotes from the passes:\n  " + "\n  ".join(notes),) + err.args[1:]
        raise
    inputs = [TensorSpec.of(v) for v in graph.inputs if v.const is None]
    outputs = [TensorSpec.of(v) for v in graph.outputs]
    report = {
        "backend": backend,
        "target": target,
        "tvm_target": getattr(runner, "tvm_target", ""),
        "passes": pass_report["passes"],
        "rewrites": pass_report["rewrites"],
        "notes": pass_report["notes"],
        "details": pass_report["details"],
        "prepare": prep,
        "weight_bytes": weight_bytes(graph),
        "tuning": getattr(runner, "tuning", None),
        "compile_seconds": round(time.perf_counter() - start, 3),
        "source_sha256": source_hash,
    }
    manifest = {
        "format": FORMAT_VERSION,
        "backend": backend,
        "target": target,
        "tvm_target": report["tvm_target"],
        "num_threads": num_threads,
        "passes": report["passes"],
        "source_sha256": source_hash,
        "versions": versions(),
    }
    return CompiledModel(runner, inputs, outputs, report, manifest)


def _hash_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
