"""A hand-written PyTorch mixture of experts (an ``nn.ModuleList`` of FFNs, every expert run and
masked by a scattered top-k gate), exported with torch's TorchScript exporter: the "unrolled"
dense-masked form as real torch code writes it (Gemm per ``nn.Linear``, Slice per gate column).
Needs the ``models`` extra (torch)."""

from __future__ import annotations

import onnx

from .hf import export


def torch_moe(hidden: int = 32, ffn: int = 64, experts: int = 4, top_k: int = 2, *, activation: str = "relu",
              gated: bool = False, normalize: bool = True, seed: int = 0) -> onnx.ModelProto:
    import torch
    from torch import nn

    torch.manual_seed(seed)
    act = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}[activation]

    class Expert(nn.Module):
        def __init__(self):
            super().__init__()
            self.up = nn.Linear(hidden, 2 * ffn if gated else ffn)
            self.act = act()
            self.down = nn.Linear(ffn, hidden)

        def forward(self, x):
            u = self.up(x)
            h = self.act(u[:, :ffn]) * u[:, ffn:] if gated else self.act(u)
            return self.down(h)

    class MoE(nn.Module):
        def __init__(self):
            super().__init__()
            self.router = nn.Linear(hidden, experts)
            self.experts = nn.ModuleList(Expert() for _ in range(experts))

        def forward(self, x):
            logits = self.router(x)
            weights, idx = logits.softmax(-1).topk(top_k, dim=-1)
            if normalize:
                weights = weights / weights.sum(-1, keepdim=True)
            gate = torch.zeros_like(logits).scatter(1, idx, weights)
            out = torch.zeros_like(x)
            for e, expert in enumerate(self.experts):
                out = out + expert(x) * gate[:, e:e + 1]
            return out

    x = torch.randn(5, hidden)
    return export(MoE(), (x,), ["x"], ["y"], {"x": {0: "tokens"}, "y": {0: "tokens"}})
