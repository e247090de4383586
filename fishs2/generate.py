"""Generation (spec §6): prefill, decode_one, the frame loop, and long-form generation over batches of turns.

One frame = one slow-AR step (the semantic token or `<|im_end|>`) + nine fast-AR steps (residual codebooks).
KV caches are sized to the request (prompt + max frames) and attention reads only filled positions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from .errors import ParameterError, TextError
from .model import AttentionMode, DualAR
from .model.layers import KVCache, rope_table
from .prompt import Exchange, PromptBuilder, Reference
from .sampling import RAS_TEMPERATURE, RAS_TOP_P, RAS_WINDOW, SamplingParams, sample

log = logging.getLogger(__name__)


@dataclass
class DecodeState:
    """Everything one request mutates: caches, RoPE tables, the next position. Built fresh per request."""

    slow_caches: list[KVCache]
    fast_caches: list[KVCache]
    slow_rope: torch.Tensor  # [capacity, head_dim/2, 2]
    fast_rope: torch.Tensor  # [num_codebooks, head_dim/2, 2]
    allowed_bias: torch.Tensor  # [vocab]: 0 for semantic ids and <|im_end|>, -inf elsewhere
    mode: AttentionMode
    position: int = 0


def new_state(model: DualAR, batch: int, capacity: int, eos_id: int, mode: AttentionMode | None = None) -> DecodeState:
    cfg = model.config
    mode = mode or AttentionMode()
    if not mode.filled_only:
        capacity = cfg.max_seq_len  # the official formulation preallocates the whole context
    device = model.device
    bias = torch.full((cfg.vocab_size,), float("-inf"), dtype=model.dtype, device=device)
    bias[cfg.semantic_begin_id : cfg.semantic_end_id + 1] = 0
    bias[eos_id] = 0
    return DecodeState(
        slow_caches=model.slow_caches(batch, capacity),
        fast_caches=model.fast_caches(batch),
        slow_rope=rope_table(torch.arange(capacity, device=device), cfg.slow.head_dim, cfg.rope_base),
        fast_rope=rope_table(torch.arange(cfg.num_codebooks, device=device), cfg.fast.head_dim, cfg.rope_base),
        allowed_bias=bias,
        mode=mode,
    )


def slow_step(model: DualAR, inp: torch.Tensor, state: DecodeState) -> tuple[torch.Tensor, torch.Tensor]:
    """inp [B, K+1, T] at the next T positions → (logits [B, vocab], hidden [B, dim]) of the last position."""
    start, T = state.position, inp.shape[-1]
    if start + T > state.slow_caches[0].capacity:
        raise ParameterError(
            f"max_frames: the request needs {start + T} positions but the cache holds "
            f"{state.slow_caches[0].capacity}; lower max_frames or shorten the text."
        )
    logits, hidden = model.slow(inp, start, state.slow_caches, state.slow_rope[start : start + T], state.mode)
    state.position = start + T
    return logits[:, -1], hidden[:, -1]


def sample_frame(
    model: DualAR,
    logits: torch.Tensor,
    hidden: torch.Tensor,
    state: DecodeState,
    params: SamplingParams,
    generators: list[torch.Generator],
    window: torch.Tensor | None,
) -> torch.Tensor:
    """One frame column [B, K+1] = [main token, c0 … c_{K−1}] from the slow outputs (spec §6.3).

    RNG order per frame, per sequence: main token, RAS alternative, then codebooks 1 … K−1.
    """
    cfg = model.config
    biased = logits + state.allowed_bias
    main = sample(biased, params.temperature, params.top_p, params.top_k, generators)
    alternative = sample(biased, RAS_TEMPERATURE, RAS_TOP_P, params.top_k, generators)
    if window is not None:
        repeated = (window == main[:, None]).any(dim=-1)
        semantic = (main >= cfg.semantic_begin_id) & (main <= cfg.semantic_end_id)
        main = torch.where(repeated & semantic, alternative, main)

    fast = model.fast
    fast(hidden[:, None], 0, state.fast_caches, state.fast_rope, with_logits=False)
    code = (main - cfg.semantic_begin_id).clamp(0, cfg.codebook_size - 1)
    codes = [code]
    for k in range(1, cfg.num_codebooks):
        fast_logits = fast(fast.embeddings(code)[:, None], k, state.fast_caches, state.fast_rope)
        code = sample(fast_logits[:, -1], params.temperature, params.top_p, params.top_k, generators)
        codes.append(code)
    return torch.stack([main, *codes], dim=1)


@torch.inference_mode()
def generate_frames(
    model: DualAR,
    prompt: torch.Tensor,
    params: SamplingParams,
    max_frames: int,
    generators: list[torch.Generator],
    eos_id: int,
    mode: AttentionMode | None = None,
) -> Iterator[torch.Tensor]:
    """Yield frame columns [B, K+1] (on the model device) until every sequence emitted `<|im_end|>` or
    `max_frames` frames were produced. prompt: [B, K+1, T] (or [K+1, T]), equal length for all sequences.

    As in the official loop, the first (prefill) token is not checked for the stop and the RAS window only
    holds frames of the decode loop.
    """
    if prompt.dim() == 2:
        prompt = prompt[None]
    batch, _, length = prompt.shape
    if len(generators) != batch:
        raise ValueError(f"generators: {len(generators)} given for a batch of {batch}")
    state = new_state(model, batch, length + max_frames, eos_id, mode)
    logits, hidden = slow_step(model, prompt.to(model.device), state)
    frame = sample_frame(model, logits, hidden, state, params, generators, window=None)
    yield frame
    window = torch.zeros(batch, RAS_WINDOW, dtype=frame.dtype, device=frame.device)
    finished = torch.zeros(batch, dtype=torch.bool, device=frame.device)
    for _ in range(1, max_frames):
        logits, hidden = slow_step(model, frame[:, :, None], state)
        frame = sample_frame(model, logits, hidden, state, params, generators, window)
        window = torch.cat([window[:, 1:], frame[:, :1]], dim=1)
        yield frame
        finished |= frame[:, 0] == eos_id
        if bool(finished.all()):
            return
