"""The fast AR ("audio decoder"): predicts codebooks 1 … K−1 of a frame from the slow hidden state (spec §3)."""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from .layers import (AttentionMode, KVCache, Linear, RMSNorm, TransformerBlock, fused_linear, fuses_decode,
                     rope_rotation)

# The official fast AR computes attention by hand in the activation dtype over its 10-slot cache (here with the
# query heads grouped per key head rather than K/V copied per query head).
FAST_ATTENTION = AttentionMode(filled_only=True, manual=True)


class FastTransformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        c = config.fast
        self.embeddings = nn.Embedding(config.codebook_size, c.dim)  # one table shared by all codebooks
        self.layers = nn.ModuleList(TransformerBlock(c, config.norm_eps) for _ in range(c.n_layer))
        self.norm = RMSNorm(c.dim, config.norm_eps)
        self.output = Linear(c.dim, config.codebook_size, bias=False)

    def forward(
        self, x: torch.Tensor, position: int, caches: list[KVCache], rope: torch.Tensor, with_logits: bool = True
    ) -> torch.Tensor | None:
        """x [B, 1, dim] at fast position `position` (0 … K−1) → logits [B, 1, codebook_size], or None without
        `with_logits`.

        Position 0 (the slow hidden state) only fills the caches: its logits are unused at inference, so nothing
        reads its last layer's output either, and that layer only writes its keys and values (`fill_cache`).
        """
        rotation = rope_rotation(rope[position : position + 1])
        *layers, last = zip(self.layers, caches)
        for layer, cache in layers:
            x = layer(x, rotation, cache, position, FAST_ATTENTION, None)
        if not with_logits:
            last[0].fill_cache(x, rotation, last[1], position, FAST_ATTENTION)
            return None
        x = last[0](x, rotation, last[1], position, FAST_ATTENTION, None)
        if fuses_decode(x, self.output):
            return fused_linear(x, self.output, norm=self.norm)
        return self.output(self.norm(x))
