"""Analyses over the IR: type inference, constant folding, pinning symbolic dims."""

from .fold import fold_constants
from .pin import pin_dims
from .shapes import infer_types

__all__ = ["infer_types", "fold_constants", "pin_dims"]
