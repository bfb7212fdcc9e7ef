"""Builders of test and benchmark models (ONNX ModelProtos, generated here: nothing downloads)."""

from .mlp import mlp
from .moe_layers import dense_masked_moe
from .pruned import pruned_ffn
from .relu_ffn import relu_ffn

__all__ = ["mlp", "dense_masked_moe", "pruned_ffn", "relu_ffn"]
