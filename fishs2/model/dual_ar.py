"""The dual-AR model: slow AR over the sequence, fast AR within each frame."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..config import ModelConfig
from .fast import FastTransformer
from .layers import KVCache
from .slow import SlowTransformer


class DualAR(nn.Module):
    """Holds both transformers. Per-request state lives outside the module (`generate.DecodeState`); the one thing
    a model keeps between requests is `static_decoder`, the last `generate.StaticDecoder` (caches sized to a
    request and the CUDA graph captured over them), reset by each request that reuses it."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.slow = SlowTransformer(config)
        self.fast = FastTransformer(config)
        self.static_decoder = None

    def _apply(self, fn, recurse=True):
        """`to`, `cuda`, `half` … move or cast the weights: a kept decoder whose graph reads the old addresses is
        dropped, which frees its caches on the old device (ComfyUI offloading the model frees them too)."""
        module = super()._apply(fn, recurse)
        if self.static_decoder is not None and self.static_decoder.weights != self.weight_addresses():
            self.static_decoder = None
        return module

    def weight_addresses(self) -> tuple[int, ...]:
        """Where the weights live: a captured CUDA graph reads these addresses, so any change invalidates it."""
        return tuple(t.data_ptr() for t in (*self.parameters(), *self.buffers()))

    @property
    def dtype(self) -> torch.dtype:
        """The activation dtype (a norm weight's: linear weights may be int8)."""
        return self.slow.norm.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.slow.norm.weight.device

    def compile_blocks(self, cache_dir: str | Path | None = None) -> "DualAR":
        """Opt-in `torch.compile` of every transformer block, with dynamic shapes so that one compile serves prefill,
        decode and every context length. Inductor keeps what it compiled in its on-disk cache (`cache_dir`, else
        TORCHINDUCTOR_CACHE_DIR or its default), so a later process skips most of the compile time.

        Meant for CUDA GPUs, where inductor fuses the small elementwise ops and the CUDA graph replays the compiled
        kernels. H100, batch 1 (bench/GPU-NOTES.md): it won before the decode kernels (stop 13: bf16 116.8 against
        99.1 frames/s, int8 151.7 against 124.7), and since them it is slightly slower (stop 16: bf16 145.3 against
        147.8, int8 199.8 against 205.1), so leave it off. The decode rows are a custom op that inductor leaves whole
        and the Triton kernel serves. On the CPU decode is
        GEMV-bound and gains nothing (33.6 against 35.3 frames/s eager on the bench's mid-size model), and inductor
        cannot lower the CPU's int8 matmul (`FishS2.from_pretrained` refuses int8 + compile off CUDA)."""
        if cache_dir is not None:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir)
        for block in [*self.slow.layers, *self.fast.layers]:
            block.compile(dynamic=True)
        return self

    def slow_caches(self, batch: int, capacity: int) -> list[KVCache]:
        c = self.config.slow
        return [KVCache(batch, c.n_local_heads, capacity, c.head_dim, self.dtype, self.device) for _ in range(c.n_layer)]

    def fast_caches(self, batch: int) -> list[KVCache]:
        c = self.config.fast
        capacity = self.config.num_codebooks
        return [KVCache(batch, c.n_local_heads, capacity, c.head_dim, self.dtype, self.device) for _ in range(c.n_layer)]
