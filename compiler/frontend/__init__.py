"""ONNX frontend: import into sparsec's IR and export back."""

from .onnx_export import SPARSEC_DOMAIN, save, to_onnx
from .onnx_import import load

__all__ = ["load", "to_onnx", "save", "SPARSEC_DOMAIN"]
