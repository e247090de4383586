"""Weight quantisation of the dual-AR model's linear layers: int8 (weight-only, gpt-fast style) and fp8 (e4m3 weights
and activations, for GPUs with fp8 tensor cores). Activations, norms and the codebook embeddings stay in the model
dtype.

int8: every linear layer and the token table become int8 with one scale per output row. Decode is memory-bound, so
halving the bytes read per frame (bf16 → int8) is what speeds it up. On the CPU the matmul runs in
`aten._weight_int8pack_mm` (int8 weights, bf16 activations). On CUDA the decode step's few rows go through a Triton
kernel that reads each int8 weight once (`fishs2.matvec`). Everything else (prefill, or CUDA without Triton)
dequantises the weight for each matmul, which only saves memory: that way an H100 decoded int8 at 28.4 frames/s
against bf16's 77.9 (both in a CUDA graph), and compiled blocks did not fuse the two usefully (12.8 frames/s).
Symmetric rounding to [-127, 127] keeps the error of each weight within half a step, scale / 2.

fp8: every linear layer becomes float8_e4m3fn with one scale per output row, and each call quantises its input
with one scale per token, so the matmul itself runs in fp8 (`torch._scaled_mm`: cuBLASLt on compute capability
≥ 8.9 — Ada, Hopper, Blackwell — and PyTorch's slow reference kernel on the CPU, where the same code is tested). The token
table (also the tied output head) stays in the model dtype. Rounding to e4m3's 3 mantissa bits costs more accuracy
than int8's per-row steps: on the tiny golden model the slow logits move 8% (int8: 2%).
"""

from __future__ import annotations

import torch
from torch import nn

from . import matvec
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

    def rows(self, ids: torch.Tensor) -> "Int8Linear":
        """This layer restricted to output rows `ids` (copies)."""
        return Int8Linear(self.weight.index_select(0, ids), self.scales.index_select(0, ids))

    def matvec_operands(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, scales) for `fishs2.matvec`."""
        return self.weight, self.scales

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu":
            # The CPU kernel is fast with bf16 activations and about 10× slower with fp32 ones, so fp32 models
            # round the matmul's inputs to bf16 (0.4% relative on top of int8's rounding).
            flat = x.reshape(-1, x.shape[-1]).to(torch.bfloat16).contiguous()
            out = torch.ops.aten._weight_int8pack_mm(flat, self.weight, self.scales.to(torch.bfloat16))
            return out.to(x.dtype).view(*x.shape[:-1], -1)
        return matvec.linear(x, self.weight, self.scales)


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


FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # the largest finite float8_e4m3fn


def quantize_rows_fp8(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """tensor [rows, n] → (float8_e4m3fn [rows, n], fp32 scales [rows, 1]) with tensor ≈ fp8 · scales; each row's
    largest magnitude maps to 448. Computed on the tensor's device, so quantising activations reads nothing back."""
    scales = tensor.float().abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / FP8_MAX
    return (tensor.float() / scales).clamp(-FP8_MAX, FP8_MAX).to(FP8), scales


class Fp8Linear(nn.Module):
    """y = x Wᵀ as one fp8 × fp8 matmul with fp32 accumulation: W stored as e4m3 rows with one scale per output row,
    x quantised per call with one scale per token. `_scaled_mm` takes per-tensor scales on every backend, so it runs
    with unit scales and the row and token scales are applied to its fp32 output (the same arithmetic as a
    row-wise scaled matmul)."""

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor):
        super().__init__()
        self.register_buffer("weight", weight)  # [out, in] e4m3; .t() is the column-major operand cuBLASLt wants
        self.register_buffer("scales", scales.reshape(1, -1))  # [1, out] fp32
        self.register_buffer("unit", torch.ones((), device=weight.device))

    @classmethod
    def from_float(cls, linear: nn.Linear) -> "Fp8Linear":
        return cls(*quantize_rows_fp8(linear.weight.detach()))

    def rows(self, ids: torch.Tensor) -> "Fp8Linear":
        """This layer restricted to output rows `ids` (copies)."""
        weight = self.weight.view(torch.uint8).index_select(0, ids).view(FP8)  # index_select has no fp8 kernel
        return Fp8Linear(weight, self.scales.index_select(1, ids))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, token_scales = quantize_rows_fp8(x.reshape(-1, x.shape[-1]))
        out = torch._scaled_mm(tokens, self.weight.t(), scale_a=self.unit, scale_b=self.unit, out_dtype=torch.float32)
        return (out * token_scales * self.scales).to(x.dtype).view(*x.shape[:-1], -1)


def fp8_supported(device: torch.device) -> bool:
    """Whether `device` runs fp8 matmuls at speed: CUDA with fp8 tensor cores (compute capability ≥ 8.9). The CPU
    has PyTorch's reference kernel — correct, which is how the tests run `Fp8Linear`, but ~70× slower than int8
    for the decode step's matrix-vector products — so loading for use there is refused."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def quantize_fp8_model(model: DualAR) -> DualAR:
    """Replace, in place, every nn.Linear by its fp8 form (the token table and its tied head stay as they are)."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, Fp8Linear.from_float(child))
    return model
