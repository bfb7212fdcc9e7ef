"""sparsec IR -> ONNX. Round-trips: load -> export -> ORT gives the same outputs as the original.

Ops of the ``sparsec`` domain are written as they are (so Netron shows what sparsec did); the ORT
reference backend decomposes them to standard ONNX first (see ``sparsec.ops``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..ir.graph import AttrType, Graph, Node, Value
from ..ir.types import TensorType, type_to_onnx
from .onnx_import import OMITTED_PREFIX

SPARSEC_DOMAIN = "sparsec"
_PROTO_LIMIT = 1_800_000_000  # beyond this, weights go to an external data file (protobuf caps at 2 GB)


def to_onnx(graph: Graph, *, weights: bool = True, value_info: bool = True) -> onnx.ModelProto:
    """Export a Graph. ``weights=False`` turns large constants into graph inputs (for analyses
    such as shape inference that need types, not data)."""
    gproto = _GraphWriter(weights, value_info).write(graph, top=True)
    opsets = dict(graph.opset_imports)
    for node in graph.walk():
        if node.domain not in opsets:
            opsets[node.domain] = 1
    model = helper.make_model(
        gproto,
        opset_imports=[helper.make_opsetid(domain, version) for domain, version in sorted(opsets.items())],
        producer_name=graph.producer_name or "sparsec",
    )
    model.ir_version = max(graph.ir_version or 0, 8 if opsets.get("", 17) < 21 else 10)
    for key, value in sorted(graph.metadata.items()):
        model.metadata_props.add(key=key, value=value)
    return model


def save(graph: Graph, path: "str | os.PathLike") -> Path:
    """Write a Graph as an ONNX file; weights go to ``<name>.data`` next to it when over 2 GB."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = to_onnx(graph)
    if weight_bytes(graph) > _PROTO_LIMIT:
        onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(model, path)
    return path


def weight_bytes(graph: Graph) -> int:
    return sum(v.const.nbytes for g in graph.all_graphs() for v in g.initializers.values() if v.const is not None)


class _GraphWriter:
    # Constants at most this big stay initializers even with weights=False: shape computations need them.
    SMALL = 64

    def __init__(self, weights: bool, value_info: bool):
        self.weights = weights
        self.value_info = value_info

    def write(self, graph: Graph, top: bool = False) -> onnx.GraphProto:
        inputs, initializers = [], []
        input_ids = {id(v) for v in graph.inputs}
        for value in graph.inputs:
            inputs.append(self._value_info(value))
            if value.const is not None:
                initializers.append(self._tensor(value))
        for value in graph.initializers.values():
            if id(value) in input_ids:
                continue
            if self.weights or value.const.size <= self.SMALL or not top:
                initializers.append(self._tensor(value))
            else:
                inputs.append(self._value_info(value))
        nodes = [self._node(node) for node in graph.nodes]
        outputs = [self._value_info(v) for v in graph.outputs]
        infos = []
        if self.value_info:
            output_ids = {id(v) for v in graph.outputs}
            for node in graph.nodes:
                for out in node.outputs:
                    if out.type is not None and id(out) not in output_ids and not out.name.startswith(OMITTED_PREFIX):
                        infos.append(self._value_info(out))
        return helper.make_graph(nodes, graph.name, inputs, outputs, initializer=initializers, value_info=infos)

    @staticmethod
    def _value_info(value: Value) -> onnx.ValueInfoProto:
        vi = onnx.ValueInfoProto()
        vi.name = value.name
        if value.type is not None:
            vi.type.CopyFrom(type_to_onnx(value.type))
        return vi

    @staticmethod
    def _tensor(value: Value) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(value.const), value.name)

    def _node(self, node: Node) -> onnx.NodeProto:
        outputs = [
            "" if out.name.startswith(OMITTED_PREFIX) and not out.has_uses() else out.name for out in node.outputs
        ]
        proto = helper.make_node(
            node.op_type, [v.name if v is not None else "" for v in node.inputs], outputs,
            name=node.name, domain=node.domain or None,
        )
        for key in sorted(node.attrs):
            proto.attribute.append(self._attribute(key, node.attrs[key]))
        return proto

    def _attribute(self, key: str, attr) -> onnx.AttributeProto:
        kind, value = attr.kind, attr.value
        if kind == AttrType.GRAPH:
            return helper.make_attribute(key, self.write(value))
        if kind == AttrType.GRAPHS:
            return helper.make_attribute(key, [self.write(g) for g in value], attr_type=AttrType.GRAPHS)
        if kind == AttrType.TENSOR:
            return helper.make_attribute(key, numpy_helper.from_array(np.asarray(value)))
        if kind == AttrType.TENSORS:
            return helper.make_attribute(key, [numpy_helper.from_array(np.asarray(v)) for v in value], attr_type=kind)
        if kind == AttrType.TYPE_PROTO or kind == AttrType.TYPE_PROTOS:
            return helper.make_attribute(key, value, attr_type=kind)
        return helper.make_attribute(key, list(value) if isinstance(value, tuple) else value, attr_type=kind)
