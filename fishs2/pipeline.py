"""`FishS2`: model + tokenizer + codec as one object — the API the CLI and the ComfyUI nodes use."""

from __future__ import annotations

import contextlib
import gc
import logging
import numbers
import re
import traceback
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

from . import hub
from .checkpoint import load_model
from .config import ModelConfig
from .errors import AudioError, CheckpointError, CodesError, OutOfMemoryError, ParameterError, TextError, VoiceError
from .generate import FrameEvent, Generation, SegmentEvent, generate_frames, generate_segments, static_capacity
from .model import AttentionMode, DualAR
from .prompt import SPEAKER_TAG, PromptBuilder, Reference, group_turns, split_turns
from .script import ZWSP, find_tags, normalize_text, strip_tags
from .sampling import SamplingParams, make_generators, normalize_seed
from .tokenizer import Tokenizer
from .voice import MAX_SECONDS, Voice, check_reference

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


def pick_device(device: str | torch.device | int | None) -> torch.device:
    """None/"auto": the first CUDA GPU, else Apple's MPS, else the CPU. Otherwise the device named (a string, a
    torch.device, or a CUDA index), refused by name when it is not a device or this machine has none of it."""
    if device in (None, "auto"):
        return _best_device()
    try:
        picked = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ParameterError(f"device={device!r}: not a device; use auto, cpu, cuda, cuda:N or mps.") from None
    if picked.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ParameterError(f"device={device!r}: no CUDA GPU is visible to PyTorch here; use cpu or auto.")
        if picked.index is not None and picked.index >= count:
            raise ParameterError(f"device={device!r}: there are {count} CUDA GPU(s), numbered 0 … {count - 1}.")
    elif picked.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ParameterError(f"device={device!r}: Apple's MPS is not available here; use cpu or auto.")
    return picked


