"""ONNX -> sparsec IR.

Reads opsets 13 and up (older models are converted), initializers, Constant nodes, external data
(only from files inside the model's folder), value_info, nested graphs (If, Loop, Scan) and
model-local functions (inlined). Ops of any domain are kept as they are.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from ..errors import ModelLoadError, first_line
from ..ir.graph import Attr, AttrType, Graph, Node, Value
from ..ir.types import TensorType, tensor_type_of, type_from_onnx

MIN_OPSET = 13
OMITTED_PREFIX = "__omitted"  # names given to optional outputs the model left unnamed


def load(model: "str | os.PathLike | onnx.ModelProto", *, check: bool = True) -> Graph:
    """Load an ONNX model (a path or a ModelProto) into a sparsec Graph."""
    if isinstance(model, onnx.ModelProto):
        proto, base_dir = model, None
    else:
        proto, base_dir = read_model(model)
    return import_model(proto, base_dir=base_dir, check=check)


def read_model(path: "str | os.PathLike") -> tuple[onnx.ModelProto, Path]:
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"model file not found: {path}")
    if path.is_dir():
        raise ModelLoadError(f"{path} is a folder, not an ONNX file")
    data = path.read_bytes()
    if not data:
        raise ModelLoadError(f"{path} is empty, not an ONNX model")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as err:
        raise ModelLoadError(f"{path} is not a valid ONNX model (truncated or corrupt protobuf: {err})") from None
    if not proto.HasField("graph") or not proto.opset_import:
        raise ModelLoadError(f"{path} is not a valid ONNX model (no graph or no opset imports)")
    return proto, path.resolve().parent


# Checker complaints about models that ONNX Runtime loads and runs as they are: refusing them
# would refuse working models. (A tensor type with no shape field is an unknown shape.)
_TOLERATED_CHECKER_ERRORS = ("Field 'shape' of 'type' is required but missing",)


def _text_that_is_not_utf8(message, path: str = "model") -> str | None:
    """Where a text field holds bytes that are not UTF-8 (protobuf hands them over as ``bytes``,
    which failed later, deep in the export), else None. Tensor payloads are not read."""
    for field in message.DESCRIPTOR.fields:
        repeated = field.is_repeated
        if field.type == field.TYPE_STRING:
            values = getattr(message, field.name) if repeated else [getattr(message, field.name)]
            if any(isinstance(v, bytes) for v in values):
                return f"{path}.{field.name}"
        elif field.type == field.TYPE_MESSAGE:
            if repeated:
                items = getattr(message, field.name)
            elif message.HasField(field.name):
                items = [getattr(message, field.name)]
            else:
                continue
            for index, item in enumerate(items):
                where = _text_that_is_not_utf8(item, f"{path}.{field.name}" + (f"[{index}]" if repeated else ""))
                if where:
                    return where
    return None


def import_model(proto: onnx.ModelProto, *, base_dir: Path | None = None, check: bool = True) -> Graph:
    where = _text_that_is_not_utf8(proto)
    if where:
        raise ModelLoadError(f"invalid ONNX model: {where} is not valid UTF-8 text")
    opsets = {imp.domain or "": imp.version for imp in proto.opset_import}
    if "" not in opsets and "ai.onnx" in opsets:
        opsets[""] = opsets.pop("ai.onnx")
    if proto.functions:
        proto = onnx.inliner.inline_local_functions(proto)
    # The checker would read external data relative to the working directory, before our own
    # checks refuse paths outside the model's folder: those models are validated as they load.
    if check and not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        try:
            onnx.checker.check_model(proto)
        except (onnx.checker.ValidationError, Exception) as err:  # the checker raises several kinds
            first = first_line(err)
            if not any(tolerated in first for tolerated in _TOLERATED_CHECKER_ERRORS):
                raise ModelLoadError(f"invalid ONNX model: {first}") from None
    if opsets.get("", MIN_OPSET) < MIN_OPSET:
        proto = _upgrade(proto, opsets[""])
        opsets[""] = MIN_OPSET
    graph = Graph(proto.graph.name or "main")
    graph.opset_imports = opsets
    graph.ir_version = proto.ir_version
    graph.producer_name = proto.producer_name or "unknown"
    graph.metadata = {p.key: p.value for p in proto.metadata_props}
    _GraphReader(base_dir).read(proto.graph, graph, scope={})
    return graph


def _upgrade(proto: onnx.ModelProto, version: int) -> onnx.ModelProto:
    try:
        return onnx.version_converter.convert_version(proto, MIN_OPSET)
    except Exception as err:  # the converter raises RuntimeError and others
        raise ModelLoadError(f"model uses opset {version}; sparsec needs {MIN_OPSET}+ and the conversion failed: {err}") from None


def _value_type(vi: onnx.ValueInfoProto):
    """A declared type; an element type ONNX does not define is the file's fault, said as such
    (the checker lets it through)."""
    try:
        return type_from_onnx(vi.type)
    except ValueError as err:
        raise ModelLoadError(f"invalid ONNX model: value {vi.name!r}: {err}") from None


class _GraphReader:
    def __init__(self, base_dir: Path | None):
        self.base_dir = base_dir

    def read(self, gproto: onnx.GraphProto, graph: Graph, scope: dict[str, Value]) -> None:
        scope = dict(scope)  # names visible here: outer values plus this graph's
        types = {vi.name: _value_type(vi) for vi in gproto.value_info}
        for init in gproto.initializer:
            scope[init.name] = self._constant(graph, init.name, self.tensor(init))
        for sparse in gproto.sparse_initializer:
            name = sparse.values.name
            scope[name] = self._constant(graph, name, self.sparse_tensor(sparse))
        for vi in gproto.input:
            if vi.name in graph.initializers:  # an initializer that may be overridden: keep it an input
                const = graph.initializers[vi.name]
                value = Value(vi.name, _value_type(vi) or const.type, const=const.const)
                del graph.initializers[vi.name]
                graph.initializers[vi.name] = value
            else:
                value = Value(vi.name, _value_type(vi))
            value.graph = graph
            graph._claim(vi.name)
            graph.inputs.append(value)
            scope[vi.name] = value
        for nproto in gproto.node:
            if nproto.op_type == "Constant" and nproto.domain in ("", "ai.onnx"):
                scope[nproto.output[0]] = self._constant(graph, nproto.output[0], self.constant_node(nproto))
                continue
            node = Node(nproto.op_type, nproto.domain if nproto.domain != "ai.onnx" else "",
                        graph.unique_name(nproto.name or nproto.op_type))
            for aproto in nproto.attribute:
                node.set_attr(aproto.name, self.attribute(aproto, graph, scope))
            for name in nproto.input:
                if name == "":
                    node.append_input(None)
                elif name in scope:
                    node.append_input(scope[name])
                else:
                    raise ModelLoadError(f"node {node.name!r} ({node.op_type}) uses {name!r}, which is never defined")
            for i, name in enumerate(nproto.output):
                out = Value(name or graph.unique_name(f"{OMITTED_PREFIX}_{node.name}_{i}"), types.get(name))
                if name:
                    graph._claim(name)
                out.producer, out.index = node, i
                node.outputs.append(out)
                if name:
                    scope[name] = out
            node.graph = graph
            graph._nodes.append(node)
        for vi in gproto.output:
            if vi.name not in scope:
                raise ModelLoadError(f"graph output {vi.name!r} is never defined")
            value = scope[vi.name]
            out_type = _value_type(vi)
            if out_type is not None and value.type is None:
                value.type = out_type
            graph.outputs.append(value)

    def _constant(self, graph: Graph, name: str, array: np.ndarray) -> Value:
        value = Value(name, tensor_type_of(array), const=array)
        value.graph = graph
        graph._claim(name)
        graph.initializers[name] = value
        return value

    # --- tensors --------------------------------------------------------------------------------
    def tensor(self, tproto: onnx.TensorProto) -> np.ndarray:
        if tproto.data_location == onnx.TensorProto.EXTERNAL:
            return self._external(tproto)
        try:
            return numpy_helper.to_array(tproto)
        except Exception as err:  # malformed raw data raises ValueError and others
            raise ModelLoadError(f"tensor {tproto.name!r} is malformed: {err}") from None

    def sparse_tensor(self, sproto: onnx.SparseTensorProto) -> np.ndarray:
        values = self.tensor(sproto.values)
        indices = self.tensor(sproto.indices).astype(np.int64)
        dense = np.zeros(tuple(sproto.dims), dtype=values.dtype)
        flat = dense.reshape(-1)
        if indices.ndim == 2:
            indices = np.ravel_multi_index(indices.T, dense.shape)
        flat[indices.reshape(-1)] = values.reshape(-1)
        return dense

    def _external(self, tproto: onnx.TensorProto) -> np.ndarray:
        info = {e.key: e.value for e in tproto.external_data}
        if self.base_dir is None:
            raise ModelLoadError(f"tensor {tproto.name!r} uses external data; load the model from its path, not a ModelProto")
        location = info.get("location", "")
        base = os.path.realpath(self.base_dir)
        target = os.path.realpath(os.path.join(base, location))
        if not location or os.path.isabs(location) or os.path.commonpath([base, target]) != base:
            raise ModelLoadError(f"tensor {tproto.name!r}: external data {location!r} is outside the model's folder; refusing to read it")
        if not os.path.isfile(target):
            raise ModelLoadError(f"tensor {tproto.name!r}: external data file {location!r} not found next to the model")
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tproto.data_type))
        shape = tuple(tproto.dims)
        count = int(np.prod(shape, dtype=np.int64))
        offset = int(info.get("offset", 0))
        length = int(info.get("length", count * dtype.itemsize))
        size = os.path.getsize(target)
        if length != count * dtype.itemsize or offset < 0 or offset + length > size:
            raise ModelLoadError(f"tensor {tproto.name!r}: external data in {location!r} is truncated or its length does not match shape {shape}")
        if count == 0:
            return np.zeros(shape, dtype)
        # Memory-mapped and read-only: a 2 GB weight file is not copied into memory up front.
        return np.memmap(target, dtype=dtype, mode="r", offset=offset, shape=shape)

    def constant_node(self, nproto: onnx.NodeProto) -> np.ndarray:
        attr = nproto.attribute[0] if nproto.attribute else None
        if attr is None:
            raise ModelLoadError(f"Constant node {nproto.name!r} has no value")
        kind = attr.name
        if kind == "value":
            return self.tensor(attr.t)
        if kind == "sparse_value":
            return self.sparse_tensor(attr.sparse_tensor)
        scalars = {
            "value_float": lambda: np.array(attr.f, np.float32),
            "value_floats": lambda: np.array(list(attr.floats), np.float32),
            "value_int": lambda: np.array(attr.i, np.int64),
            "value_ints": lambda: np.array(list(attr.ints), np.int64),
            "value_string": lambda: np.array(attr.s.decode(), dtype=object),
            "value_strings": lambda: np.array([s.decode() for s in attr.strings], dtype=object),
        }
        if kind not in scalars:
            raise ModelLoadError(f"Constant node {nproto.name!r} has unknown attribute {kind!r}")
        return scalars[kind]()

    # --- attributes -----------------------------------------------------------------------------
    def attribute(self, aproto: onnx.AttributeProto, graph: Graph, scope: dict[str, Value]) -> Attr:
        kind = aproto.type
        if kind == AttrType.GRAPH:
            return Attr(kind, self.subgraph(aproto.g, graph, scope))
        if kind == AttrType.GRAPHS:
            return Attr(kind, tuple(self.subgraph(g, graph, scope) for g in aproto.graphs))
        if kind == AttrType.TENSOR:
            return Attr(kind, self.tensor(aproto.t))
        if kind == AttrType.TENSORS:
            return Attr(kind, tuple(self.tensor(t) for t in aproto.tensors))
        if kind == AttrType.SPARSE_TENSOR:
            return Attr(AttrType.TENSOR, self.sparse_tensor(aproto.sparse_tensor))
        if aproto.ref_attr_name:
            raise ModelLoadError(f"attribute {aproto.name!r} refers to a function attribute outside a function")
        value = onnx.helper.get_attribute_value(aproto)
        if isinstance(value, list):
            value = tuple(value)
        return Attr(kind, value)

    def subgraph(self, gproto: onnx.GraphProto, parent: Graph, scope: dict[str, Value]) -> Graph:
        sub = Graph(gproto.name or "body")
        sub._names = parent.root._names  # one namespace for the whole model
        holder = Node("__reading__")  # root lookups go through the parent while reading
        holder.graph = parent
        sub.parent_node = holder
        self.read(gproto, sub, scope)
        sub.parent_node = None  # the owning node adopts it in set_attr
        return sub

