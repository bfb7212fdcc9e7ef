"""Builders of test and benchmark models (ONNX ModelProtos, generated here: nothing downloads)."""

from .mlp import mlp
from .moe_layers import dense_masked_moe
from .pruned import pruned_ffn
from .relu_ffn import relu_ffn
from .torch_moe import torch_moe  # needs torch only when called

__all__ = ["mlp", "dense_masked_moe", "pruned_ffn", "relu_ffn", "torch_moe"]
