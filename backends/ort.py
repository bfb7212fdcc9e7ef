"""The reference backend: ONNX Runtime runs the graph (original or rewritten, via the ONNX export).

sparsec-domain ops are decomposed to standard ONNX first (each op registers its decomposition in
``sparsec.ops``), so ORT checks a rewritten graph against the same semantics.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from ..errors import SparsecError
from ..frontend.onnx_export import _PROTO_LIMIT, save, to_onnx, weight_bytes
from ..ir.graph import Graph
from ..ops import DOMAIN, get_op


def session_options(num_threads: int | None = None) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    if num_threads:
        opts.intra_op_num_threads = int(num_threads)
        opts.inter_op_num_threads = 1
    # Spinning threads steal the cores of whatever runs next in the same process (TVM, timing).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return opts


def decompose_sparsec_ops(graph: Graph) -> Graph:
    graph = graph.clone()
    for node in list(graph.walk()):
        if node.domain != DOMAIN:
            continue
        opdef = get_op(node.domain, node.op_type)
        if opdef is None or opdef.decompose is None:
            raise SparsecError(f"sparsec op {node.op_type} (node {node.name!r}) has no ONNX decomposition")
        opdef.decompose(node)
    return graph


def make_session(model: "Graph | onnx.ModelProto | str | os.PathLike", num_threads: int | None = None) -> ort.InferenceSession:
    opts = session_options(num_threads)
    if isinstance(model, Graph):
        graph = decompose_sparsec_ops(model)
        if weight_bytes(graph) > _PROTO_LIMIT:
            folder = Path(tempfile.mkdtemp(prefix="sparsec-ort-"))
            return ort.InferenceSession(str(save(graph, folder / "model.onnx")), opts, providers=["CPUExecutionProvider"])
        model = to_onnx(graph)
    if isinstance(model, onnx.ModelProto):
        return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])


def run(model, feeds: dict[str, np.ndarray], num_threads: int | None = None) -> list[np.ndarray]:
    """Run ``model`` (Graph, ModelProto or path) on ORT; outputs in the graph's order."""
    return make_session(model, num_threads).run(None, feeds)


class ORTBackend:
    name = "ort"

    def build(self, graph: Graph, target: str, options: dict) -> "ORTRunner":
        return ORTRunner(make_session(graph, options.get("num_threads")))


class ORTRunner:
    target = "ort"

    def __init__(self, session: ort.InferenceSession):
        self.session = session
        self.names = [i.name for i in session.get_inputs()]

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, dict(zip(self.names, arrays)))
