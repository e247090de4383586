"""The slow AR: a Qwen3-shaped decoder over text tokens and audio frames (spec §2)."""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from .layers import (AttentionMode, KVCache, Linear, RMSNorm, TransformerBlock, attention_mask, frame_scale, project,
                     rope_rotation)


class SlowTransformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        c = config.slow
        self.config = config
        self.embeddings = nn.Embedding(config.vocab_size, c.dim)
        # Codebook i uses rows i·codebook_size … (i+1)·codebook_size − 1.
        self.codebook_embeddings = nn.Embedding(config.codebook_size * config.num_codebooks, c.dim)
        self.layers = nn.ModuleList(TransformerBlock(c, config.norm_eps) for _ in range(c.n_layer))
        self.norm = RMSNorm(c.dim, config.norm_eps)
        # None: the output head is the token table (tied); int8 models set it to the table's int8 projection.
        self.output = None if config.tie_word_embeddings else Linear(c.dim, config.vocab_size, bias=False)

    def embed(self, inp: torch.Tensor) -> torch.Tensor:
        """inp [B, K+1, T] → [B, T, dim]: token embedding, plus the summed codebook embeddings / √(K+1) at
        semantic positions."""
        cfg = self.config
        tokens, codes = inp[:, 0], inp[:, 1:]
        offsets = torch.arange(cfg.num_codebooks, device=inp.device)[None, :, None] * cfg.codebook_size
        vq_sum = self.codebook_embeddings(codes + offsets).sum(dim=1)  # [B, K, T, dim] → [B, T, dim]
        is_semantic = ((tokens >= cfg.semantic_begin_id) & (tokens <= cfg.semantic_end_id))[..., None]
        x = self.embeddings(tokens) + vq_sum * is_semantic
        return torch.where(is_semantic, x / frame_scale(cfg.num_codebooks), x)

    def head(self, x: torch.Tensor, rows: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Final norm and output projection → (logits [B, T, vocab], or [B, T, R] through `rows` (`output_rows`),
        hidden handed to the fast AR [B, T, dim])."""
        hidden = self.norm(x)
        if rows is not None:
            return rows(hidden), hidden
        logits = project(hidden, self.embeddings.weight) if self.output is None else self.output(hidden)
        return logits, hidden

    def output_rows(self, ids: torch.Tensor) -> nn.Module:
        """The output projection restricted to the vocabulary ids `ids` [R]: a copy of those rows, so that a decode
        step that can only sample R ids (the semantic tokens and the stop token, spec §6.3) reads R rows of the
        155 776-row head instead of all of them. Each of its logits is the whole head's for that id (to the last bit
        where the matmul kernel does not change with the row count)."""
        if self.output is None:
            return LinearRows(self.embeddings.weight.index_select(0, ids))
        select = getattr(self.output, "rows", None)  # int8 / fp8 layers know how to cut their rows and scales
        return select(ids) if select is not None else LinearRows(self.output.weight.index_select(0, ids))

    def forward(
        self,
        inp: torch.Tensor,
        start: int,
        caches: list[KVCache],
        rope: torch.Tensor,
        mode: AttentionMode,
        last_only: bool = True,
        padding: torch.Tensor | None = None,
        head_rows: nn.Module | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """inp [B, K+1, T] in cache slots start … start+T−1 → (logits, hidden), of the last position only
        unless `last_only` is False; the logits of the ids of `head_rows` (`output_rows`) only, if given.
        `padding`: see `Attention.forward`."""
        x = self.embed(inp)
        T = x.shape[1]
        mask = attention_mask(start, T, caches[0].capacity, mode, padding, x.device)
        if isinstance(start, torch.Tensor):  # static decoding: the slots of this step, computed once for all layers
            start = start.reshape(-1)[:1] + torch.arange(T, device=x.device)
        rotation = rope_rotation(rope)
        for layer, cache in zip(self.layers, caches):
            x = layer(x, rotation, cache, start, mode, mask)
        if last_only:
            x = x[:, -1:]
        return self.head(x, head_rows)


class LinearRows(nn.Module):
    """x Wᵀ for a kept slice W [R, dim] of an output projection (`SlowTransformer.output_rows`)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return project(x, self.weight)
