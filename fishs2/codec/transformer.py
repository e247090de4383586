"""WindowLimitedTransformer (spec §7.4): causal transformer whose attention sees the last `window` steps."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import TransformerConfig

# Queries are processed in blocks of this many steps; each block attends to at most
# block + window − 1 keys, so memory stays bounded for long inputs. Sequences no longer than
# one block take a single SDPA call with the full [T, T] mask, exactly like the official code.
QUERY_BLOCK = 1024


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32, rounded back to the input dtype, then scaled by the weight."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(torch.mean(x32 * x32, dim=-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def rope_table(start: int, length: int, head_dim: int, base: float, device: torch.device) -> Tensor:
    """cos/sin of positions start … start+length−1 as [length, head_dim/2, 2], rounded to bf16.

    Same values as rows of the official 327 680-row table; the bf16 rounding is part of the model.
    """
    inv_freq = 1.0 / (
        base ** (torch.arange(0, head_dim, 2, device=device)[: head_dim // 2].float() / head_dim)
    )
    positions = torch.arange(start, start + length, device=device)
    angles = torch.outer(positions, inv_freq)
    cis = torch.polar(torch.ones_like(angles), angles)
    return torch.stack([cis.real, cis.imag], dim=-1).to(torch.bfloat16)


def apply_rope(x: Tensor, table: Tensor) -> Tensor:
    """Rotate interleaved pairs (2i, 2i+1) of x [B, T, H, D] in fp32 by the table [T, D/2, 2]."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    table = table.view(1, x.shape[1], 1, pairs.shape[-2], 2)
    a, b = pairs[..., 0], pairs[..., 1]
    cos, sin = table[..., 0], table[..., 1]
    rotated = torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1)
    return rotated.flatten(3).type_as(x)


def windowed_attention(q: Tensor, k: Tensor, v: Tensor, window: int) -> Tensor:
    """SDPA where query i sees keys j with i − window < j ≤ i. q, k, v: [B, H, T, D]."""
    length = q.shape[-2]
    outputs = []
    for start in range(0, length, QUERY_BLOCK):
        end = min(start + QUERY_BLOCK, length)
        first_key = max(0, start - window + 1)
        i = torch.arange(start, end, device=q.device)[:, None]
        j = torch.arange(first_key, end, device=q.device)[None, :]
        mask = (j <= i) & (j > i - window)  # [queries, keys] bool
        outputs.append(
            F.scaled_dot_product_attention(
                q[:, :, start:end], k[:, :, first_key:end], v[:, :, first_key:end], attn_mask=mask
            )
        )
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-2)


class Attention(nn.Module):
    """Multi-head attention with a fused qkv projection, interleaved RoPE, no biases, no QK-norm."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.head_dim = cfg.head_dim
        inner = cfg.n_head * cfg.head_dim
        self.wqkv = nn.Linear(cfg.dim, 3 * inner, bias=False)
        self.wo = nn.Linear(inner, cfg.dim, bias=False)

    def forward(self, x: Tensor, rope: Tensor, window: int) -> Tensor:
        # x: [B, T, dim]
        batch, length, _ = x.shape
        q, k, v = self.wqkv(x).split(self.n_head * self.head_dim, dim=-1)
        q = apply_rope(q.view(batch, length, self.n_head, self.head_dim), rope)
        k = apply_rope(k.view(batch, length, self.n_head, self.head_dim), rope)
        v = v.view(batch, length, self.n_head, self.head_dim)
        y = windowed_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), window)
        return self.wo(y.transpose(1, 2).contiguous().view(batch, length, -1))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) · w3 x), no biases."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.intermediate_size, bias=False)
        self.w3 = nn.Linear(cfg.dim, cfg.intermediate_size, bias=False)
        self.w2 = nn.Linear(cfg.intermediate_size, cfg.dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class LayerScale(nn.Module):
    """Per-channel learned scale γ."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), 1e-2))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class TransformerBlock(nn.Module):
    """Pre-norm block with LayerScale on both residual branches."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.attention = Attention(cfg)
        self.feed_forward = FeedForward(cfg)
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention_layer_scale = LayerScale(cfg.dim)
        self.ffn_layer_scale = LayerScale(cfg.dim)

    def forward(self, x: Tensor, rope: Tensor, window: int) -> Tensor:
        h = x + self.attention_layer_scale(self.attention(self.attention_norm(x), rope, window))
        return h + self.ffn_layer_scale(self.feed_forward(self.ffn_norm(h)))


class WindowLimitedTransformer(nn.Module):
    """Causal sliding-window transformer over channels-first input [B, C, T] → [B, C, T].

    Each layer widens the view into the past by window − 1 steps, so an output step depends on at
    most `receptive_field` earlier input steps.
    """

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)

    @property
    def receptive_field(self) -> int:
        """How many past steps can influence an output step."""
        return self.cfg.n_layer * (self.cfg.window_size - 1)

    def forward(self, x: Tensor, start_pos: int = 0) -> Tensor:
        """`start_pos` is the RoPE position of x's first step (the official code always uses 0)."""
        x = x.transpose(1, 2)  # [B, T, C]
        rope = rope_table(start_pos, x.shape[1], self.cfg.head_dim, self.cfg.rope_base, x.device)
        for layer in self.layers:
            x = layer(x, rope, self.cfg.window_size)
        return self.norm(x).transpose(1, 2)
