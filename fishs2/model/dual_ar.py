"""The dual-AR model: slow AR over the sequence, fast AR within each frame."""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from .fast import FastTransformer
from .layers import KVCache
from .slow import SlowTransformer


class DualAR(nn.Module):
    """Holds both transformers. Caches live outside the module (see `generate.DecodeState`), so a model carries
    no per-request state and an interrupted request leaves nothing behind."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.slow = SlowTransformer(config)
        self.fast = FastTransformer(config)

    @property
    def dtype(self) -> torch.dtype:
        """The activation dtype (a norm weight's: linear weights may be int8)."""
        return self.slow.norm.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.slow.norm.weight.device

    def slow_caches(self, batch: int, capacity: int) -> list[KVCache]:
        c = self.config.slow
        return [KVCache(batch, c.n_local_heads, capacity, c.head_dim, self.dtype, self.device) for _ in range(c.n_layer)]

    def fast_caches(self, batch: int) -> list[KVCache]:
        c = self.config.fast
        capacity = self.config.num_codebooks
        return [KVCache(batch, c.n_local_heads, capacity, c.head_dim, self.dtype, self.device) for _ in range(c.n_layer)]
