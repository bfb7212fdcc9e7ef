"""Types of IR values: tensors (dtype + shape with symbolic dims), sequences and optionals.

Dtypes are numpy-style names ("float32", "int64", "bool", "bfloat16", "float8e4m3fn", "string").
A dimension is an ``int`` (static), a ``str`` (a symbolic dim kept by name) or ``None`` (unknown).
A shape of ``None`` means the rank itself is unknown.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np
import onnx
from onnx import TensorProto

Dim = Union[int, str, None]

# ONNX element type -> sparsec dtype name. Names follow numpy where numpy has the type.
_ONNX_TO_NAME = {
    TensorProto.FLOAT: "float32",
    TensorProto.UINT8: "uint8",
    TensorProto.INT8: "int8",
    TensorProto.UINT16: "uint16",
    TensorProto.INT16: "int16",
    TensorProto.INT32: "int32",
    TensorProto.INT64: "int64",
    TensorProto.STRING: "string",
    TensorProto.BOOL: "bool",
    TensorProto.FLOAT16: "float16",
    TensorProto.DOUBLE: "float64",
    TensorProto.UINT32: "uint32",
    TensorProto.UINT64: "uint64",
    TensorProto.COMPLEX64: "complex64",
    TensorProto.COMPLEX128: "complex128",
    TensorProto.BFLOAT16: "bfloat16",
}
for _name, _value in TensorProto.DataType.items():
    if _value not in _ONNX_TO_NAME and _value != TensorProto.UNDEFINED:
        _ONNX_TO_NAME[_value] = _name.lower()
_NAME_TO_ONNX = {name: code for code, name in _ONNX_TO_NAME.items()}

_SHORT = {
    "float32": "f32", "float16": "f16", "bfloat16": "bf16", "float64": "f64",
    "int8": "i8", "int16": "i16", "int32": "i32", "int64": "i64",
    "uint8": "u8", "uint16": "u16", "uint32": "u32", "uint64": "u64",
    "bool": "bool", "string": "str", "complex64": "c64", "complex128": "c128",
}


def dtype_from_onnx(elem_type: int) -> str:
    try:
        return _ONNX_TO_NAME[elem_type]
    except KeyError:
        raise ValueError(f"unknown ONNX element type {elem_type}") from None


def dtype_to_onnx(dtype: str) -> int:
    try:
        return _NAME_TO_ONNX[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}") from None


def dtype_of_array(array: np.ndarray) -> str:
    """The sparsec dtype name of a numpy array (ml_dtypes arrays included)."""
    if array.dtype == object or array.dtype.kind in "SU":
        return "string"
    return dtype_from_onnx(onnx.helper.np_dtype_to_tensor_dtype(array.dtype))


def numpy_dtype(dtype: str) -> np.dtype:
    if dtype == "string":
        return np.dtype(object)
    return onnx.helper.tensor_dtype_to_np_dtype(dtype_to_onnx(dtype))


def short_dtype(dtype: str) -> str:
    return _SHORT.get(dtype, dtype)


def dtype_from_short(text: str) -> str:
    for name, short in _SHORT.items():
        if short == text:
            return name
    return text


@dataclass(frozen=True)
class TensorType:
    dtype: str | None
    shape: tuple[Dim, ...] | None = None

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def is_static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)

    def numel(self) -> int | None:
        if not self.is_static:
            return None
        return int(np.prod(self.shape, dtype=np.int64))

    def with_shape(self, shape) -> "TensorType":
        return TensorType(self.dtype, None if shape is None else tuple(shape))

    def __str__(self) -> str:
        dtype = "?" if self.dtype is None else short_dtype(self.dtype)
        if self.shape is None:
            return f"{dtype}[*]"
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{dtype}[{dims}]"


@dataclass(frozen=True)
class SequenceType:
    elem: "ValueType | None"

    def __str__(self) -> str:
        return f"seq<{self.elem if self.elem is not None else '?'}>"


@dataclass(frozen=True)
class OptionalType:
    elem: "ValueType | None"

    def __str__(self) -> str:
        return f"opt<{self.elem if self.elem is not None else '?'}>"


ValueType = Union[TensorType, SequenceType, OptionalType]


def type_from_onnx(type_proto: onnx.TypeProto) -> ValueType | None:
    """Convert an ONNX TypeProto; ``None`` when the proto carries no type."""
    kind = type_proto.WhichOneof("value")
    if kind == "tensor_type":
        tt = type_proto.tensor_type
        dtype = dtype_from_onnx(tt.elem_type) if tt.elem_type else None
        if not tt.HasField("shape"):
            return TensorType(dtype, None)
        dims: list[Dim] = []
        for d in tt.shape.dim:
            which = d.WhichOneof("value")
            if which == "dim_value":  # some exporters write -1 for "unknown"
                dims.append(int(d.dim_value) if d.dim_value >= 0 else None)
            elif which == "dim_param" and d.dim_param:
                dims.append(d.dim_param)
            else:
                dims.append(None)
        return TensorType(dtype, tuple(dims))
    if kind == "sequence_type":
        return SequenceType(type_from_onnx(type_proto.sequence_type.elem_type))
    if kind == "optional_type":
        return OptionalType(type_from_onnx(type_proto.optional_type.elem_type))
    return None


def type_to_onnx(vtype: ValueType | None) -> onnx.TypeProto:
    proto = onnx.TypeProto()
    if vtype is None:
        return proto
    if isinstance(vtype, TensorType):
        tt = proto.tensor_type
        tt.elem_type = dtype_to_onnx(vtype.dtype) if vtype.dtype else TensorProto.UNDEFINED
        if vtype.shape is not None:
            shape = tt.shape
            shape.Clear()
            for d in vtype.shape:
                dim = shape.dim.add()
                if isinstance(d, int):
                    dim.dim_value = d
                elif isinstance(d, str):
                    dim.dim_param = d
        return proto
    if isinstance(vtype, SequenceType):
        proto.sequence_type.elem_type.CopyFrom(type_to_onnx(vtype.elem))
        return proto
    if isinstance(vtype, OptionalType):
        proto.optional_type.elem_type.CopyFrom(type_to_onnx(vtype.elem))
        return proto
    raise TypeError(f"cannot convert {vtype!r} to ONNX")


def tensor_type_of(array: np.ndarray) -> TensorType:
    return TensorType(dtype_of_array(array), tuple(int(d) for d in array.shape))
