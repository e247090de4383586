"""Live preview: decoded audio while generation is still running, without changing what it produces.

`LivePreview` consumes the engine's event stream (`FishS2.stream`: `FrameEvent` per new frame, `SegmentEvent`
per finished segment) and returns `PreviewChunk`s of audio:

* `every_frames=None` (default): one chunk per finished line (segment);
* `every_frames=N`: a chunk every N new frames of a take (and the rest when its segment finishes);
* `first_frames=F` (with `every_frames`): a take's first chunk after F frames, then chunks of 2F, 4F, … frames up
  to N, so the first audio is heard after a fraction of a second instead of after N frames.

Chunks come from the codec's incremental decoder (`Codec.decode_stream`), which recomputes only the receptive
field of the new frames, so a chunk's cost does not grow with the length of the generation. The chunks of one
take, joined in order, equal `FishS2.decode(generation.codes)` of that take up to float rounding — the preview
is the start of the final audio, not an approximation of it.

The preview only reads events: the codes, and therefore the final audio, are the same with and without it
(`generate_with_preview` returns exactly what `FishS2.generate_takes` returns). The ComfyUI side sends each
chunk to the browser (`PreviewChunk.wav_bytes()` gives a small WAV file) through the server's websocket.
"""

from __future__ import annotations

import contextlib
import io
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from .errors import ParameterError
from .generate import FrameEvent, Generation, SegmentEvent

__all__ = ["PreviewChunk", "LivePreview", "generate_with_preview"]


@dataclass(frozen=True)
class PreviewChunk:
    """Audio of take `take` from sample `start` (in that take's whole audio) on: float32 [n] on the CPU.
    `segment_done` is True when the chunk ends a segment (a finished line)."""

    take: int
    segment: int
    start: int
    audio: torch.Tensor
    sample_rate: int
    segment_done: bool

    @property
    def end(self) -> int:
        return self.start + int(self.audio.shape[-1])

    def wav_bytes(self) -> bytes:
        """The chunk as a mono 16-bit PCM WAV file (what a browser `<audio>` / WebAudio decodes directly)."""
        pcm = (self.audio.double() * 32768.0).round().clamp(-32768, 32767).to(torch.int16).numpy().tobytes()
        out = io.BytesIO()
        out.write(b"RIFF" + struct.pack("<I", 36 + len(pcm)) + b"WAVE")
        out.write(b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, self.sample_rate, self.sample_rate * 2, 2, 16))
        out.write(b"data" + struct.pack("<I", len(pcm)) + pcm)
        return out.getvalue()


class _Take:
    """Frames of one take so far: finished segments' codes plus the current segment's frames."""

    def __init__(self, chunk_frames: int | None) -> None:
        self.done: list[torch.Tensor] = []  # [K, n] per finished segment
        self.current: list[torch.Tensor] = []  # [K] per frame of the open segment
        self.emitted = 0  # samples already returned
        self.pending = 0  # frames since the last chunk
        self.chunk_frames = chunk_frames  # frames of the next chunk within a line (None: chunks at line ends only)

    def codes(self) -> torch.Tensor:
        parts = list(self.done)
        if self.current:
            parts.append(torch.stack(self.current, dim=1))
        return torch.cat(parts, dim=1)

    @property
    def frames(self) -> int:
        return sum(int(c.shape[1]) for c in self.done) + len(self.current)


