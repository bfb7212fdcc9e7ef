"""Builders of test and benchmark models (ONNX ModelProtos, generated here: nothing downloads)."""

from .mlp import mlp

__all__ = ["mlp"]
