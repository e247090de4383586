"""int8 weight-only quantisation of the dual-AR model (gpt-fast style): every linear layer and the token table
become int8 with one scale per output row; activations, norms and the codebook embeddings stay in the model dtype.

Decode is memory-bound, so halving the bytes read per frame (bf16 → int8) is what speeds it up; on the CPU the
matmul runs in `aten._weight_int8pack_mm` (int8 weights, bf16 activations); elsewhere the weight is dequantised
for each matmul, which only saves memory: on an H100 int8 decodes at 28.4 frames/s against bf16's 77.9 (both in a
CUDA graph), and compiled blocks do not fuse the two usefully (12.8 frames/s).
Symmetric rounding to [-127, 127] keeps the error of each weight within half a step, scale / 2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .model import DualAR


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [out, in] → (int8 [out, in], scales [out] in weight.dtype) with weight ≈ int8 · scales[:, None]."""
    w = weight.float()
    scales = w.abs().amax(dim=1).clamp(min=1e-12) / 127
    q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scales.to(weight.dtype)


class Int8Linear(nn.Module):
    """y = x Wᵀ with W stored as int8 rows and per-row scales (no bias: the model has none)."""

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor):
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("scales", scales)

    @classmethod
    def from_float(cls, linear: nn.Linear) -> "Int8Linear":
        return cls(*quantize_rows(linear.weight.detach()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu":
            # The CPU kernel is fast with bf16 activations and about 10× slower with fp32 ones, so fp32 models
            # round the matmul's inputs to bf16 (0.4% relative on top of int8's rounding).
            flat = x.reshape(-1, x.shape[-1]).to(torch.bfloat16).contiguous()
            out = torch.ops.aten._weight_int8pack_mm(flat, self.weight, self.scales.to(torch.bfloat16))
            return out.to(x.dtype).view(*x.shape[:-1], -1)
        return F.linear(x, self.weight.to(x.dtype)) * self.scales


class Int8Embedding(nn.Module):
    """An embedding table stored like `Int8Linear` (one scale per row): looks rows up, and — for the tied slow
    output head — projects onto the table (`linear`)."""

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor):
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("scales", scales)
        self.linear = Int8Linear(weight, scales)

    @classmethod
    def from_float(cls, embedding: nn.Embedding) -> "Int8Embedding":
        return cls(*quantize_rows(embedding.weight.detach()))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.weight[ids].to(self.scales.dtype) * self.scales[ids, None]


def quantize_int8(model: DualAR) -> DualAR:
    """Replace, in place, every nn.Linear and the slow token table (tied output head) by its int8 form."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, Int8Linear.from_float(child))
    model.slow.embeddings = Int8Embedding.from_float(model.slow.embeddings)
    if model.slow.output is None:  # tied head: project onto the int8 table
        model.slow.output = model.slow.embeddings.linear
    return model
