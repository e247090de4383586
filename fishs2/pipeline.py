"""`FishS2`: model + tokenizer + codec as one object — the API the CLI and the ComfyUI nodes use."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

from . import hub
from .checkpoint import load_model
from .config import ModelConfig
from .errors import CheckpointError, CodesError, ParameterError, TextError
from .generate import FrameEvent, Generation, SegmentEvent, generate_segments
from .model import AttentionMode, DualAR
from .prompt import SPEAKER_TAG, PromptBuilder, Reference, group_turns, split_turns
from .sampling import SamplingParams, make_generators, normalize_seed
from .tokenizer import Tokenizer
from .voice import Voice, check_reference

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


def pick_device(device: str | torch.device | None) -> torch.device:
    if device not in (None, "auto"):
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """None/"auto": bf16 on GPUs that support it (the checkpoint's dtype), fp16 on other GPUs, fp32 on CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in (None, "auto"):
        if dtype not in DTYPES:
            raise ParameterError(f"dtype={dtype!r}: use one of auto, bf16, fp16, fp32.")
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
    ) -> "FishS2":
        """Load a checkpoint directory or hub id (downloaded into `models_dir` when absent)."""
        from .codec import load_codec

        directory = hub.resolve(source, models_dir, progress)
        device = pick_device(device)
        dtype = pick_dtype(dtype, device)
        config = ModelConfig.from_file(directory / "config.json")
        tokenizer = Tokenizer(directory / "tokenizer.json")
        if tokenizer.num_semantic != config.codebook_size:
            raise CheckpointError(
                f"{directory}: tokenizer has {tokenizer.num_semantic} semantic tokens but config.json says "
                f"codebook_size={config.codebook_size}."
            )
        config = config.with_semantic_range(tokenizer.semantic_begin_id, tokenizer.semantic_end_id)
        model = load_model(directory, config, dtype, device)
        codec = load_codec(directory, device=device, dtype=codec_dtype)
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

    def to(self, device: str | torch.device) -> "FishS2":
        self.model.to(device)
        self.codec.to(device)
        return self

    # ── voices ──────────────────────────────────────────────────────────────────────────────────────────────
    def encode_voice(self, audio, text: str, sample_rate: int | None = None, name: str = "") -> Voice:
        """Reference audio (a file path, or samples [L] / [C, L] / [1, C, L] with `sample_rate`) + its transcript
        → a `Voice` of codes [K, T]."""
        from .audio import load_audio, prepare_reference

        if isinstance(audio, (str, Path)):
            waveform, sample_rate = load_audio(audio)
            source = str(audio)
        else:
            if sample_rate is None:
                raise ParameterError("sample_rate: required when the reference audio is given as samples.")
            waveform, source = audio, "samples"
        mono = prepare_reference(waveform, sample_rate)  # [L] float32 at the codec rate
        stats = check_reference(mono, self.sample_rate)
        with torch.inference_mode():
            codes, _ = self.codec.encode(mono.to(self.codec_device, self.codec_dtype)[None, None])
        metadata = {"source": source, "source_sample_rate": int(sample_rate), "duration_s": round(stats["duration"], 3)}
        return Voice(codes=codes[0].cpu().long(), text=text.strip(), name=name, metadata=metadata)

    @property
    def codec_device(self) -> torch.device:
        return next(self.codec.parameters()).device

    @property
    def codec_dtype(self) -> torch.dtype:
        return next(self.codec.parameters()).dtype

    # ── generation ──────────────────────────────────────────────────────────────────────────────────────────
    def plan(self, text, voices: Sequence[Voice], chunk_length: int) -> tuple[list[tuple[str, list[int]]], list[Reference]]:
        """Turns → batches of (text, turn indices) and the reference list, with every speaker checked."""
        if isinstance(text, str):
            if not text.strip():
                raise TextError("text: is empty; type what the voice should say.")
            turns = split_turns(text) if SPEAKER_TAG.search(text) else [text.strip()]
        else:
            turns = [t if isinstance(t, str) else _turn_text(t) for t in text]
            if not turns:
                raise TextError("text: the script has no lines.")
        if isinstance(chunk_length, bool) or not isinstance(chunk_length, int) or chunk_length < 1:
            raise ParameterError(f"chunk_length={chunk_length!r}: must be an integer ≥ 1 (UTF-8 bytes per batch).")
        for voice in voices:
            voice.check_codes(self.config.num_codebooks, self.codec.semantic_codebook_size, self.codec.codebook_size)
        if voices:
            speakers = {int(m) for turn in turns for m in re.findall(r"<\|speaker:(\d+)\|>", turn)}
            unvoiced = sorted(s for s in speakers if s >= len(voices))
            if unvoiced:
                raise TextError(
                    f"text: speaker(s) {', '.join(map(str, unvoiced))} have no voice; {len(voices)} voice(s) given "
                    f"(speaker N uses voice N, counting from 0)."
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
    ) -> Iterator[FrameEvent | SegmentEvent]:
        """Yield frames as they are produced and each finished segment; takes use seeds seed … seed+takes−1."""
        params = SamplingParams(temperature, top_p, top_k)
        if isinstance(max_frames, bool) or not isinstance(max_frames, int) or not 1 <= max_frames < self.config.max_seq_len:
            raise ParameterError(
                f"max_frames={max_frames!r}: must be an integer in 1 … {self.config.max_seq_len - 1} "
                f"(the context holds {self.config.max_seq_len} positions; 21.5 frames = 1 s of audio)."
            )
        if isinstance(takes, bool) or not isinstance(takes, int) or takes < 1:
            raise ParameterError(f"takes={takes!r}: must be an integer ≥ 1.")
        batches, references = self.plan(text, list(voices), chunk_length)
        seed = normalize_seed(seed)
        generators = make_generators([seed + i for i in range(takes)], self.device)
        yield from generate_segments(
            self.model, self.prompts, batches, references, params, max_frames, generators, mode=mode
        )

    def generate_takes(self, text, voices: Sequence[Voice] = (), *, seed: int | None = None, takes: int = 1,
                       on_frame: Callable[[int], None] | None = None, **options) -> list[Generation]:
        """Generate `takes` takes (seeds seed … seed+takes−1) → one `Generation` per take."""
        seed = normalize_seed(seed)
        results = [Generation(seed=seed + i) for i in range(takes)]
        done = 0
        for event in self.stream(text, voices, seed=seed, takes=takes, **options):
            if isinstance(event, FrameEvent):
                done += 1
                if on_frame is not None:
                    on_frame(done)
            else:
                results[event.take].segments.append(event.result)
        return results

    def generate(self, text, voices: Sequence[Voice] = (), *, seed: int | None = None,
                 on_frame: Callable[[int], None] | None = None, **options) -> Generation:
        """Generate one take for `text` (a string with optional `<|speaker:N|>` tags, or a list of turns)."""
        return self.generate_takes(text, voices, seed=seed, takes=1, on_frame=on_frame, **options)[0]

    # ── audio ───────────────────────────────────────────────────────────────────────────────────────────────
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [K, n] → waveform float32 [1, n·frame_length] on the CPU at `sample_rate`."""
        if not isinstance(codes, torch.Tensor):
            raise CodesError(f"codes: expected a tensor, got {type(codes).__name__}.")
        if codes.dim() != 2:
            raise CodesError(f"codes: expected shape [codebooks, frames], got {list(codes.shape)}.")
        with torch.inference_mode():
            audio = self.codec.decode_chunked(codes[None].to(self.codec_device))
        return audio[0].float().cpu()


def _turn_text(turn) -> str:
    """A script turn (anything with `.speaker` and `.text`) in the official `<|speaker:N|>text` form."""
    return turn.text if turn.speaker is None else f"<|speaker:{turn.speaker}|>{turn.text}"