def _best_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """None/"auto": bf16 on GPUs that support it (the checkpoint's dtype), fp16 on other GPUs, fp32 on CPU."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ParameterError(f"dtype={dtype}: use one of torch.bfloat16, torch.float16, torch.float32 (or auto).")
        return dtype
    if dtype not in (None, "auto"):
        if dtype not in DTYPES:
            raise ParameterError(f"dtype={dtype!r}: use one of auto, bf16, fp16, fp32 (for int8 or fp8 weights pass "
                                 "int8=True or fp8=True).")
        return DTYPES[dtype]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


class FishS2:
    """A loaded S2 Pro: `model` (dual-AR LLM), `tokenizer`, `codec`."""

    def __init__(self, directory: Path, config: ModelConfig, tokenizer: Tokenizer, model: DualAR, codec):
        self.directory = directory
        self.config = config
        self.tokenizer = tokenizer
        self.model = model
        self.codec = codec
        self.prompts = PromptBuilder(tokenizer, config.num_codebooks)

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path = hub.DEFAULT_REPO,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        codec_dtype: torch.dtype = torch.float32,
        models_dir: str | Path | None = None,
        progress: Callable[[int, int], None] | None = None,
        models_root: str | Path | Sequence[str | Path] | None = None,
        int8: bool = False,
        fp8: bool = False,
        compile: bool = False,
    ) -> "FishS2":
        """Load a checkpoint directory or hub id (downloaded into `models_dir` when absent).

        `int8=True` quantises the LLM's linear layers and token table to int8 weights (per-row scales) on the CPU
        before moving them to `device`, so a GPU never holds the full-precision weights (bf16 ≈ 9.1 GB → ≈ 5 GB).

        `fp8=True` quantises the linear layers to float8 (e4m3, per-row scales) and runs each matmul in fp8
        (`quantize.Fp8Linear`): about the memory of int8, for GPUs with fp8 tensor cores (compute capability ≥ 8.9:
        RTX 40xx/50xx, L4, L40, H100, H200, B200); elsewhere it is refused (the CPU's reference fp8 kernel is ~70×
        slower than int8).

        With `models_root` (a folder or several), a checkpoint whose real path lies outside them — e.g. through a
        symlink — is refused (see `hub.resolve`); servers and the node pack pass their model folders here.

        `compile=True` compiles the transformer blocks with torch.compile (`DualAR.compile_blocks`): the first
        generation waits for the compile (25–40 s for the real model on an H100 or H200, less once inductor's on-disk
        cache holds it). Since the decode kernels (fused blocks, attention, heads) it no longer speeds decoding up on
        an H100: bf16 145.3 against 147.8 frames/s uncompiled, int8 199.8 against 205.1 (bench/GPU-NOTES.md).
        """
        from .codec import load_codec

        directory = hub.resolve(source, models_dir, progress, models_root=models_root)
        device = pick_device(device)
        dtype = pick_dtype(dtype, device)
        if isinstance(codec_dtype, str) and codec_dtype in DTYPES:
            codec_dtype = DTYPES[codec_dtype]
        if codec_dtype not in DTYPES.values():
            raise ParameterError(f"codec_dtype={codec_dtype!r}: use fp32 (default), bf16 or fp16 (or the torch "
                                 "dtypes).")
        try:
            config = ModelConfig.from_file(directory / "config.json")
        except CheckpointError as exc:
            raise CheckpointError(f"{exc} Use the official {hub.DEFAULT_REPO} files (download the model again).") from exc
        tokenizer = Tokenizer(directory / "tokenizer.json")
        if tokenizer.num_semantic != config.codebook_size:
            raise CheckpointError(
                f"{directory}: tokenizer has {tokenizer.num_semantic} semantic tokens but config.json says "
                f"codebook_size={config.codebook_size}."
            )
        config = config.with_semantic_range(tokenizer.semantic_begin_id, tokenizer.semantic_end_id)
        if int8 and fp8:
            raise ParameterError("int8=True and fp8=True: choose one weight format (int8 runs on every device, fp8 "
                                 "needs a GPU with fp8 tensor cores).")
        if fp8:
            from .quantize import fp8_supported

            if not fp8_supported(device):
                name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"the {device.type}"
                raise ParameterError(
                    f"fp8=True: {name} has no fp8 matmuls (they need an NVIDIA GPU of compute capability 8.9 or newer: "
                    "RTX 40xx/50xx, L4, L40, H100, H200, B200); load with int8=True for the same memory saving."
                )
        if compile and int8 and device.type != "cuda":
            raise ParameterError(
                f"compile=True with int8 weights on the {device.type}: inductor cannot compile the {device.type}'s int8 "
                "matmul, and compiling does not speed up decoding off CUDA GPUs. Turn compile off, or compile bf16/"
                "fp16 weights on a CUDA GPU."
            )
        with _out_of_memory_guard(device, f"loading {directory.name} in {dtype} on {device}",
                                  "load in a smaller dtype (bf16 or fp16 instead of fp32), free memory used by other "
                                  "models, or load with int8=True"):
            if int8 or fp8:  # quantised on the CPU, so the device never holds the full-precision weights
                from .quantize import quantize_fp8_model, quantize_int8

                quantize = quantize_int8 if int8 else quantize_fp8_model
                model = quantize(load_model(directory, config, dtype, "cpu")).to(device)
            else:
                model = load_model(directory, config, dtype, device)
            codec = load_codec(directory, device=device, dtype=codec_dtype)
        if compile:
            model.compile_blocks()
        return cls(directory, config, tokenizer, model, codec)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate

    @property
    def frame_length(self) -> int:
        return self.codec.frame_length

    @property
    def int8(self) -> bool:
        from .quantize import Int8Linear

        return any(isinstance(m, Int8Linear) for m in self.model.modules())

    @property
    def fp8(self) -> bool:
        from .quantize import Fp8Linear

        return any(isinstance(m, Fp8Linear) for m in self.model.modules())

    def memory_estimate(self, max_frames: int, prompt_len: int = 1024, takes: int = 1, with_codec: bool = True,
                        cuda_graph: bool | None = None):
        """`fishs2.memory.MemoryEstimate` (bytes per component) of a request: weights + KV cache for
        prompt_len + max_frames positions per take + activations (+ the codec's weights and decode window).
        With `cuda_graph` (default: on CUDA, as `stream`) the cache is the static decoder's, rounded up to a
        multiple of 1024 positions (`generate.static_capacity`)."""
        from .memory import estimate_memory

        for name, value in (("max_frames", max_frames), ("prompt_len", prompt_len), ("takes", takes)):
            value = _plain(value)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ParameterError(f"{name}={value!r}: must be an integer ≥ 1.")
        positions = prompt_len + max_frames
        if self.device.type == "cuda" if cuda_graph is None else cuda_graph:
            positions = static_capacity(min(positions, self.config.max_seq_len), self.config.max_seq_len)
        return estimate_memory(
            self.config, positions, prompt=prompt_len, batch=takes, dtype=self.dtype, int8=self.int8, fp8=self.fp8,
            codec_config=self.codec.config, codec_dtype=self.codec_dtype,
            codec_window_frames=138 if with_codec else None,
        )

    def to(self, device: str | torch.device) -> "FishS2":
        self.model.to(device)
        self.codec.to(device)
        return self

    # ── voices ──────────────────────────────────────────────────────────────────────────────────────────────
    def encode_voice(self, audio, text: str, sample_rate: int | None = None, name: str = "") -> Voice:
        """Reference audio (a file path, or samples [L] / [C, L] / [1, C, L] with `sample_rate`) + its transcript
        → a `Voice` of codes [K, T]."""
        from .audio import audio_seconds, load_audio, prepare_reference

        transcript = _check_transcript(text, "text (the transcript of the reference clip)")
        if not isinstance(name, str):
            raise VoiceError(f"name: expected a string, got {type(name).__name__}.")
        if isinstance(audio, (str, Path)):
            if sample_rate is not None:
                raise ParameterError(f"sample_rate={sample_rate!r}: only for samples; the file {audio} carries its own "
                                     "rate — leave sample_rate out.")
            seconds = audio_seconds(audio) if Path(audio).is_file() else None
            if seconds is not None:  # before reading it: an hour-long recording would fill the memory first
                _refuse_long(seconds)
            waveform, sample_rate = load_audio(audio)
            source = str(audio)
        else:
            if sample_rate is None:
                raise ParameterError("sample_rate: required when the reference audio is given as samples; pass "
                                     "sample_rate=<the rate the samples were recorded at>.")
            waveform, source = audio, "samples"
        _check_duration(waveform, sample_rate)
        mono = prepare_reference(waveform, sample_rate)  # [L] float32 at the codec rate
        stats = check_reference(mono, self.sample_rate)
        with _out_of_memory_guard(self.codec_device, f"encoding {stats['duration']:.1f} s of reference audio",
                                  "use a shorter reference clip (10–30 s is best)"):
            with torch.inference_mode():
                codes, _ = self.codec.encode(mono.to(self.codec_device, self.codec_dtype)[None, None])
        metadata = {"source": source, "source_sample_rate": int(sample_rate), "duration_s": round(stats["duration"], 3)}
        return Voice(codes=codes[0].cpu().long(), text=transcript, name=name, metadata=metadata)

    def load_voice(self, path: str | Path) -> Voice:
        """`Voice.load(path)`, checked against this model: codebook count, code ranges, transcript."""
        voice = Voice.load(path)
        voice.check_codes(self.config.num_codebooks, self.config.codebook_size)
        _check_transcript(voice.text, f"{path}: transcript")
        return voice

    @property
    def codec_device(self) -> torch.device:
        return next(self.codec.parameters()).device

    @property
    def codec_dtype(self) -> torch.dtype:
        return next(self.codec.parameters()).dtype

    # ── generation ──────────────────────────────────────────────────────────────────────────────────────────
    def plan(self, text, voices: Sequence[Voice], chunk_length: int) -> tuple[list[tuple[str, list[int]]], list[Reference]]:
        """Turns → batches of (text, turn indices) and the reference list, with every turn and speaker checked.

        `text` is a string (turns start at `<|speaker:N|>` labels) or a list of turns (strings or `script.Turn`s).
        Raises TextError naming the input and the fix for empty text, a turn with only [tags], unbalanced
        brackets, control characters or invalid unicode, and a speaker without a voice.
        """
        turns, _ = _split_text(text)
        if isinstance(chunk_length, bool) or not isinstance(chunk_length, int) or chunk_length < 1:
            raise ParameterError(f"chunk_length={chunk_length!r}: must be an integer ≥ 1 (UTF-8 bytes per batch).")
        voices = _check_voices(voices)
        for voice in voices:
            voice.check_codes(self.config.num_codebooks, self.config.codebook_size)
            _check_transcript(voice.text, f"voice {voice.name!r}: transcript" if voice.name else "voice transcript")
        if voices:
            speakers = {int(m) for turn in turns for m in re.findall(r"<\|speaker:(\d+)\|>", turn)}
            unvoiced = sorted(s for s in speakers if s >= len(voices))
            if unvoiced:
                raise TextError(
                    f"text: speaker(s) {', '.join(map(str, unvoiced))} have no voice; "
                    f"{len(voices)} voice(s) given (speaker N uses voice N, counting from 0) — add a voice for each "
                    "speaker or change the speaker label."
                )
        batches = [("\n".join(turns[i] for i in group), group) for group in group_turns(turns, chunk_length)]
        references = [Reference(v.text, v.codes) for v in voices]
        return batches, references

    def stream(
        self,
        text,
        voices: Sequence[Voice] = (),
        *,
        seed: int | None = None,
        takes: int = 1,
        temperature: float = 0.8,
        top_p: float = 0.8,
        top_k: int = 30,
        max_frames: int = 1024,
        chunk_length: int = 200,
        mode: AttentionMode | None = None,
        cuda_graph: bool | None = None,
        check_every: int | None = None,
    ) -> Iterator[FrameEvent | SegmentEvent]:
        """Yield frames as they are produced and each finished segment; takes use seeds seed … seed+takes−1.

        `cuda_graph` replays the per-frame step as CUDA graphs (default on CUDA devices: 147.8 frames/s in bf16 on
        an H100 at stop 16, where the eager step was launch-bound at ~21; same codes for a seed). The model keeps the graphs and their
        caches for later requests of the same number of takes and a similar length (`generate.StaticDecoder`), so
        only the first one captures them.
        `check_every` sets how many frames run between host reads of the stop token (default 1 on the CPU, 8 on
        GPUs). Every input is checked when `stream` is called, before the first event is asked for."""
        temperature, top_p, top_k, max_frames, chunk_length, takes, check_every = map(
            _plain, (temperature, top_p, top_k, max_frames, chunk_length, takes, check_every))
        if mode is not None and not isinstance(mode, AttentionMode):
            raise ParameterError(f"mode={mode!r}: must be a fishs2.model.AttentionMode, or None (the fast path).")
        if cuda_graph is None:  # the official formulation (a `mode` for comparisons) keeps its own decode loop
            cuda_graph = self.device.type == "cuda" and (mode is None or mode == AttentionMode())
        params = SamplingParams(temperature, top_p, top_k)
        if isinstance(max_frames, bool) or not isinstance(max_frames, int) or not 1 <= max_frames < self.config.max_seq_len:
            raise ParameterError(
                f"max_frames={max_frames!r}: must be an integer in 1 … {self.config.max_seq_len - 1} "
                f"(the context holds {self.config.max_seq_len} positions; 21.5 frames = 1 s of audio)."
            )
        if isinstance(takes, bool) or not isinstance(takes, int) or takes < 1:
            raise ParameterError(f"takes={takes!r}: must be an integer ≥ 1.")
        if check_every is not None and (isinstance(check_every, bool) or not isinstance(check_every, int)
                                        or check_every < 1):
            raise ParameterError(f"check_every={check_every!r}: must be an integer ≥ 1 (frames between stop checks), "
                                 "or None for the device's default.")
        batches, references = self.plan(text, voices, chunk_length)
        self._check_fits(batches, references, max_frames)
        seed = normalize_seed(_as_seed(seed))
        return self._events(batches, references, params, max_frames, seed, takes, mode, cuda_graph, check_every)

    def _events(self, batches, references, params, max_frames, seed, takes, mode, cuda_graph, check_every):
        """`stream`'s generator, over checked inputs."""
        generators = make_generators([seed + i for i in range(takes)], self.device)
        with _out_of_memory_guard(
            self.device, f"generating {takes} take(s) of up to {max_frames} frames in {self.dtype}",
            "lower max_frames (the KV cache grows with it), generate fewer takes at once, or load the model in a "
            "smaller dtype (bf16/fp16) or with int8 weights (int8=True; dtype int8 in ComfyUI)",
        ):
            yield from generate_segments(
                self.model, self.prompts, batches, references, params, max_frames, generators, mode=mode,
                check_every=check_every, static=cuda_graph, cuda_graph=cuda_graph and self.device.type == "cuda",
            )

    def warm_up(self, *, max_frames: int = 1024, prompt_len: int = 1024, takes: int = 1,
                cuda_graph: bool | None = None) -> None:
        """Pay a process's one-time costs before its first request, so that the first request streams its first
        audio as soon as later ones do (for servers; a one-shot script gains nothing).

        Runs the first frames of a throwaway request of `takes` takes: kernels load, cuBLAS and the int8 kernel's
        autotuning pick their configurations, and with `cuda_graph` (default: on CUDA, as `stream`) the decode
        step's graphs are captured and kept for requests of `takes` takes and up to `prompt_len` + `max_frames`
        positions (those in the same 1024-position bucket, `generate.static_capacity`). Then the codec decodes a
        few frames through `decode_stream`, as live preview does. Draws no number from a generator the caller uses.
        """
        for name, value, low in (("max_frames", max_frames, 1), ("prompt_len", prompt_len, 1), ("takes", takes, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ParameterError(f"{name}={value!r}: must be an integer ≥ {low}.")
        if prompt_len + max_frames > self.config.max_seq_len:
            raise ParameterError(f"prompt_len + max_frames = {prompt_len + max_frames}: the model's context holds "
                                 f"{self.config.max_seq_len} positions; lower them.")
        if cuda_graph is None:
            cuda_graph = self.device.type == "cuda"
        prompt = self.prompts.build("Warm-up.", [])
        frames = generate_frames(  # a request of max(prompt_len, this prompt's length) + max_frames positions
            self.model, [prompt] * takes, SamplingParams(), max(prompt_len - prompt.shape[-1], 0) + max_frames,
            make_generators(list(range(takes)), self.device), self.tokenizer.im_end_id,
            static=cuda_graph, cuda_graph=cuda_graph and self.device.type == "cuda", lookahead=False,
        )
        try:
            for _ in zip(range(3), frames):  # the first frame (the capture comes before it) and two decode steps
                pass
        finally:
            frames.close()
        codes = torch.zeros(self.config.num_codebooks, 4, dtype=torch.long, device=self.codec_device)
        with torch.inference_mode():
            self.codec.decode_stream(codes, 0)

    def _check_fits(self, batches: list[tuple[str, list[int]]], references: list[Reference], max_frames: int) -> None:
        """Every batch must fit the context on its own (carried history is dropped as needed, never the batch):
        fail before anything is generated rather than after minutes of work."""
        limit = self.config.max_seq_len
        for batch_text, turn_indices in batches:
            length = self.prompts.build(batch_text, references).shape[1]
            if length >= limit:
                which = "the text" if len(batches) == 1 else (
                    f"turn {turn_indices[0] + 1}" if len(turn_indices) == 1
                    else f"turns {turn_indices[0] + 1}–{turn_indices[-1] + 1}")
                text_only = self.prompts.build(batch_text, []).shape[1]
                voices_take = length - text_only
                if voices_take >= text_only:  # the references are the problem: say which one weighs most
                    i, longest = max(enumerate(references), key=lambda r: r[1].codes.shape[1] + len(r[1].text))
                    fix = (f"use shorter reference clips (10–30 s) or fewer voices; the longest is speaker {i}'s: "
                           f"{longest.codes.shape[1] * self.codec.frame_length / self.sample_rate:.0f} s of audio and a {len(longest.text)}"
                           "-character transcript")
                else:
                    fix = SPLIT_TEXT_ADVICE
                raise TextError(
                    f"text: the prompt for {which} takes {length} positions (reference voices {voices_take}, text "
                    f"{text_only}) but the model's context holds {limit}; {fix}."
                )
            if length + max_frames > limit:
                raise ParameterError(
                    f"max_frames={max_frames}: the prompt takes {length} of the model's {limit} positions, so at most "
                    f"{limit - length} frames fit; lower max_frames."
                )

    def generate_takes(self, text, voices: Sequence[Voice] = (), *, seed: int | None = None, takes: int = 1,
                       on_frame: Callable[[int], None] | None = None,
                       on_event: Callable[[FrameEvent | SegmentEvent], None] | None = None,
                       **options) -> list[Generation]:
        """Generate `takes` takes (seeds seed … seed+takes−1) → one `Generation` per take.

        `on_frame(frames_done)` is called per frame, `on_event(event)` with every stream event (live preview).
        An exception raised by either (e.g. a cancel) stops generation at once: the stream is closed, its caches
        are released, nothing is kept, and the model is ready for the next request.
        """
        seed = normalize_seed(_as_seed(seed))
        takes = _plain(takes)
        if isinstance(takes, bool) or not isinstance(takes, int) or takes < 1:
            raise ParameterError(f"takes={takes!r}: must be an integer ≥ 1.")
        results = [Generation(seed=seed + i) for i in range(takes)]
        done = 0
        events = self.stream(text, voices, seed=seed, takes=takes, **options)
        try:
            for event in events:
                if isinstance(event, FrameEvent):
                    done += 1
                    if on_frame is not None:
                        on_frame(done)
                else:
                    results[event.take].segments.append(event.result)
                if on_event is not None:
                    on_event(event)
        finally:
            events.close()
        return results

    def generate(self, text, voices: Sequence[Voice] = (), *, seed: int | None = None,
                 on_frame: Callable[[int], None] | None = None, **options) -> Generation:
        """Generate one take for `text` (a string with optional `<|speaker:N|>` tags, or a list of turns)."""
        return self.generate_takes(text, voices, seed=seed, takes=1, on_frame=on_frame, **options)[0]

    # ── audio ───────────────────────────────────────────────────────────────────────────────────────────────
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [K, n] → waveform float32 [1, n·frame_length] on the CPU at `sample_rate`.

        Codes this model cannot produce (negative, or beyond its code vocabulary) are an error: they come from
        another model and would decode to noise. Codes the model can produce but the codec's residual codebooks do
        not hold are clamped by the codec, as the official decoder does.
        """
        self.check_codes(codes)
        with _out_of_memory_guard(self.codec_device, f"decoding {codes.shape[1]} frames",
                                  "decode fewer frames at once (split the codes), or free memory used by other models"):
            with torch.inference_mode():
                audio = self.codec.decode_chunked(codes[None].to(self.codec_device))
        return audio[0].float().cpu()

    def check_codes(self, codes, input_name: str = "codes") -> None:
        """Raise CodesError unless `codes` is an integer tensor [num_codebooks, frames ≥ 1] within the codebooks."""
        fix = "pass the codes of a Generation made by this model (result.codes)"
        if not isinstance(codes, torch.Tensor):
            raise CodesError(f"{input_name}: expected a torch tensor [codebooks, frames], got {type(codes).__name__}; {fix}.")
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise CodesError(f"{input_name}: must be integers (int64), got {codes.dtype}; {fix}.")
        k = self.config.num_codebooks
        if codes.dim() != 2 or codes.shape[0] != k:
            raise CodesError(f"{input_name}: expected shape [{k}, frames] (one row per codebook), got {list(codes.shape)}; {fix}.")
        if codes.shape[1] == 0:
            raise CodesError(f"{input_name}: holds no frames ([{k}, 0]); nothing to decode — generate some speech first.")
        low, high = int(codes.min()), [int(codes[0].max()), int(codes[1:].max()) if k > 1 else 0]
        # What this model can emit: the fast AR's vocabulary may exceed the codec's residual codebooks (4096 vs
        # 1024 in S2 Pro); such codes are clamped by the codec like the official decoder does.
        sizes = [max(self.config.codebook_size, self.codec.semantic_codebook_size),
                 max(self.config.codebook_size, self.codec.codebook_size)]
        if low < 0 or high[0] >= sizes[0] or high[1] >= sizes[1]:
            raise CodesError(
                f"{input_name}: values must lie in 0 … {sizes[0] - 1} (codebook 0) and 0 … {sizes[1] - 1} (codebooks "
                f"1 … {k - 1}), got {low} … {max(high)}; these codes are from another model — {fix}."
            )


# ── input checks ────────────────────────────────────────────────────────────────────────────────────────────────
_SPEAKER_LABEL = re.compile(r"<\|speaker:\d+\|>")


def _turn_text(turn) -> str:
    """A script turn (anything with `.speaker` and `.text`) in the official `<|speaker:N|>text` form."""
    if turn.speaker is None:
        return turn.text
    if isinstance(turn.speaker, bool) or not isinstance(turn.speaker, int) or turn.speaker < 0:
        raise TextError(f"text: a turn's speaker must be a voice slot number ≥ 0 or None, got {turn.speaker!r}.")
    return f"<|speaker:{turn.speaker}|>{turn.text}"


def _canonical_labels(text: str) -> str:
    """`<|speaker:007|>` → `<|speaker:7|>`: the label is plain text to the model, which learnt the form without
    leading zeros, and the voice check reads both as speaker 7."""
    return re.sub(r"<\|speaker:0*(\d+)\|>", r"<|speaker:\1|>", text)


def _split_text(text) -> tuple[list[str], list[str]]:
    """`text` (a string or a list of turns) → checked turn texts and the input name of each, for messages."""
    if isinstance(text, str):
        clean = _canonical_labels(_check_text(text, "text"))
        turns = split_turns(clean) if SPEAKER_TAG.search(clean) else [clean.strip()]
        if not turns:
            raise TextError("text: is empty; type what the voice should say.")
        names = ["text" if len(turns) == 1 else f"text (turn {i + 1})" for i in range(len(turns))]
    elif isinstance(text, (list, tuple)):
        if not text:
            raise TextError("text: the script has no lines; give at least one turn.")
        turns, names = [], []
        for i, turn in enumerate(text):
            if isinstance(turn, str):
                body = turn
            elif hasattr(turn, "speaker") and hasattr(turn, "text") and isinstance(turn.text, str):
                body = _turn_text(turn)
            else:
                raise TextError(f"text[{i}]: expected a string or a script Turn, got {type(turn).__name__}.")
            names.append(f"text[{i}]")
            turns.append(_canonical_labels(_check_text(body, names[-1])).strip())
    else:
        raise TextError(
            f"text: expected a string (or a list of turns), got {type(text).__name__}; pass the words to speak as text."
        )
    for turn, name in zip(turns, names):
        if not _has_words(_SPEAKER_LABEL.sub(" ", turn)):
            label = _SPEAKER_LABEL.match(turn)
            if not turn.strip():
                raise TextError(f"{name}: is empty; type what the voice should say.")
            if label and not _SPEAKER_LABEL.sub("", turn).strip():
                raise TextError(f"{name}: the label {label.group(0)} has no words after it; write the line after "
                                "the label or delete the label.")
            if "[" not in turn:
                raise TextError(f"{name}: holds no words to speak, only blanks or invisible characters; add the "
                                "words to speak.")
            raise TextError(f"{name}: holds only [tags] and no words to speak; add the words the tags apply to "
                            "(e.g. '[whisper] come closer').")
    return turns, names


def _check_text(text: str, input_name: str) -> str:
    """Normalise line breaks, reject control characters, lone surrogates and unbalanced [tags] (naming line and
    column). Returns the normalised text."""
    text = normalize_text(text, input_name)
    for i, ch in enumerate(text):
        if "\ud800" <= ch <= "\udfff":
            line = text.count("\n", 0, i) + 1
            column = i - (text.rfind("\n", 0, i) + 1) + 1
            raise TextError(
                f"{input_name}: invalid character U+{ord(ch):04X} (half of a UTF-16 surrogate pair) at line {line}, "
                f"column {column}; the text was damaged in transfer — delete the character or paste the text again."
            )
    find_tags(_SPEAKER_LABEL.sub(lambda m: " " * len(m.group(0)), text), input_name)
    return text


def _has_words(text: str) -> bool:
    """True when something is left to speak once [tags], blanks, control and format characters are removed.
    (Unassigned code points count as words: they may be emoji newer than this Python's Unicode tables.)"""
    return any(unicodedata.category(ch) not in _NOT_WORDS for ch in strip_tags(text).replace(ZWSP, ""))


_NOT_WORDS = {"Zs", "Zl", "Zp", "Cc", "Cf", "Cs"}


def _check_transcript(text, input_name: str) -> str:
    """A reference transcript: a string without control characters or broken unicode (it may be empty)."""
    if not isinstance(text, str):
        raise TextError(f"{input_name}: expected text (a string), got {type(text).__name__}; type the words spoken "
                        "in the reference clip.")
    if any("\ud800" <= ch <= "\udfff" for ch in text):
        raise TextError(f"{input_name}: holds a broken character (a lone UTF-16 surrogate); paste the text again.")
    label = _SPEAKER_LABEL.search(text)
    if label:  # the prompt labels each reference with its speaker: a second label inside would relabel the voice
        raise TextError(f"{input_name}: holds the speaker label {label.group(0)}; give only the words spoken in the "
                        "clip (each voice is labelled with its speaker automatically).")
    return normalize_text(text, input_name).strip()


def _check_voices(voices) -> list[Voice]:
    """`voices` as a list of Voice objects (a single Voice is accepted), else VoiceError naming the position."""
    if voices is None:
        return []
    if isinstance(voices, Voice):
        return [voices]
    if isinstance(voices, (str, Path)) or not isinstance(voices, Sequence):
        raise VoiceError(
            f"voices: expected a list of Voice objects, got {type(voices).__name__}; make one with "
            "tts.encode_voice(audio, transcript) or Voice.load(path)."
        )
    for i, voice in enumerate(voices):
        if not isinstance(voice, Voice):
            raise VoiceError(
                f"voices[{i}]: expected a Voice, got {type(voice).__name__}; make one with "
                "tts.encode_voice(audio, transcript) or Voice.load(path)."
            )
    return list(voices)


def _check_duration(waveform, sample_rate) -> None:
    """Refuse clips longer than MAX_SECONDS before resampling or encoding them (cheap: the shape only)."""
    shape = getattr(waveform, "shape", None)
    if not shape or isinstance(sample_rate, bool) or not isinstance(sample_rate, numbers.Real) or sample_rate <= 0:
        return  # prepare_reference names the problem
    _refuse_long(shape[-1] / float(sample_rate))


def _refuse_long(seconds: float) -> None:
    if seconds > MAX_SECONDS:
        raise AudioError(
            f"reference audio: is {seconds / 60:.1f} min long; at most {MAX_SECONDS:.0f} s can be used and 10–30 s "
            "is best — cut a clip of clean speech (and give its transcript)."
        )


def _plain(value):
    """NumPy's (and any registered) number scalars as Python's int or float, so that np.int64(30) passes the checks
    30 passes; bools and everything else unchanged, for the checks to name."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return value
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def _as_seed(seed) -> int | None:
    """None, or any integer type (numpy included) → int; `normalize_seed` then folds it (see its doc)."""
    if seed is None:
        return None
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        return int(seed)
    raise ParameterError(f"seed={seed!r}: must be an integer (e.g. 42), or None for a random seed.")


# How to fit text that is too long for the context, through the engine's API (nodes word it for a graph).
SPLIT_TEXT_ADVICE = ("split long text into turns (start each paragraph with <|speaker:0|>) — turns are generated one "
                     "batch after another")
_OOM_ERRORS = tuple({getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError), torch.cuda.OutOfMemoryError})
# What an allocation failure says when it comes as a plain RuntimeError: MPS and the rest ("out of memory"), the CPU
# allocator ("DefaultCPUAllocator: can't allocate memory").
_OOM_MESSAGES = ("out of memory", "can't allocate memory")


def free_device_memory(device: torch.device | str) -> None:
    """Collect garbage and return cached blocks of `device`'s allocator to the driver."""
    gc.collect()
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
    elif device.type == "mps" and getattr(torch, "mps", None) is not None:
        torch.mps.empty_cache()


@contextlib.contextmanager
def _out_of_memory_guard(device: torch.device | str, doing: str, advice: str):
    """Turn an out-of-memory error inside the block into OutOfMemoryError naming the setting to lower.

    The failed call's frames are cleared first, so its tensors (KV caches, activations) are really freed, and the
    allocator cache is emptied: the model is usable again at once.
    """
    try:
        yield
    except (*_OOM_ERRORS, RuntimeError) as exc:
        message = str(exc).lower()
        if not isinstance(exc, _OOM_ERRORS) and not any(m in message for m in _OOM_MESSAGES):
            raise
        detail = (str(exc).strip().splitlines() or ["out of memory"])[0][:200]
        traceback.clear_frames(exc.__traceback__)
        del exc
        free_device_memory(device)
        raise OutOfMemoryError(f"out of memory on {device} while {doing} ({detail}); {advice}.") from None
