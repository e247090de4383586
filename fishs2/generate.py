"""Generation (spec §6): prefill, the per-frame decode step, the frame loop, and long-form generation over batches
of turns.

One frame = one slow-AR step (the semantic token or `<|im_end|>`) + nine fast-AR steps (residual codebooks).
KV caches are sized to the request (prompt + max frames) and attention reads only filled positions. Long prompts
are prefilled in chunks; sequences of different prompt lengths share one batch, left-padded; the host checks for
the stop every few frames. On CUDA the decode step runs as one captured CUDA graph (`StaticDecoder`), which the model
keeps between requests, so only its first request pays for the capture.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from .errors import ParameterError, TextError
from .model import AttentionMode, DualAR
from .model.layers import KVCache, rope_table
from .prompt import Exchange, PromptBuilder, Reference
from .sampling import RAS_WINDOW, DeviceSampling, FrameUniforms, SamplingParams, draw_uniforms, sample, sample_main

log = logging.getLogger(__name__)

PREFILL_CHUNK = 2048  # prompt positions per prefill forward: bounds activation memory for long prompts
STATIC_SLOTS = 1024  # a static decoder's cache holds a multiple of this many positions (see `static_capacity`)


@dataclass
class DecodeState:
    """Everything one request mutates: caches, RoPE tables, the next position. Built fresh per request."""

    slow_caches: list[KVCache]
    fast_caches: list[KVCache]
    slow_rope: torch.Tensor  # [capacity, head_dim/2, 2]
    fast_rope: torch.Tensor  # [num_codebooks, head_dim/2, 2]
    allowed_bias: torch.Tensor  # [vocab]: 0 for semantic ids and <|im_end|>, -inf elsewhere
    allowed_ids: torch.Tensor  # [R]: the ids where allowed_bias is 0, ascending
    head_rows: torch.nn.Module | None  # the slow head over allowed_ids only (None: the whole head, `full_head`)
    mode: AttentionMode
    position: int = 0  # next cache slot
    pad: torch.Tensor | None = None  # [B] left-padding slots per sequence (prompts of different lengths)
    padding: torch.Tensor | None = None  # [B, 1, 1, capacity]: True at padding slots

    @property
    def capacity(self) -> int:
        return self.slow_caches[0].capacity

    def rope(self, slots: torch.Tensor) -> torch.Tensor:
        """RoPE rows of cache slots [T] → [T, D/2, 2], or [B, T, D/2, 2] when sequences are padded (a sequence's
        position is its slot minus its padding)."""
        if self.pad is None:
            return self.slow_rope[slots]
        return self.slow_rope[(slots[None] - self.pad[:, None]).clamp(min=0)]

    def allowed_logits(self, logits: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """A slow step's last logits [B, R] (of `head_rows`' ids) or [B, vocab] (the whole head) → [B, vocab] with
        −inf at every id a frame cannot take (the official bias's result: the allowed logits are unchanged, since
        x + 0 = x). `out` [B, vocab], if given, receives them; with `head_rows` it must already hold −inf at the
        other ids, which it keeps."""
        if self.head_rows is None:
            return logits + self.allowed_bias if out is None else torch.add(logits, self.allowed_bias, out=out)
        if out is None:
            out = logits.new_full((logits.shape[0], self.allowed_bias.shape[0]), float("-inf"))
        return out.index_copy_(1, self.allowed_ids, logits)


def new_state(
    model: DualAR,
    batch: int,
    capacity: int,
    eos_id: int,
    mode: AttentionMode | None = None,
    pad: torch.Tensor | None = None,
) -> DecodeState:
    """Fresh caches for `batch` sequences of `capacity` slots; `pad` [B]: left-padding slots of each sequence."""
    cfg = model.config
    mode = mode or AttentionMode()
    if mode.full_context:
        capacity = cfg.max_seq_len  # the official formulation preallocates the whole context
    device = model.device
    allowed = torch.zeros(cfg.vocab_size, dtype=torch.bool)
    allowed[cfg.semantic_begin_id : cfg.semantic_end_id + 1] = True
    allowed[eos_id] = True
    bias = torch.zeros(cfg.vocab_size, dtype=model.dtype).masked_fill_(~allowed, float("-inf")).to(device)
    allowed_ids = allowed.nonzero().flatten().to(device)
    padding = None
    if pad is not None:
        pad = pad.to(device)
        padding = (torch.arange(capacity, device=device) < pad[:, None])[:, None, None]
    return DecodeState(
        slow_caches=model.slow_caches(batch, capacity),
        fast_caches=model.fast_caches(batch),
        slow_rope=rope_table(torch.arange(capacity, device=device), cfg.slow.head_dim, cfg.rope_base),
        fast_rope=rope_table(torch.arange(cfg.num_codebooks, device=device), cfg.fast.head_dim, cfg.rope_base),
        allowed_bias=bias,
        allowed_ids=allowed_ids,
        head_rows=None if mode.full_head else model.slow.output_rows(allowed_ids),
        mode=mode,
        pad=pad,
        padding=padding,
    )


def check_capacity(state: DecodeState, needed: int) -> None:
    if needed > state.capacity:
        raise ParameterError(
            f"max_frames: the request needs {needed} positions but the cache holds {state.capacity}; "
            "lower max_frames or shorten the text."
        )


def slow_step(model: DualAR, inp: torch.Tensor, state: DecodeState) -> tuple[torch.Tensor, torch.Tensor]:
    """inp [B, K+1, T] at the next T positions → (logits [B, vocab], −inf at the ids a frame cannot take; hidden
    [B, dim]) of the last position."""
    start, T = state.position, inp.shape[-1]
    check_capacity(state, start + T)
    rope = state.rope(torch.arange(start, start + T, device=state.slow_rope.device))
    logits, hidden = model.slow(inp, start, state.slow_caches, rope, state.mode, padding=state.padding,
                                head_rows=state.head_rows)
    state.position = start + T
    return state.allowed_logits(logits[:, -1]), hidden[:, -1]


def prefill(
    model: DualAR, prompt: torch.Tensor, state: DecodeState, chunk: int = PREFILL_CHUNK
) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompt [B, K+1, T] through the slow AR, `chunk` positions per forward → (logits, hidden) of its last
    position. Each chunk attends to the cached earlier ones, so the result equals one forward up to rounding."""
    for start in range(0, prompt.shape[-1], chunk):
        logits, hidden = slow_step(model, prompt[..., start : start + chunk], state)
    return logits, hidden