class LivePreview:
    """Turns `FrameEvent` / `SegmentEvent`s into `PreviewChunk`s (see the module doc).

    `codec` is the engine's codec (`FishS2.codec`); `takes` selects which takes are previewed (default: take 0);
    `every_frames` / `first_frames` set the chunk sizes (module doc); `left_context_frames` is passed to
    `decode_stream` (None = exact).
    """

    def __init__(
        self,
        codec,
        *,
        every_frames: int | None = None,
        first_frames: int | None = None,
        takes: Sequence[int] = (0,),
        left_context_frames: int | None = None,
    ) -> None:
        for name, value in (("every_frames", every_frames), ("first_frames", first_frames)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ParameterError(f"{name}: must be None or an integer ≥ 1, got {value!r}.")
        if first_frames is not None and every_frames is None:
            raise ParameterError("first_frames: needs every_frames (the chunk size it grows to); with every_frames "
                                 "None the preview sends one chunk per finished line.")
        self.codec = codec
        self.every_frames = every_frames
        self.first_frames = every_frames if first_frames is None else min(first_frames, every_frames)
        self.takes = frozenset(int(t) for t in takes)
        self.left_context_frames = left_context_frames
        self._state: dict[int, _Take] = {}
        self._stream = None  # CUDA: the side stream chunks decode on (see `_decode`)
        device = codec.device
        if device.type == "cuda":
            self._stream = torch.cuda.Stream(device)
            self._stream.wait_stream(torch.cuda.current_stream(device))  # what is queued now: e.g. loading the codec

    @property
    def sample_rate(self) -> int:
        return int(self.codec.sample_rate)

    @property
    def frame_length(self) -> int:
        return int(self.codec.frame_length)

    def feed(self, event: FrameEvent | SegmentEvent) -> list[PreviewChunk]:
        """Take one event; return the chunks it completes (often none)."""
        if event.take not in self.takes:
            return []
        state = self._state.setdefault(event.take, _Take(self.first_frames))
        if isinstance(event, FrameEvent):
            state.current.append(event.codes.reshape(-1).to("cpu", torch.long))
            state.pending += 1
            if state.chunk_frames is not None and state.pending >= state.chunk_frames:
                state.chunk_frames = min(2 * state.chunk_frames, self.every_frames)
                return [self._chunk(event.take, event.segment, state, segment_done=False)]
            return []
        if isinstance(event, SegmentEvent):
            # The finished segment's codes are authoritative (they equal the frames streamed).
            state.current = []
            state.done.append(event.result.codes.to("cpu", torch.long))
            if state.frames * self.frame_length == state.emitted:
                return []
            return [self._chunk(event.take, event.segment, state, segment_done=True)]
        raise ParameterError(f"event: expected a FrameEvent or SegmentEvent, got {type(event).__name__}.")

    def _chunk(self, take: int, segment: int, state: _Take, segment_done: bool) -> PreviewChunk:
        audio = self._decode(state.codes(), state.emitted)
        chunk = PreviewChunk(take, segment, state.emitted, audio, self.sample_rate, segment_done)
        state.emitted += int(audio.shape[-1])
        state.pending = 0
        return chunk

    def _decode(self, codes: torch.Tensor, emitted: int) -> torch.Tensor:
        """`decode_stream` of `codes` [K, n] after `emitted` samples → float32 audio [samples] on the CPU.

        On CUDA it runs on a side stream that waits only for what was queued before the preview began (the codec's
        weights), not for the decode steps queued since: generation queues the next block of frames before it hands
        a block to the consumer (`generate_frames` lookahead), and on the main stream a chunk would wait for them."""
        context = torch.cuda.stream(self._stream) if self._stream is not None else contextlib.nullcontext()
        with context, _no_cudnn_benchmark(), torch.inference_mode():
            audio = self.codec.decode_stream(codes.to(self.codec.device), emitted,
                                             left_context_frames=self.left_context_frames)
            return audio[0, 0].float().cpu()


@contextlib.contextmanager
def _no_cudnn_benchmark():
    """cuDNN's benchmark mode (ComfyUI's `--fast autotune` turns it on) times every convolution algorithm for each
    new input length; preview chunks come in many lengths (short first chunks, line ends), so each would stall on
    it. The heuristic choice is used for them instead, and the setting is restored after."""
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


def generate_with_preview(
    tts,
    text,
    voices: Sequence = (),
    *,
    on_chunk: Callable[[PreviewChunk], None],
    seed: int | None = None,
    takes: int = 1,
    every_frames: int | None = None,
    first_frames: int | None = None,
    preview_takes: Iterable[int] = (0,),
    on_frame: Callable[[int], None] | None = None,
    **options,
) -> list[Generation]:
    """`FishS2.generate_takes` with live preview: `on_chunk` gets each `PreviewChunk` as soon as it is decoded.
    Returns one `Generation` per take, identical to what `generate_takes` returns for the same arguments. An
    exception raised by `on_frame` or `on_chunk` (e.g. a cancel) stops generation at once and closes the stream."""
    preview = LivePreview(tts.codec, every_frames=every_frames, first_frames=first_frames, takes=tuple(preview_takes))

    def play(event) -> None:
        for chunk in preview.feed(event):
            on_chunk(chunk)

    return tts.generate_takes(text, voices, seed=seed, takes=takes, on_frame=on_frame, on_event=play, **options)
