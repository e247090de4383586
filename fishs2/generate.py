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


@dataclass
class Segment:
    """The audio generated for one batch of turns (one assistant message)."""

    text: str  # the batch text as prompted, speaker tags included
    turn_indices: list[int]  # which input turns this batch holds
    codes: torch.Tensor  # [K, n] int64 on the CPU
    hit_frame_limit: bool  # max_frames ran out before <|im_end|>

    @property
    def num_frames(self) -> int:
        return self.codes.shape[1]


@dataclass
class FrameEvent:
    """One new frame of take `take` in segment `segment`: codes [K] on the CPU."""

    take: int
    segment: int
    codes: torch.Tensor


@dataclass
class SegmentEvent:
    """Segment `segment` of take `take` is finished."""

    take: int
    segment: int
    result: Segment


@dataclass
class Generation:
    """Everything generated for one take."""

    segments: list[Segment] = field(default_factory=list)
    seed: int | None = None

    @property
    def codes(self) -> torch.Tensor:
        """All segments' codes, concatenated in time: [K, n]."""
        return torch.cat([s.codes for s in self.segments], dim=1)

    @property
    def num_frames(self) -> int:
        return sum(s.num_frames for s in self.segments)


def fit_prompt(
    builder: PromptBuilder,
    text: str,
    references: list[Reference],
    history: list[Exchange],
    max_frames: int,
    max_seq_len: int,
) -> torch.Tensor:
    """Build the prompt, dropping the oldest carried exchanges until prompt + max_frames fits the context."""
    kept = list(history)
    while True:
        prompt = builder.build(text, references, kept)
        if prompt.shape[1] + max_frames <= max_seq_len:
            if len(kept) < len(history):
                log.info("context: dropped %d earlier exchange(s) to fit %d positions", len(history) - len(kept), max_seq_len)
            return prompt
        if not kept:
            break
        kept.pop(0)
    if prompt.shape[1] >= max_seq_len:
        raise TextError(
            f"text: the prompt (reference voices + this turn) takes {prompt.shape[1]} positions but the model's "
            f"context holds {max_seq_len}; use a shorter reference clip or split the text into speaker turns."
        )
    raise ParameterError(
        f"max_frames={max_frames}: the prompt takes {prompt.shape[1]} of the model's {max_seq_len} positions, so "
        f"at most {max_seq_len - prompt.shape[1]} frames fit; lower max_frames."
    )


def generate_segments(
    model: DualAR,
    builder: PromptBuilder,
    batches: list[tuple[str, list[int]]],
    references: list[Reference],
    params: SamplingParams,
    max_frames: int,
    generators: list[torch.Generator],
    *,
    keep_last_frame_at_limit: bool = True,
    mode: AttentionMode | None = None,
) -> Iterator[FrameEvent | SegmentEvent]:
    """Generate batch after batch in one growing conversation (spec §5.2c), for one or several takes.

    Each take has its own generator and its own history. Takes whose prompts have the same length run as one
    batched forward. The official code drops the last frame when `max_frames` runs out; with
    `keep_last_frame_at_limit` (the default) that real frame is kept.
    """
    eos_id = builder.tokenizer.im_end_id
    takes = len(generators)
    histories: list[list[Exchange]] = [[] for _ in range(takes)]
    for index, (text, turn_indices) in enumerate(batches):
        prompts = [
            fit_prompt(builder, text, references, histories[t], max_frames, model.config.max_seq_len)
            for t in range(takes)
        ]
        by_length: dict[int, list[int]] = {}
        for t, prompt in enumerate(prompts):
            by_length.setdefault(prompt.shape[1], []).append(t)
        for group in by_length.values():
            frames: list[list[torch.Tensor]] = [[] for _ in group]
            stopped = [False] * len(group)
            batch_prompt = torch.stack([prompts[t] for t in group])
            for step, frame in enumerate(
                generate_frames(model, batch_prompt, params, max_frames, [generators[t] for t in group], eos_id, mode)
            ):
                frame = frame.cpu()
                for j, t in enumerate(group):
                    if stopped[j]:
                        continue
                    frames[j].append(frame[j])
                    if step > 0 and int(frame[j, 0]) == eos_id:
                        stopped[j] = True
                    else:
                        yield FrameEvent(t, index, frame[j, 1:])
            for j, t in enumerate(group):
                columns = torch.stack(frames[j], dim=1).long()  # [K+1, n]
                if stopped[j] or not keep_last_frame_at_limit:
                    columns = columns[:, :-1]
                segment = Segment(text, list(turn_indices), columns[1:].contiguous(), hit_frame_limit=not stopped[j])
                histories[t].append(Exchange(text, segment.codes))
                yield SegmentEvent(t, index, segment)