def sample_frame(
    model: DualAR,
    logits: torch.Tensor,
    hidden: torch.Tensor,
    state: DecodeState,
    params: SamplingParams | DeviceSampling,
    generators: list[torch.Generator] | None,
    window: torch.Tensor | None,
    uniforms: FrameUniforms | None = None,
) -> torch.Tensor:
    """One frame column [B, K+1] = [main token, c0 … c_{K−1}] from the slow outputs (spec §6.3): `logits` as
    `slow_step` returns them, −inf at the ids a frame cannot take.

    RNG order per frame, per sequence: main token, RAS alternative, then codebooks 1 … K−1 — drawn here from
    `generators`, or read from `uniforms` that `FrameUniforms.draw` filled in that order. With `head_rows` the
    slow tokens are drawn over the allowed ids only (`sample_main`).
    """
    cfg = model.config
    if isinstance(params, SamplingParams):
        params = DeviceSampling.of(params, cfg, logits.dtype, logits.device)
    if uniforms is None:
        tokens = [draw_uniforms(generators, logits.shape[-1], logits.dtype, logits.device) for _ in range(2)]
    else:
        tokens = [uniforms.tokens[:, 0], uniforms.tokens[:, 1]]
    columns = None if state.head_rows is None else state.allowed_ids
    main, alternative = sample_main(logits, params, tokens, columns)
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
        code = sample(fast_logits[:, -1], params.temperature, params.code_cut, generators,
                      None if uniforms is None else uniforms.codes[:, k - 1])
        codes.append(code)
    return torch.stack([main, *codes], dim=1)


class FrameDecoder:
    """The decode loop's step: the previous frame through the slow AR (attention over the filled positions), then
    `sample_frame`, with the previous frame and the RAS window (main tokens of the last decode frames) kept in
    buffers that each call updates in place. Built per request; `StaticDecoder` is the fixed-shape variant."""

    def __init__(self, model: DualAR, state: DecodeState, params: DeviceSampling, generators: list[torch.Generator],
                 first_frame: torch.Tensor):
        self.model, self.state, self.params, self.generators = model, state, params, generators
        self.frame = first_frame.clone()  # [B, K+1]: the previous frame before a call, the new one after
        self.window = torch.zeros(first_frame.shape[0], RAS_WINDOW, dtype=first_frame.dtype, device=first_frame.device)

    def __call__(self) -> torch.Tensor:
        """Decode one frame → the frame buffer [B, K+1] (overwritten by the next call)."""
        logits, hidden = slow_step(self.model, self.frame[:, :, None], self.state)
        frame = sample_frame(self.model, logits, hidden, self.state, self.params, self.generators, self.window)
        self.window.copy_(torch.cat([self.window[:, 1:], frame[:, :1]], dim=1))
        self.frame.copy_(frame)
        return self.frame


