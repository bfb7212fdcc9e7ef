"""Lowering a sparsec Graph to a Relax IRModule.

Standard ops go through TVM's ONNX converters (TVM looks them up by op_type alone); sparsec's own
ops, and any other op a lowering is registered for, go to that lowering, keyed by (domain, op) and
the target: a kernel written for the CPU registers for the CPU targets, a CUDA one for "cuda", a
target-independent lowering (Relax ops only) for every target. Every op that cannot be lowered for
the target is reported at once, before anything is built.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable

import onnx
import tvm
from tvm import relax
from tvm.relax.frontend.onnx import onnx_frontend

from ...errors import CompileError, SparsecError, UnsupportedOpError, first_line, last_line
from ...frontend.onnx_export import to_onnx
from ...ir.graph import Graph, Node
from .targets import CPU_TARGETS  # noqa: F401  (re-exported for the kernels' registrations)

# (domain, op_type) -> {target name or ANY_TARGET: fn(bb, node, inputs, attrs) -> relax.Expr}.
Lowering = Callable[[relax.BlockBuilder, Node, list, dict], relax.Expr]
_LOWERINGS: dict[tuple[str, str], dict[str, Lowering]] = {}
ANY_TARGET = "*"
# Non-standard-domain ops that TVM's converter table implements under the same name.
_TVM_CONTRIB_DOMAINS = {"com.microsoft"}
# Names TVM's table holds for the com.microsoft op although ai.onnx has a different op of that
# name: TVM looks converters up by name alone, so the standard op must not reach them.
_CONTRIB_NAMESAKES = {"Attention"}


def register_lowering(domain: str, op_type: str, targets: tuple[str, ...] = (ANY_TARGET,)):
    def wrap(fn: Lowering) -> Lowering:
        for target in targets:
            _LOWERINGS.setdefault((domain, op_type), {})[target] = fn
        return fn

    return wrap


def find_lowering(domain: str, op_type: str, target: str) -> Lowering | None:
    table = _LOWERINGS.get((domain, op_type), {})
    return table.get(target) or table.get(ANY_TARGET)


def has_kernel(op_type: str, target: str, domain: str = "sparsec") -> bool:
    """Whether ``op_type`` (a sparsec op by default) can be lowered for ``target``: what a pass
    asks before it rewrites into that op."""
    from . import kernels  # noqa: F401  (the kernels register their lowerings on import)

    return find_lowering(domain, op_type, target) is not None


def unsupported_ops(graph: Graph, target: str = "llvm") -> list[tuple[str, str, str, int | None]]:
    convert_map = onnx_frontend._get_convert_map()
    opset = graph.opset("") or 17
    missing = []
    for node in graph.walk():
        if find_lowering(node.domain, node.op_type, target) is not None:
            continue
        if (node.domain, node.op_type) in _LOWERINGS:  # a kernel exists, but not for this target
            missing.append((node.op_type, node.domain, node.name, graph.opset(node.domain)))
            continue
        standard = node.domain in ("", "ai.onnx")
        if node.op_type == "If" and standard:
            continue
        converter = convert_map.get(node.op_type)
        if standard:
            ok = converter is not None and node.op_type not in _CONTRIB_NAMESAKES
        else:
            contrib_only = node.op_type in _CONTRIB_NAMESAKES or not onnx.defs.has(node.op_type)
            ok = converter is not None and node.domain in _TVM_CONTRIB_DOMAINS and contrib_only
        if ok:
            try:
                converter.get_converter(opset)
            except NotImplementedError:
                ok = False
        if not ok:
            missing.append((node.op_type, node.domain, node.name, graph.opset(node.domain)))
    return missing


class _Importer(onnx_frontend.ONNXGraphImporter):
    """TVM's importer with sparsec's lowering table consulted first (by the node's domain)."""

    def __init__(self, graph: Graph, target: str):
        super().__init__({}, {}, keep_params_in_input=False, sanitize=True)
        self._ir_nodes = {node.name: node for node in graph.walk()}
        self._target = target

    def _check_for_unsupported_ops(self, graph_proto):  # done on the IR, with domains, beforehand
        return None

    def _convert_operator(self, op_name, inputs, attrs, opset):
        node = self._ir_nodes.get(attrs.get("tvm_custom", {}).get("name"))
        lowering = find_lowering(node.domain, node.op_type, self._target) if node is not None else None
        if lowering is not None:
            result = lowering(self.bb, node, list(inputs), attrs)
            return self.bb.normalize(result) if isinstance(result, relax.Expr) else result
        guard = _INPUT_GUARDS.get(op_name)
        if guard is not None:
            inputs = guard(self.bb, inputs, attrs)
        override = _CONVERTER_OVERRIDES.get(op_name)
        if override is not None:
            result = override(self.bb, list(inputs), attrs)
            if result is not None:
                return result
        try:
            return super()._convert_operator(op_name, inputs, attrs, opset)
        except SparsecError:
            raise
        except Exception as err:  # TVM's converters raise bare Assertion/Value/TypeErrors
            name = attrs.get("tvm_custom", {}).get("name", "?")
            raise CompileError(f"TVM cannot convert {op_name} (node {name!r}, opset {opset}): {last_line(err)}") from err


def _symbolic_range(bb: relax.BlockBuilder, inputs: list):
    """``Range(start, limit, delta)`` with integer constants and symbolic dims (``Range(0,
    sequence, 1)`` for position ids) as one ``arange`` whose length is an expression of those dims.
    TVM's converter computes the length in a tensor and binds it to a fresh variable, which memory
    planning then needs before it exists (unpinned HF exports failed to build)."""
    values = []
    for item in inputs:
        if tvm.ir.is_prim_expr(item):
            if not str(getattr(item, "dtype", None) or item.ty).startswith("int"):
                return None
            values.append(item)
        elif isinstance(item, tvm.ir.GenericConst) and item.value.numpy().size == 1 and item.value.numpy().dtype.kind == "i":
            values.append(int(item.value.numpy().reshape(())))
        else:
            return None
    if not any(tvm.ir.is_prim_expr(v) for v in values):
        return None  # all constant: TVM's converter folds it
    start, limit, delta = values
    if not isinstance(delta, int) or delta == 0:
        return None
    dtype = str(inputs[0].value.numpy().dtype) if isinstance(inputs[0], tvm.ir.GenericConst) else "int64"
    return bb.normalize(relax.op.arange(start, limit, delta, dtype))


def _patch_conv_transpose(bb: relax.BlockBuilder, inputs: list, attrs: dict):
    """``ConvTranspose`` whose kernel equals its stride (2x2 stride 2 upsampling, as in U-Nets
    and FPN heads) as one GEMM over the pixels followed by a depth-to-space shuffle: each input
    pixel writes its own KH x KW patch, so out[n, f, y*KH + a, x*KW + b] = sum_c x[n, c, y, x] *
    W[c, f, a, b]. TVM's converter dilates the input with zeros and runs a convolution over them:
    3/4 of its multiply-adds were by zero (PP-OCR det's two: 3.9 ms, now 0.9 ms with the shuffles)."""
    x, weight, bias = (inputs + [None])[:3]
    if not isinstance(weight, tvm.ir.GenericConst) or not isinstance(x.ty, relax.TensorType):
        return None
    kernel = [int(v) for v in weight.value.numpy().shape[2:]]
    zeros = [0] * len(kernel)
    if (len(kernel) != 2 or x.ty.ndim != 4 or attrs.get("group", 1) != 1
            or list(attrs.get("strides", [1, 1])) != kernel or list(attrs.get("pads", zeros * 2)) != zeros * 2
            or list(attrs.get("dilations", [1, 1])) != [1, 1] or list(attrs.get("output_padding", zeros)) != zeros
            or attrs.get("output_shape") or attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET", "VALID", b"VALID")):
        return None
    channels, features, kh, kw = (int(v) for v in weight.value.numpy().shape)
    n, _, h, w = x.ty.shape
    op = relax.op
    pixels = bb.normalize(op.permute_dims(x, [0, 2, 3, 1]))  # [N, H, W, C]
    patches = bb.normalize(op.matmul(pixels, op.reshape(weight, [channels, features * kh * kw])))
    patches = bb.normalize(op.reshape(patches, [n, h, w, features, kh, kw]))
    out = op.reshape(op.permute_dims(patches, [0, 3, 1, 4, 2, 5]), [n, features, h * kh, w * kw])
    if bias is not None:
        out = op.add(out, op.reshape(bias, [1, features, 1, 1]))
    return bb.normalize(out)


def _typed_one_hot(bb: relax.BlockBuilder, inputs: list, attrs: dict):
    """``OneHot`` whose output has its values' dtype. TVM's converter passes the off/on values
    through Python floats, so a float32 model's OneHot came out float64 (refused at run time by
    the output check). Integer indices only; others go to TVM's converter. Indices outside
    [-depth, depth) give an all-off row, as ONNX specifies."""
    indices, depth, values = inputs
    if not (isinstance(depth, tvm.ir.GenericConst) and isinstance(values, tvm.ir.GenericConst)):
        return None
    pair = values.value.numpy().reshape(-1)
    index_dtype = str(indices.ty.dtype.dtype) if isinstance(indices.ty, relax.TensorType) else ""
    if pair.size != 2 or not index_dtype.startswith(("int", "uint")):
        return None
    size = int(depth.value.numpy().reshape(-1)[0])
    off, on = (relax.prim_value(tvm.tirx.const(v.item(), str(pair.dtype))) for v in pair)
    if index_dtype.startswith("int"):
        negative = relax.op.less(indices, relax.const(0, index_dtype))
        indices = relax.op.where(negative, relax.op.add(indices, relax.const(size, index_dtype)), indices)
    return bb.normalize(relax.op.one_hot(bb.normalize(indices), on, off, size, attrs.get("axis", -1)))


# TVM converters that sparsec replaces where it knows better; each returns None to decline.
_CONVERTER_OVERRIDES = {
    "Range": lambda bb, inputs, attrs: _symbolic_range(bb, inputs),
    "ConvTranspose": _patch_conv_transpose,
    "OneHot": _typed_one_hot,
}


# Standard ops whose inputs are checked (or otherwise made safe) before any converter sees them:
# fn(bb, inputs, attrs) -> inputs. The index checks register here.
_INPUT_GUARDS: dict[str, Callable] = {}


def register_input_guard(op_type: str):
    def wrap(fn):
        _INPUT_GUARDS[op_type] = fn
        return fn

    return wrap


def lower_to_relax(graph: Graph, target: str = "llvm", backend: str = "tvm"):
    missing = unsupported_ops(graph, target)
    if missing:
        raise UnsupportedOpError(missing, f"{backend}@{target}")
    model = to_onnx(graph, value_info=False)
    importer = _Importer(graph, target)
    # TVM's importer prints each failed conversion with all of its inputs to stdout before
    # re-raising: the CompileError below says it in one line.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # renames and "unknown dim" notes are expected here
        try:
            mod = importer.from_onnx(model.graph, graph.opset("") or 17)
        except SparsecError:
            raise
        except Exception as err:  # raised by TVM's importer around the converters: graph inputs, output counts
            raise CompileError(_import_failure(model, err)) from err
    return mod, importer._input_names


def _import_failure(model: onnx.ModelProto, err: Exception) -> str:
    """Why TVM could not import the model: ONNX's strict type and shape check first (a model that
    breaks ONNX's rules, as a string fed to an arithmetic op, which ONNX Runtime refuses to load
    too), else the last line of TVM's error."""
    try:
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as invalid:  # onnx raises InferenceError, ValidationError and others
        return f"the model breaks ONNX's rules: {first_line(invalid)}"
    return f"TVM cannot import the model: {last_line(err)}"