def static_capacity(positions: int, max_seq_len: int) -> int:
    """Cache slots of a static decoder for a request of `positions` positions: rounded up to a multiple of
    `STATIC_SLOTS` (at most the model's context), so that requests of similar lengths — the segments of a
    dialogue, the takes of a line — share one decoder and its captured graph. Static attention reads every slot
    under a mask; at the real model's size the rounding adds at most 144 MiB to the ~15 GiB a frame reads."""
    rounded = -(-positions // STATIC_SLOTS) * STATIC_SLOTS
    return max(positions, min(rounded, max_seq_len))


class StaticDecoder:
    """The decode step with fixed shapes and fixed addresses, reusable across requests (spec §6.3 numerics).

    It owns a request-independent `DecodeState` — caches of `capacity` slots for `batch` sequences — and buffers for
    everything a step reads: the previous frame, the RAS window, the position, the padding, the sampling settings,
    the slow AR's last logits and hidden state, and the frame's uniforms, which each call draws from the request's
    generators before the step (`FrameUniforms`). The step reads buffers only and never the host, so on CUDA it is
    captured once (`capture`) and every later frame of every later request replays it. Attention reads the whole
    cache under a mask (`AttentionMode.static()`); stale slots of an earlier request are masked like empty ones.

    The step is two halves, each its own graph: `slow_half` (the previous frame through the slow AR into the
    logits/hidden buffers) and `sample_half` (those buffers → the next frame: main token, RAS, the fast AR's nine
    codebooks). A request's first frame comes from the prefill's outputs through `sample_half` alone
    (`first_frame`), so it too replays a graph instead of launching its fast-AR steps one by one.

    The model keeps the last one built (`acquire`); moving or casting the model drops it (`DualAR._apply`).
    """

    def __init__(self, model: DualAR, batch: int, capacity: int, eos_id: int, mode: AttentionMode | None = None):
        cfg, device = model.config, model.device
        self._model = weakref.ref(model)  # the model keeps this decoder: no reference cycle to outlive it
        self.key = (batch, capacity, eos_id, mode or AttentionMode(), model.dtype, device)
        self.weights = model.weight_addresses()
        self.state = new_state(model, batch, capacity, eos_id, mode)
        self.frame = torch.zeros(batch, cfg.num_codebooks + 1, dtype=torch.long, device=device)
        self.window = torch.zeros(batch, RAS_WINDOW, dtype=torch.long, device=device)
        self.position = torch.zeros((), dtype=torch.long, device=device)
        self.pad = torch.zeros(batch, dtype=torch.long, device=device)
        self.padding = torch.zeros(batch, 1, 1, capacity, dtype=torch.bool, device=device)
        self.logits = torch.full((batch, cfg.vocab_size), float("-inf"), dtype=model.dtype, device=device)
        self.hidden = torch.zeros(batch, cfg.slow.dim, dtype=model.dtype, device=device)
        self.sampling = DeviceSampling.of(SamplingParams(), cfg, model.dtype, device)
        self.uniforms = FrameUniforms(batch, cfg.vocab_size, cfg.num_codebooks, cfg.codebook_size, model.dtype, device)
        self.generators: list[torch.Generator] = []
        self.graphs: tuple[torch.cuda.CUDAGraph, torch.cuda.CUDAGraph] | None = None  # (slow half, sample half)
        self.use_graph = False
        self.busy = False

    @property
    def model(self) -> DualAR:
        return self._model()

    def fits(self, model: DualAR, batch: int, capacity: int, eos_id: int, mode: AttentionMode | None) -> bool:
        return (not self.busy and self.key == (batch, capacity, eos_id, mode or AttentionMode(), model.dtype,
                                               model.device) and self.weights == model.weight_addresses())

    @classmethod
    def acquire(cls, model: DualAR, batch: int, positions: int, eos_id: int,
                mode: AttentionMode | None = None) -> "StaticDecoder":
        """The model's kept decoder when it fits this request (same batch, capacity bucket, weights) and is free,
        else a new one, which the model keeps instead. A decoder in use by another stream on the same model is
        left alone: this request gets its own."""
        capacity = static_capacity(positions, model.config.max_seq_len)
        kept = model.static_decoder
        if kept is not None and kept.fits(model, batch, capacity, eos_id, mode):
            return kept
        if kept is not None and not kept.busy:
            model.static_decoder = kept = None  # free its caches and graph before allocating the new ones
        decoder = cls(model, batch, capacity, eos_id, mode)
        if kept is None:
            model.static_decoder = decoder
        return decoder

    def begin(self, pad: torch.Tensor | None) -> DecodeState:
        """Start a request whose sequences begin with `pad` [B] padding slots (or none) → the state to prefill."""
        state = self.state
        state.position = 0
        state.pad = None if pad is None else pad.to(self.pad.device)
        state.padding = None
        self.pad.zero_()
        self.padding.zero_()
        if state.pad is not None:
            self.pad.copy_(state.pad)
            self.padding.copy_((torch.arange(state.capacity, device=self.pad.device) < state.pad[:, None])[:, None, None])
            state.padding = self.padding
        return state

    def start(self, params: SamplingParams, generators: list[torch.Generator], cuda_graph: bool = False) -> None:
        """Load the request's sampling settings and generators (before `first_frame`)."""
        self.sampling.fill_(params)
        self.generators = generators
        self.use_graph = cuda_graph

    def first_frame(self, logits: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """The prefill's last logits [B, vocab] and hidden state [B, dim] → the request's first frame [B, K+1]
        (a new tensor), sampled by `sample_half` exactly as `sample_frame` samples it without a RAS window. Leaves
        the buffers ready for the decode loop."""
        self.logits.copy_(logits)
        self.hidden.copy_(hidden)
        self.window.fill_(-1)  # no token id: the first frame is never redrawn (RAS looks at decode frames only)
        self.position.fill_(self.state.position)  # a capture's warm-up step writes the slot the next frame writes
        self.uniforms.draw(self.generators)
        self._run(slow=False)
        self.window.zero_()
        self.position.fill_(self.state.position)
        return self.frame.clone()

    def slow_half(self) -> None:
        """The previous frame through the slow AR at `position` → the logits and hidden buffers."""
        state, position = self.state, self.position.view(1)
        rope = state.slow_rope[(position[None] - self.pad[:, None]).clamp(min=0)]  # [B, 1, D/2, 2]
        logits, hidden = self.model.slow(self.frame[:, :, None], position, state.slow_caches, rope,
                                         AttentionMode.static(), padding=self.padding, head_rows=state.head_rows)
        state.allowed_logits(logits[:, -1], out=self.logits)
        self.hidden.copy_(hidden[:, -1])

    def sample_half(self) -> None:
        """The logits and hidden buffers → the next frame in the frame buffer; advances the window and position."""
        frame = sample_frame(self.model, self.logits, self.hidden, self.state, self.sampling, None, self.window,
                             self.uniforms)
        self.window.copy_(torch.cat([self.window[:, 1:], frame[:, :1]], dim=1))
        self.frame.copy_(frame)
        self.position += 1

    def step(self) -> None:
        """One frame from the buffers into the buffers: what the two CUDA graphs record."""
        self.slow_half()
        self.sample_half()

    def __call__(self) -> torch.Tensor:
        """Decode one frame → the frame buffer [B, K+1] (overwritten by the next call)."""
        check_capacity(self.state, self.state.position + 1)
        self.state.position += 1
        self.uniforms.draw(self.generators)
        self._run(slow=True)
        return self.frame

    def _run(self, slow: bool) -> None:
        if not self.use_graph:
            if slow:
                self.slow_half()
            self.sample_half()
            return
        if self.graphs is None:
            self.capture()
        if slow:
            self.graphs[0].replay()
        self.graphs[1].replay()

    def capture(self) -> None:
        """Record `slow_half` and `sample_half` as CUDA graphs (after a warm-up step on a side stream, which also
        runs autotuning and lazy initialisation outside the capture). The buffers a step changes are restored
        afterwards, so capturing consumes no frame; it draws no random numbers at all."""
        if self.frame.device.type != "cuda":
            raise ValueError("CUDA graphs need a model on a CUDA device.")
        buffers = (self.frame, self.window, self.position, self.logits, self.hidden)
        saved = [b.clone() for b in buffers]

        def restore():
            for buffer, value in zip(buffers, saved):
                buffer.copy_(value)

        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                self.step()
                restore()
            torch.cuda.current_stream().wait_stream(stream)
            graphs = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
            for graph, half in zip(graphs, (self.slow_half, self.sample_half)):
                with torch.cuda.graph(graph):
                    half()
        except BaseException:
            if self.model.static_decoder is self:  # e.g. out of memory mid-capture: build afresh next time
                self.model.static_decoder = None
            raise
        restore()
        self.graphs = graphs


def left_pad(prompt: torch.Tensor | list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A prompt [K+1, T] / [B, K+1, T], or a list of [K+1, T_b] → ([B, K+1, max T], padding slots [B] or None)."""
    if isinstance(prompt, torch.Tensor):
        return (prompt[None] if prompt.dim() == 2 else prompt), None
    length = max(p.shape[-1] for p in prompt)
    pad = torch.tensor([length - p.shape[-1] for p in prompt])
    if not pad.any():
        return torch.stack(prompt), None
    batch = prompt[0].new_zeros(len(prompt), prompt[0].shape[0], length)
    for row, (p, n) in enumerate(zip(prompt, pad.tolist())):
        batch[row, :, n:] = p
    return batch, pad


@torch.inference_mode()
def generate_frames(
    model: DualAR,
    prompt: torch.Tensor | list[torch.Tensor],
    params: SamplingParams,
    max_frames: int,
    generators: list[torch.Generator],
    eos_id: int,
    mode: AttentionMode | None = None,
    *,
    check_every: int | None = None,
    prefill_chunk: int = PREFILL_CHUNK,
    static: bool = False,
    cuda_graph: bool = False,
    lookahead: bool | None = None,
) -> Iterator[torch.Tensor]:
    """Yield frame columns [B, K+1] (int64, on the CPU) until every sequence emitted `<|im_end|>` or `max_frames`
    frames were produced. prompt: [B, K+1, T] (or [K+1, T]), or a list of [K+1, T_b] prompts of any lengths,
    which are left-padded into one batch (each sequence keeps its own positions; padding is masked out).

    As in the official loop, the first (prefill) token is not checked for the stop and the RAS window only
    holds frames of the decode loop.

    The host reads the frames every `check_every` frames (default: 1 on the CPU, 8 on other devices), so an
    accelerator runs ahead with one host sync per block instead of one per frame; the first blocks are shorter
    (1, 2, 4, … frames) so that a stream's first audio does not wait for a whole block. Frames computed after every
    sequence stopped are dropped, and each sequence's generator is rewound to its state right after its stop frame:
    the random stream — and so whatever is generated later with the same generators — does not depend on
    `check_every` or on which sequences share the batch. With `lookahead` (default: on devices other than the
    CPU, which run ahead of the host) the next block is queued before a block's frames are yielded, so the
    device keeps decoding while the consumer handles them; on the CPU that would only delay each frame.

    `static` decodes with the model's reusable fixed-shape decoder (`StaticDecoder`); `cuda_graph` (CUDA only,
    implies `static`) replays that step as CUDA graphs, captured by the decoder's first request; the first frame's
    sampling and fast AR replay the step's second half.
    """
    prompt, pad = left_pad(prompt)
    batch, _, length = prompt.shape
    if len(generators) != batch:
        raise ValueError(f"generators: {len(generators)} given for a batch of {batch}")
    device = model.device
    if check_every is None:
        check_every = 1 if device.type == "cpu" else 8
    elif isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
        raise ParameterError(f"check_every={check_every!r}: must be an integer ≥ 1 (frames between stop checks), "
                             "or None for the device's default.")
    if lookahead is None:
        lookahead = device.type != "cpu"
    sampling = DeviceSampling.of(params, model.config, model.dtype, device)
    static = static or cuda_graph
    if static:
        decoder = StaticDecoder.acquire(model, batch, length + max_frames, eos_id, mode)
        decoder.busy = True
    try:
        state = decoder.begin(pad) if static else new_state(model, batch, length + max_frames, eos_id, mode, pad)
        logits, hidden = prefill(model, prompt.to(device), state, prefill_chunk)
        if static:
            decoder.start(params, generators, cuda_graph)
            frame = decoder.first_frame(logits, hidden)
        else:
            frame = sample_frame(model, logits, hidden, state, sampling, generators, window=None)
        yield frame.cpu()
        if not static:
            decoder = FrameDecoder(model, state, sampling, generators, frame)
        yield from _decode_loop(decoder, generators, batch, max_frames, eos_id, check_every, lookahead)
    finally:
        if static:
            decoder.busy = False
            decoder.generators = []


def _decode_loop(decoder: FrameDecoder | StaticDecoder, generators: list[torch.Generator], batch: int,
                 max_frames: int, eos_id: int, check_every: int, lookahead: bool) -> Iterator[torch.Tensor]:
    """The frames after the first: blocks of decoder calls, one host read per block (see `generate_frames`).

    With `lookahead` (devices that run asynchronously) the next block is queued as soon as a block has been read and
    does not end the request, before its frames go to the consumer: the device decodes while the consumer (progress,
    live preview) works on the frames it has. The frames, and the generators' states at the end, are the same.
    """
    finished = torch.zeros(batch, dtype=torch.bool)
    stop_states: list[torch.Tensor | None] = [None] * batch
    produced = 1
    block_size = 1  # blocks grow 1, 2, 4, … up to check_every: the first frames reach a stream without waiting
    queued = _queue(decoder, generators, min(block_size, max_frames - produced))
    while queued:
        produced += len(queued)
        ready = []
        for frame, (_, states) in zip(torch.stack([f for f, _ in queued]).cpu(), queued):
            stopped = (frame[:, 0] == eos_id) & ~finished
            for b in stopped.nonzero().flatten().tolist():
                stop_states[b] = states[b]
            finished |= stopped
            ready.append(frame)
            if finished.all():
                break
        block_size = min(2 * block_size, check_every)
        size = 0 if finished.all() else min(block_size, max_frames - produced)
        if lookahead:
            queued = _queue(decoder, generators, size)
            yield from ready
        else:
            yield from ready
            queued = _queue(decoder, generators, size)
    for g, rng in zip(generators, stop_states):
        if rng is not None:
            g.set_state(rng)


def _queue(decoder: FrameDecoder | StaticDecoder, generators: list[torch.Generator],
           size: int) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
    """`size` decoder calls → (frame on the device, the generators' states after it) per call.

    A plain function with a plain loop on purpose: a closure or comprehension over `decoder` would keep it (and its
    KV caches) alive from a traceback's frame after an out-of-memory error, where the pipeline clears the frames'
    locals to free them."""
    calls = []
    for _ in range(size):
        frame = decoder().clone()
        calls.append((frame, [g.get_state() for g in generators]))
    return calls


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
    check_every: int | None = None,
    static: bool = False,
    cuda_graph: bool = False,
) -> Iterator[FrameEvent | SegmentEvent]:
    """Generate batch after batch in one growing conversation (spec §5.2c), for one or several takes.

    Each take has its own generator and its own history; all takes run as one batched forward, their prompts
    left-padded to the longest (after the first segment the histories differ in length). The official code drops
    the last frame when `max_frames` runs out; with `keep_last_frame_at_limit` (the default) that real frame is kept.
    """
    eos_id = builder.tokenizer.im_end_id
    takes = len(generators)
    histories: list[list[Exchange]] = [[] for _ in range(takes)]
    for index, (text, turn_indices) in enumerate(batches):
        prompts = [
            fit_prompt(builder, text, references, histories[t], max_frames, model.config.max_seq_len)
            for t in range(takes)
        ]
        frames: list[list[torch.Tensor]] = [[] for _ in range(takes)]
        stopped = [False] * takes
        for step, frame in enumerate(
            generate_frames(model, prompts, params, max_frames, generators, eos_id, mode,
                            check_every=check_every, static=static, cuda_graph=cuda_graph)
        ):
            for t in range(takes):
                if stopped[t]:
                    continue
                frames[t].append(frame[t])
                if step > 0 and int(frame[t, 0]) == eos_id:
                    stopped[t] = True
                else:
                    yield FrameEvent(t, index, frame[t, 1:])
        for t in range(takes):
            columns = torch.stack(frames[t], dim=1).long()  # [K+1, n]
            if stopped[t] or not keep_last_frame_at_limit:
                columns = columns[:, :-1]
            segment = Segment(text, list(turn_indices), columns[1:].contiguous(), hit_frame_limit=not stopped[t])
            histories[t].append(Exchange(text, segment.codes))
            yield SegmentEvent(t, index, segment)
