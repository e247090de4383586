"""The bad-input matrix (issue 6): one row per input a creator can get wrong, each run against the real engine on
the tiny checkpoint.

A row that must fail asserts the exact error class and that the message names the input (`names`) and the fix
(`fix`). A row that is accepted on purpose (a normalisation we document: resampling, channel mixing, PCM scaling,
seed folding, literal special tokens …) runs a check of what the engine did instead.

`docs/TROUBLESHOOTING.md` is generated from these rows with the messages the engine really produces:

    python -m tests.test_bad_inputs > docs/TROUBLESHOOTING.md

and `test_troubleshooting_lists_every_row` fails when a row is missing from it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from fishs2 import FishS2
from fishs2 import hub
from fishs2.errors import (
    AudioError,
    CheckpointError,
    CodesError,
    FishS2Error,
    OutOfMemoryError,
    ParameterError,
    TextError,
    VoiceError,
)
from fishs2.script import Turn, assign_slots
from fishs2.voice import Voice

from .conftest import GOLDEN_CODEC, copy_tiny_checkpoint
from .golden import SHIPPED

REFERENCE_WAV = SHIPPED / "codec_input.wav"
DOC = Path(__file__).parents[1] / "docs" / "TROUBLESHOOTING.md"
SR = 44100


# ── the context a row runs in ─────────────────────────────────────────────────────────────────────────────────────
@dataclass
class Ctx:
    tts: FishS2
    voice: Voice
    tmp: Path
    monkeypatch: pytest.MonkeyPatch
    counter: list = field(default_factory=lambda: [0])

    def fresh_dir(self, name: str) -> Path:
        self.counter[0] += 1
        path = self.tmp / f"{self.counter[0]:03d}-{name}"
        path.mkdir(parents=True)
        return path

    def checkpoint(self) -> Path:
        """A private copy of the tiny checkpoint to damage."""
        return copy_tiny_checkpoint(self.fresh_dir("ckpt") / "s2-pro")

    def say(self, text, voices=None, **options):
        options.setdefault("max_frames", 2)
        options.setdefault("seed", 1)
        return self.tts.generate(text, [self.voice] if voices is None else voices, **options)

    def encode(self, samples, rate=SR, text="A reference transcript."):
        return self.tts.encode_voice(samples, text, sample_rate=rate)


@dataclass(frozen=True)
class Row:
    id: str
    area: str
    input: str  # what the creator gave, in words
    call: Callable[[Ctx], object]
    error: type[BaseException] | None  # None: accepted on purpose, `call` checks what happened
    names: tuple[str, ...] = ()  # fragments naming the input
    fix: tuple[str, ...] = ()  # fragments of the fix
    outcome: str = ""  # for accepted rows: what the engine does


def speech(seconds: float = 1.5, rate: int = SR, channels: int | None = None) -> np.ndarray:
    """A voiced-like test signal: 180 Hz tone with harmonics and a 4 Hz syllable envelope, peak ≈ 0.5."""
    t = np.arange(int(seconds * rate)) / rate
    tone = sum(np.sin(2 * math.pi * 180 * k * t) / k for k in (1, 2, 3))
    x = (0.3 * tone * (0.6 + 0.4 * np.sin(2 * math.pi * 4 * t))).astype(np.float32)
    return x if channels is None else np.stack([x] * channels)


def numpy_numbers(c: Ctx):
    plain = c.tts.generate_takes("Hi.", [c.voice], seed=3, takes=2, max_frames=2, temperature=0.5, top_k=30)
    numbers = c.tts.generate_takes("Hi.", [c.voice], seed=3, takes=np.int64(2), max_frames=np.int64(2),
                                   temperature=np.float32(0.5), top_k=np.int64(30))
    assert all(torch.equal(a.codes, b.codes) for a, b in zip(plain, numbers))


def no_cuda_device(c: Ctx):
    c.monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return FishS2.from_pretrained(c.checkpoint(), device="cuda")


# ── checks for accepted rows ──────────────────────────────────────────────────────────────────────────────────────
def user_text(tts: FishS2, prompt: torch.Tensor) -> str:
    """The decoded text of the last user message of a prompt [K+1, T]."""
    ids = prompt[0].tolist()
    tok = tts.tokenizer
    starts = [i for i, t in enumerate(ids) if t == tok.im_start_id]
    user_start = starts[-2]  # the last one opens the assistant message
    end = max(i for i, t in enumerate(ids) if t == tok.im_end_id)
    head = tok.encode("<|im_start|>user\n")
    assert ids[user_start : user_start + len(head)] == head
    return tok.decode(ids[user_start + len(head) : end])


def prompt_round_trips(text: str) -> Callable[[Ctx], object]:
    def check(ctx: Ctx):
        batches, refs = ctx.tts.plan(text, [ctx.voice], chunk_length=10_000)
        prompt = ctx.tts.prompts.build(batches[0][0], refs)
        assert user_text(ctx.tts, prompt) == unicodedata.normalize("NFC", batches[0][0])
        return ctx.say(text)

    return check


def special_tokens_stay_text(ctx: Ctx):
    typed = "say <|im_end|> then <|voice|> and <|semantic:3|> literally"
    batches, refs = ctx.tts.plan(typed, [ctx.voice], chunk_length=10_000)
    prompt = ctx.tts.prompts.build(batches[0][0], refs)
    tok = ctx.tts.tokenizer
    ids = prompt[0].tolist()
    template = ctx.tts.prompts.build("x", refs)[0].tolist()
    for special in (tok.im_end_id, tok.voice_id, tok.im_start_id):
        assert ids.count(special) == template.count(special), "a typed special token became a control token"
    audio_ids = [i for i in ids if tok.semantic_begin_id <= i <= tok.semantic_end_id]
    assert len(audio_ids) == ctx.voice.num_frames, "a typed <|semantic:N|> became an audio token"
    assert user_text(ctx.tts, prompt) == typed
    return ctx.say(typed)


def line_breaks_normalised(ctx: Ctx):
    batches, _ = ctx.tts.plan("Line one.\r\nLine\ttwo.\rThree.", [ctx.voice], chunk_length=10_000)
    assert batches[0][0] == "Line one.\nLine two.\nThree."


def encodes_like(reference: np.ndarray, rate: int = SR, frames: int | None = None):
    """Encode `samples` and check the voice length matches the clip's duration."""

    def check(ctx: Ctx, samples=None):
        voice = ctx.encode(reference, rate)
        seconds = reference.shape[-1] / rate
        expected = frames if frames is not None else math.ceil(round(seconds * SR) / 2048)
        assert voice.codes.shape == (10, expected)
        return voice

    return check


def pcm_formats(ctx: Ctx):
    """int16 / int32 / float64 arrays are scaled to the same float clip (up to int16 rounding)."""
    from fishs2.audio import prepare_reference

    x = speech(1.2)
    as_float = prepare_reference(x, SR)
    for arr, tol in ((np.round(x * 32767).astype(np.int16), 1 / 32768), ((x * 2**31).astype(np.int32), 1e-7),
                     (x.astype(np.float64), 0.0)):
        got = prepare_reference(arr, SR)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, as_float, atol=tol + 1e-7, rtol=0)
    return ctx.encode(np.round(x * 32767).astype(np.int16))


def six_channels(ctx: Ctx):
    x = speech(1.2)
    mono = ctx.encode(x)
    six = ctx.encode(np.stack([x] * 6))
    assert torch.equal(mono.codes, six.codes)  # identical channels average to the same clip


def mp3_without_ffmpeg_supported(ctx: Ctx):
    if "MP3" not in soundfile.available_formats():
        pytest.skip("this libsndfile cannot write MP3")
    path = ctx.fresh_dir("mp3") / "voice.mp3"
    soundfile.write(str(path), speech(1.5), SR)
    ctx.monkeypatch.setattr(shutil, "which", lambda name: None)
    voice = ctx.tts.encode_voice(path, "A reference transcript.")
    assert voice.codes.shape[0] == 10 and voice.num_frames >= 30


def codes_int32(ctx: Ctx):
    codes = ctx.say("Hello there.", max_frames=3).codes
    torch.testing.assert_close(ctx.tts.decode(codes.int()), ctx.tts.decode(codes))


def negative_seed(ctx: Ctx):
    a, b = ctx.say("Seeds.", seed=-5, max_frames=4), ctx.say("Seeds.", seed=5, max_frames=4)
    assert a.seed == 5 and torch.equal(a.codes, b.codes)


def huge_seed(ctx: Ctx):
    a, b = ctx.say("Seeds.", seed=2**64 + 3, max_frames=4), ctx.say("Seeds.", seed=3, max_frames=4)
    assert a.seed == 3 and torch.equal(a.codes, b.codes)
    top = ctx.tts.generate_takes("Seeds.", [ctx.voice], seed=2**63 - 1, takes=2, max_frames=2)
    assert [t.seed for t in top] == [2**63 - 1, 2**63]


def numpy_seed(ctx: Ctx):
    a, b = ctx.say("Seeds.", seed=np.int64(7), max_frames=4), ctx.say("Seeds.", seed=7, max_frames=4)
    assert a.seed == 7 and isinstance(a.seed, int) and torch.equal(a.codes, b.codes)


def random_seed(ctx: Ctx):
    result = ctx.say("Seeds.", seed=None, max_frames=3)
    again = ctx.say("Seeds.", seed=result.seed, max_frames=3)
    assert 0 <= result.seed < 2**63 and torch.equal(result.codes, again.codes)


def symlink_inside_root(ctx: Ctx):
    root = ctx.fresh_dir("models")
    real = copy_tiny_checkpoint(root / "store" / "s2-pro")
    os.symlink(real, root / "linked")
    assert hub.resolve(root / "linked", models_root=root) == root / "linked"


def single_voice_not_in_a_list(ctx: Ctx):
    a = ctx.tts.generate("Hello.", ctx.voice, seed=1, max_frames=3)
    b = ctx.tts.generate("Hello.", [ctx.voice], seed=1, max_frames=3)
    assert torch.equal(a.codes, b.codes)


def interrupted_download(ctx: Ctx):
    import huggingface_hub

    models = ctx.fresh_dir("hub")

    def interrupted(repo_id, local_dir, **kwargs):
        copy_tiny_checkpoint(Path(local_dir))
        (Path(local_dir) / "codec.pth").unlink()  # cut off before the last file
        raise KeyboardInterrupt

    ctx.monkeypatch.setattr(huggingface_hub, "snapshot_download", interrupted)
    with pytest.raises(KeyboardInterrupt):
        hub.resolve("fishaudio/s2-pro", models_dir=models)
    assert not (models / "s2-pro").exists()
    with pytest.raises(CheckpointError, match="incomplete checkpoint, missing codec.pth"):
        FishS2.from_pretrained(models / "s2-pro.partial", device="cpu")


# ── row helpers ───────────────────────────────────────────────────────────────────────────────────────────────────
def write_bytes(ctx: Ctx, name: str, data: bytes) -> Path:
    path = ctx.fresh_dir("file") / name
    path.write_bytes(data)
    return path


def wav_file(ctx: Ctx, name: str = "clip.wav", samples=None, rate: int = SR, **kw) -> Path:
    path = ctx.fresh_dir("wav") / name
    soundfile.write(str(path), speech(1.5) if samples is None else samples, rate, **kw)
    return path


def truncated_wav(ctx: Ctx):
    path = wav_file(ctx, subtype="PCM_16")
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    return ctx.tts.encode_voice(path, "A reference transcript.")


def truncated_flac(ctx: Ctx):
    path = wav_file(ctx, "clip.flac")
    path.write_bytes(path.read_bytes()[:40])
    ctx.monkeypatch.setattr(shutil, "which", lambda name: None)
    return ctx.tts.encode_voice(path, "A reference transcript.")


def mp3_old_libsndfile(ctx: Ctx):
    """libsndfile < 1.1 has no MP3 decoder; without ffmpeg the message must say to install it."""
    path = write_bytes(ctx, "voice.mp3", b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(400))
    ctx.monkeypatch.setattr(shutil, "which", lambda name: None)
    ctx.monkeypatch.setattr(soundfile, "available_formats", lambda: {"WAV": "", "FLAC": "", "OGG": ""})
    return ctx.tts.encode_voice(path, "A reference transcript.")


def damage_shard(change):
    def call(ctx: Ctx):
        from safetensors.torch import load_file, save_file

        d = ctx.checkpoint()
        shard = d / "model-00002-of-00002.safetensors"
        tensors = load_file(str(shard))
        change(tensors)
        save_file(tensors, str(shard))
        return FishS2.from_pretrained(d, device="cpu")

    return call


def to_int(tensors):
    key = sorted(tensors)[0]
    tensors[key] = tensors[key].to(torch.int32)


def checkpoint_without(name: str):
    def call(ctx: Ctx):
        d = ctx.checkpoint()
        (d / name).unlink()
        return FishS2.from_pretrained(d, device="cpu")

    return call


def checkpoint_with(name: str, change: Callable[[Path], None]):
    def call(ctx: Ctx):
        d = ctx.checkpoint()
        change(d / name)
        return FishS2.from_pretrained(d, device="cpu")

    return call


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def set_model_type(path: Path) -> None:
    config = json.loads(path.read_text())
    config["model_type"] = "llama"
    path.write_text(json.dumps(config))


def another_models_shard(ctx: Ctx):
    from fishs2.synthetic import Sizes, write_checkpoint

    d = ctx.checkpoint()
    other = write_checkpoint(ctx.fresh_dir("other"), GOLDEN_CODEC, Sizes(dim=32, n_layer=1, n_head=2, n_local_heads=1,
                             head_dim=16, intermediate_size=48, n_fast_layer=1, max_seq_len=512), shards=2)
    shutil.copy(other / "model-00002-of-00002.safetensors", d / "model-00002-of-00002.safetensors")
    return FishS2.from_pretrained(d, device="cpu")


class _Exploit:
    """Unpickling this creates the marker file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def pickled_codec(ctx: Ctx):
    d = ctx.checkpoint()
    marker = d.parent / "code-ran"
    torch.save({"decoder.weight": _Exploit(marker)}, d / "codec.pth")
    try:
        return FishS2.from_pretrained(d, device="cpu")
    finally:
        assert not marker.exists(), "loading codec.pth executed code"


def symlink_outside_root(ctx: Ctx):
    root = ctx.fresh_dir("models")
    outside = ctx.checkpoint()
    os.symlink(outside, root / "s2-pro")
    return FishS2.from_pretrained(root / "s2-pro", device="cpu", models_root=root)


def dotdot_outside_root(ctx: Ctx):
    root = ctx.fresh_dir("models")
    elsewhere = ctx.checkpoint()
    return FishS2.from_pretrained(root / ".." / elsewhere.relative_to(ctx.tmp), device="cpu", models_root=root)


def hub_target_symlink_outside_root(ctx: Ctx):
    root = ctx.fresh_dir("models")
    os.symlink(ctx.checkpoint(), root / "s2-pro")
    return hub.resolve("fishaudio/s2-pro", models_dir=root, models_root=root)


def voice_file(ctx: Ctx, codes=None, header: dict | None = None, name: str = "v.safetensors") -> Path:
    from safetensors.torch import save_file

    path = ctx.fresh_dir("voice") / name
    info = {"format": "fishs2-voice/1", "name": "v", "text": "hi", "metadata": {}} if header is None else header
    meta = {"fishs2": json.dumps(info)} if info != {} else None
    save_file({"codes": ctx.voice.codes.clone() if codes is None else codes}, str(path), metadata=meta)
    return path


def pickled_voice(suffix: str):
    def call(ctx: Ctx):
        directory = ctx.fresh_dir("pickle")
        marker = directory / "code-ran"
        path = directory / f"voice{suffix}"
        torch.save({"codes": _Exploit(marker)}, path)
        try:
            return Voice.load(path)
        finally:
            assert not marker.exists(), "loading a voice executed code"

    return call


def oom_in(method: str, call: Callable[[Ctx], object]):
    def run(ctx: Ctx):
        owner = ctx.tts.model.slow if method == "slow" else ctx.tts.codec

        def out_of_memory(*args, **kwargs):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

        ctx.monkeypatch.setattr(owner, "forward" if method == "slow" else method, out_of_memory)
        return call(ctx)

    return run


# ── the matrix ────────────────────────────────────────────────────────────────────────────────────────────────────
R = Row
ROWS: list[Row] = [
    # text
    R("text-empty", "text", "empty text", lambda c: c.say(""), TextError, ("text",), ("type what the voice should say",)),
    R("text-whitespace", "text", "whitespace only", lambda c: c.say(" \n\t  "), TextError, ("text",), ("type what",)),
    R("text-zero-width", "text", "only invisible characters (U+200B)", lambda c: c.say("\u200b\u200b"), TextError,
      ("text",), ("add the words",)),
    R("text-only-tags", "text", "only tags: `[whisper] [laughing]`", lambda c: c.say("[whisper] [laughing]"), TextError,
      ("text", "only [tags]"), ("add the words the tags apply to",)),
    R("text-label-no-words", "text", "a speaker label with no words: `<|speaker:0|>Hi.<|speaker:0|>`",
      lambda c: c.say("<|speaker:0|>Hi.<|speaker:0|>"), TextError, ("text (turn 2)", "<|speaker:0|>"),
      ("write the line after the label",)),
    R("text-unclosed-bracket", "text", "unbalanced `[`: `Hello [whisper there`", lambda c: c.say("Hello [whisper there"),
      TextError, ("text", "line 1, column 7"), ("add the closing ']'",)),
    R("text-unopened-bracket", "text", "unbalanced `]`: `Hello whisper] there`", lambda c: c.say("Hello whisper] there"),
      TextError, ("text", "line 1, column 14"), ("add the '[' that opens the tag or delete the ']'",)),
    R("text-nested-tags", "text", "nested tags `[a [b] c]`", lambda c: c.say("Hi [a [b] c] there"), TextError,
      ("text",), ("tags cannot be nested",)),
    R("text-tag-across-lines", "text", "a tag spanning two lines", lambda c: c.say("Hi [whis\nper] there"), TextError,
      ("text", "line 1"), ("a tag cannot span lines",)),
    R("text-empty-tag", "text", "an empty tag `[]`", lambda c: c.say("Hi [] there"), TextError, ("text", "'[]'"),
      ("write an instruction inside it",)),
    R("text-nul", "text", "a NUL byte", lambda c: c.say("Hello\x00 world"), TextError,
      ("text", "U+0000", "line 1, column 6"), ("delete it",)),
    R("text-control", "text", "terminal escape codes (`\\x1b[31m`)", lambda c: c.say("\x1b[31mred"), TextError,
      ("text", "U+001B"), ("delete it",)),
    R("text-lone-surrogate", "text", "a lone UTF-16 surrogate (from broken JSON)", lambda c: c.say("ab\ud800cd"),
      TextError, ("text", "U+D800", "column 3"), ("paste the text again",)),
    R("text-1mb", "text", "1 MB of text without speaker labels", lambda c: c.say("word " * 200_000), TextError,
      ("text", "context holds 4096"), ("split long text into turns", "<|speaker:0|>")),
    R("text-references-too-long", "text", "one word, with reference voices that fill the context",
      lambda c: c.say("Hi.", [Voice(torch.zeros(10, 200 if i == 5 else 65, dtype=torch.long), f"voice {i}")
                              for i in range(70)]),
      TextError, ("text", "reference voices", "context holds 4096"),
      ("use shorter reference clips (10–30 s) or fewer voices", "the longest is speaker 5's")),
    R("text-not-a-string", "text", "a number instead of text", lambda c: c.say(123), TextError,
      ("text", "got int"), ("pass the words to speak as text",)),
    R("text-none", "text", "None", lambda c: c.say(None), TextError, ("text", "got NoneType"), ("pass the words",)),
    R("text-empty-script", "text", "an empty list of turns", lambda c: c.say([]), TextError, ("text",),
      ("give at least one turn",)),
    R("text-bad-turn", "text", "a list with a non-text turn", lambda c: c.say(["Hi.", 5]), TextError,
      ("text[1]", "got int"), ("expected a string or a script Turn",)),
    R("text-bad-turn-speaker", "text", "a Turn with speaker -1", lambda c: c.say([Turn(-1, "Hi.")]), TextError,
      ("speaker", "-1"), ("voice slot number ≥ 0 or None",)),
    R("text-speaker-without-voice", "text", "`<|speaker:1|>` with one voice",
      lambda c: c.say("<|speaker:0|>Hi.<|speaker:1|>Hello."), TextError, ("text", "speaker(s) 1"),
      ("add a voice for each speaker",)),
    R("script-speaker-without-voice", "text", "a dialogue naming more speakers than voices (node path)",
      lambda c: assign_slots(["Alice", "Bob"], ["narrator"]), TextError, ("script", "'Bob'"),
      ("use fewer speakers",)),
    R("text-mixed-scripts-emoji", "text", "mixed scripts and emoji", prompt_round_trips(
        "Hello 世界, مرحبا, Здравствуй, नमस्ते 😀👍🏽 e\u0301"), None,
      outcome="accepted; tokenized as written (NFC-normalised, as the official tokenizer does)"),
    R("text-special-tokens", "text", "typed `<|im_end|>`, `<|voice|>`, `<|semantic:3|>`", special_tokens_stay_text,
      None, outcome="accepted as plain text: each special-token string is tokenized literally and never becomes a "
      "control or audio token; `<|speaker:N|>` is the one label the engine reads (it selects voice N)"),
    R("text-line-breaks", "text", "`\\r\\n`, `\\r`, tabs", line_breaks_normalised, None,
      outcome="accepted; line breaks become `\\n`, tabs become spaces"),
    # reference audio: samples
    R("audio-silent", "reference audio", "silence", lambda c: c.encode(np.zeros(2 * SR, np.float32)), AudioError,
      ("reference audio", "silent"), ("pick a clip where the speaker talks",)),
    R("audio-dc", "reference audio", "a DC offset only", lambda c: c.encode(np.full(2 * SR, 0.3, np.float32)), AudioError,
      ("reference audio", "constant (DC)"), ("pick a clip with speech",)),
    R("audio-clipped-square", "reference audio", "a clipped square wave",
      lambda c: c.encode(np.sign(np.sin(np.arange(2 * SR) * 0.02)).astype(np.float32)), AudioError,
      ("reference audio", "clipped"), ("use an unclipped recording",)),
    R("audio-0.2s", "reference audio", "0.2 s", lambda c: c.encode(speech(0.2)), AudioError,
      ("reference audio", "0.20 s is too short"), ("give at least 1 s",)),
    R("audio-10min", "reference audio", "10 minutes", lambda c: c.encode(np.zeros(600 * 8000, np.float32), 8000),
      AudioError, ("reference audio", "10.0 min"), ("cut a clip of clean speech",)),
    R("audio-nan", "reference audio", "NaN samples", lambda c: c.encode(np.where(np.arange(SR * 2) == 9, np.nan,
      speech(2)).astype(np.float32)), AudioError, ("reference audio", "NaN"), ("export or record it again",)),
    R("audio-inf", "reference audio", "infinite samples", lambda c: c.encode(np.where(np.arange(SR * 2) == 9, np.inf,
      speech(2)).astype(np.float32)), AudioError, ("reference audio", "infinite"), ("export or record it again",)),
    R("audio-int16-as-float", "reference audio", "int16 values stored as float (peak 16000)",
      lambda c: c.encode(speech(1.5) * 32000), AudioError, ("reference audio", "[−1, 1]"), ("divide them by 32768",)),
    R("audio-channels-last", "reference audio", "6 channels, channels last `[L, 6]`",
      lambda c: c.encode(speech(1.5, channels=6).T.copy()), AudioError, ("reference audio", "[66150, 6]"),
      ("pass channels first",)),
    R("audio-batch", "reference audio", "a batch of clips `[2, 1, L]`", lambda c: c.encode(np.zeros((2, 1, SR))),
      AudioError, ("reference audio", "batch of 2"), ("pass one clip",)),
    R("audio-empty", "reference audio", "an empty array", lambda c: c.encode(np.zeros(0, np.float32)), AudioError,
      ("reference audio", "empty"), ("pass a clip",)),
    R("audio-bad-dtype", "reference audio", "complex samples", lambda c: c.encode(np.zeros(SR, np.complex64)),
      AudioError, ("reference audio", "complex64"), ("pass float or integer PCM samples",)),
    R("audio-not-array", "reference audio", "a Python list", lambda c: c.encode([0.1] * SR), AudioError,
      ("reference audio", "got list"), ("pass samples as an array",)),
    R("audio-no-rate", "reference audio", "samples without sample_rate",
      lambda c: c.tts.encode_voice(speech(1.5), "hi"), ParameterError, ("sample_rate",), ("pass sample_rate=",)),
    R("audio-rate-zero", "reference audio", "sample_rate=0", lambda c: c.encode(speech(1.5), 0), AudioError,
      ("sample_rate", "0"), ("positive integer (Hz, e.g. 44100)",)),
    R("audio-rate-absurd", "reference audio", "sample_rate=1 (samples per second mistaken)",
      lambda c: c.encode(speech(0.001), 1), AudioError, ("sample_rate=1",), ("pass the clip's real sample rate",)),
    R("audio-transcript-none", "reference audio", "transcript None", lambda c: c.tts.encode_voice(speech(1.5), None, SR),
      TextError, ("transcript",), ("type the words spoken in the reference clip",)),
    R("audio-transcript-nul", "reference audio", "a NUL in the transcript",
      lambda c: c.tts.encode_voice(speech(1.5), "hi\x00", SR), TextError, ("transcript", "U+0000"), ("delete it",)),
    R("audio-8khz", "reference audio", "8 kHz", encodes_like(speech(1.5, 8000), 8000), None,
      outcome="accepted; resampled to 44.1 kHz (a warning says telephone-rate audio clones worse)"),
    R("audio-192khz", "reference audio", "192 kHz", encodes_like(speech(1.2, 192000), 192000), None,
      outcome="accepted; resampled to 44.1 kHz"),
    R("audio-6-channels", "reference audio", "6 channels `[6, L]`", six_channels, None,
      outcome="accepted; channels are averaged to mono"),
    R("audio-pcm-dtypes", "reference audio", "int16 / int32 / float64 arrays", pcm_formats, None,
      outcome="accepted; integer PCM is scaled to [−1, 1], float64 converted to float32"),
    # reference audio: files
    R("file-missing", "audio file", "a path that does not exist",
      lambda c: c.tts.encode_voice(c.tmp / "nope.wav", "hi"), AudioError, ("nope.wav", "not found"),
      ("check the path",)),
    R("file-folder", "audio file", "a folder instead of a file", lambda c: c.tts.encode_voice(c.tmp, "hi"), AudioError,
      ("not found",), ("check the path",)),
    R("file-corrupt", "audio file", "random bytes in a .wav", lambda c: c.tts.encode_voice(
        write_bytes(c, "noise.wav", bytes(range(256)) * 40), "hi"), AudioError, ("noise.wav", "not a readable audio"),
      ("use wav, flac, ogg or mp3",)),
    R("file-truncated-wav", "audio file", "a WAV cut off mid-file", truncated_wav, AudioError,
      ("clip.wav", "is truncated"), ("copy or export the file again",)),
    R("file-truncated-flac", "audio file", "a FLAC cut off after its header", truncated_flac, AudioError,
      ("clip.flac", "not a readable audio file"), ("use wav, flac, ogg or mp3",)),
    R("file-not-audio", "audio file", "a PNG renamed to .wav", lambda c: c.tts.encode_voice(
        write_bytes(c, "photo.wav", b"\x89PNG\r\n\x1a\n" + bytes(300)), "hi"), AudioError,
      ("photo.wav", "not a readable audio file"), ("use wav, flac, ogg or mp3",)),
    R("file-empty-wav", "audio file", "a WAV with no samples", lambda c: c.tts.encode_voice(
        wav_file(c, samples=np.zeros(0, np.float32)), "hi"), AudioError, ("clip.wav", "holds no samples"),
      ("export the recording again",)),
    R("file-mp3-no-ffmpeg-old-libsndfile", "audio file", "an mp3 without ffmpeg, libsndfile without MP3",
      mp3_old_libsndfile, AudioError, ("voice.mp3", "needs ffmpeg"), ("install ffmpeg", "convert the file to wav")),
    R("file-m4a-no-ffmpeg", "audio file", "an m4a without ffmpeg", lambda c: (
        c.monkeypatch.setattr(shutil, "which", lambda name: None),
        c.tts.encode_voice(write_bytes(c, "voice.m4a", b"\x00\x00\x00\x18ftypM4A " + bytes(64)), "hi")),
      AudioError, ("voice.m4a", "needs ffmpeg"), ("install ffmpeg",)),
    R("file-mp3-no-ffmpeg", "audio file", "an mp3 without ffmpeg (libsndfile ≥ 1.1)", mp3_without_ffmpeg_supported,
      None, outcome="accepted; libsndfile ≥ 1.1 decodes MP3 itself"),
    # voices
    R("voice-wrong-codebooks", "voice", "codes with 9 codebooks", lambda c: c.say(
        "Hi.", [Voice(c.voice.codes[:9], "x", "v9")]), VoiceError, ("voice 'v9'", "9 codebooks"),
      ("re-encode the voice with this model",)),
    R("voice-out-of-range", "voice", "codes beyond the codebooks", lambda c: c.say(
        "Hi.", [Voice(c.voice.codes + 10_000, "x", "big")]), VoiceError, ("voice 'big'", "out of range"),
      ("re-encode the voice with this model",)),
    R("voice-float-codes", "voice", "float codes", lambda c: c.say("Hi.", [Voice(c.voice.codes.float(), "x", "f")]),
      VoiceError, ("voice 'f'", "torch.float32"), ("re-encode the voice",)),
    R("voice-no-frames", "voice", "codes with no frames", lambda c: c.say("Hi.", [Voice(c.voice.codes[:, :0], "x", "e")]),
      VoiceError, ("voice 'e'", "no frames"), ("re-encode it",)),
    R("voice-codes-not-tensor", "voice", "codes as a list", lambda c: c.say(
        "Hi.", [Voice(c.voice.codes.tolist(), "x", "l")]), VoiceError, ("voice 'l'", "got list"),
      ("encode_voice or Voice.load",)),
    R("voice-path-instead-of-voice", "voice", "a file path in voices", lambda c: c.say("Hi.", ["ref.wav"]), VoiceError,
      ("voices[0]", "got str"), ("tts.encode_voice(audio, transcript)",)),
    R("voice-string-as-voices", "voice", "voices='ref.wav'", lambda c: c.say("Hi.", "ref.wav"), VoiceError,
      ("voices", "got str"), ("encode_voice",)),
    R("voice-single-voice", "voice", "one Voice instead of a list", single_voice_not_in_a_list, None,
      outcome="accepted; treated as `[voice]`"),
    R("voice-file-missing", "voice file", "a voice file that does not exist", lambda c: Voice.load(c.tmp / "gone"),
      VoiceError, ("gone.safetensors", "not found"), ("check the path or save the voice first",)),
    R("voice-file-pickle-pt", "voice file", "a pickled `.pt` voice crafted to run code", pickled_voice(".pt"), VoiceError,
      ("voice.pt", "can run code"), ("encode the voice again from its audio",)),
    R("voice-file-pickle-renamed", "voice file", "a pickle renamed to `.safetensors`", pickled_voice(".safetensors"),
      VoiceError, ("voice.safetensors", "not a readable fishs2 voice"), ("save the voice again",)),
    R("voice-file-no-header", "voice file", "safetensors without the fishs2 header",
      lambda c: Voice.load(voice_file(c, header={})), VoiceError, ("v.safetensors", "no fishs2 header"),
      ("encode the voice again",)),
    R("voice-file-wrong-format", "voice file", "an unknown format version", lambda c: Voice.load(
        voice_file(c, header={"format": "other/9"})), VoiceError, ("v.safetensors", "'other/9'"), ("save the voice again",)),
    R("voice-file-bad-header", "voice file", "a header with a non-text transcript", lambda c: Voice.load(
        voice_file(c, header={"format": "fishs2-voice/1", "text": ["x"]})), VoiceError, ("v.safetensors", "damaged"),
      ("save the voice again",)),
    R("voice-file-float-codes", "voice file", "float codes in the file", lambda c: Voice.load(
        voice_file(c, codes=c.voice.codes.float())), VoiceError, ("v.safetensors", "torch.float32"),
      ("save the voice again",)),
    R("voice-file-negative-codes", "voice file", "negative codes in the file", lambda c: Voice.load(
        voice_file(c, codes=c.voice.codes - 5_000)), VoiceError, ("v.safetensors", "negative"), ("save the voice again",)),
    R("voice-file-truncated", "voice file", "a truncated voice file", lambda c: Voice.load(
        (lambda p: (truncate(p), p)[1])(voice_file(c))), VoiceError, ("v.safetensors", "not a readable"),
      ("save the voice again",)),
    R("voice-file-other-model", "voice file", "a voice encoded by another model (9 codebooks)", lambda c: c.tts.load_voice(
        voice_file(c, codes=c.voice.codes[:9].clone())), VoiceError, ("9 codebooks",),
      ("re-encode the voice with this model",)),
    R("voice-metadata-not-json", "voice file", "saving metadata that is not JSON", lambda c: Voice(
        c.voice.codes, "x", "m", {"t": torch.zeros(1)}).save(c.fresh_dir("m") / "m"), VoiceError, ("voice 'm'", "metadata"),
      ("plain JSON data",)),
    R("voice-transcript-speaker-label", "voice", "a transcript holding `<|speaker:1|>`", lambda c: c.say(
        "Hi.", [Voice(c.voice.codes, "<|speaker:1|>Hello there.", "t")]), TextError,
      ("transcript", "<|speaker:1|>"), ("give only the words spoken in the clip",)),
    R("voice-save-nan-metadata", "voice file", "saving metadata holding NaN", lambda c: Voice(
        c.voice.codes, "x", "m", {"gain": float("nan")}).save(c.fresh_dir("m") / "m"), VoiceError,
      ("voice 'm'", "metadata"), ("finite numbers",)),
    R("voice-save-list-codes", "voice file", "saving codes given as a list", lambda c: Voice(
        [[1, 2]], "x", "l").save(c.fresh_dir("l") / "l"), VoiceError, ("voice 'l'", "got list"),
      ("make voices with encode_voice or Voice.load",)),
    R("voice-save-broken-text", "voice file", "saving a transcript with a lone surrogate", lambda c: Voice(
        c.voice.codes, "ab\ud800", "s").save(c.fresh_dir("s") / "s"), VoiceError, ("voice 's'", "U+D800"),
      ("type or paste it again",)),
    R("voice-save-onto-folder", "voice file", "saving onto an existing folder", lambda c: Voice(
        c.voice.codes, "x", "d").save((lambda d: (d / "d.safetensors").mkdir() or d / "d")(c.fresh_dir("d"))),
      VoiceError, ("voice 'd'", "cannot write"), ("pick a folder you can write to",)),
    # codes
    R("codes-out-of-range", "codes", "indices beyond the model's codebooks", lambda c: c.tts.decode(
        torch.full((10, 4), 5000)), CodesError, ("codes", "5000"), ("pass the codes of a Generation made by this model",)),
    R("codes-negative", "codes", "negative indices", lambda c: c.tts.decode(torch.full((10, 4), -1)), CodesError,
      ("codes", "-1"), ("pass the codes of a Generation",)),
    R("codes-wrong-codebooks", "codes", "9 codebooks", lambda c: c.tts.decode(torch.zeros(9, 4, dtype=torch.long)),
      CodesError, ("codes", "[9, 4]"), ("pass the codes of a Generation",)),
    R("codes-batched", "codes", "a batch `[1, 10, T]`", lambda c: c.tts.decode(torch.zeros(1, 10, 4, dtype=torch.long)),
      CodesError, ("codes", "[1, 10, 4]"), ("pass the codes of a Generation",)),
    R("codes-empty", "codes", "no frames `[10, 0]`", lambda c: c.tts.decode(torch.zeros(10, 0, dtype=torch.long)),
      CodesError, ("codes", "no frames"), ("generate some speech first",)),
    R("codes-float", "codes", "float codes", lambda c: c.tts.decode(torch.zeros(10, 4)), CodesError,
      ("codes", "torch.float32"), ("pass the codes of a Generation",)),
    R("codes-bool", "codes", "bool codes", lambda c: c.tts.decode(torch.zeros(10, 4, dtype=torch.bool)), CodesError,
      ("codes", "torch.bool"), ("pass the codes of a Generation",)),
    R("codes-numpy", "codes", "a numpy array", lambda c: c.tts.decode(np.zeros((10, 4), np.int64)), CodesError,
      ("codes", "ndarray"), ("pass the codes of a Generation",)),
    R("codes-int32", "codes", "int32 codes", codes_int32, None, outcome="accepted; any integer dtype decodes the same"),
    # checkpoint
    R("ckpt-missing-dir", "checkpoint", "a directory that does not exist",
      lambda c: FishS2.from_pretrained(c.tmp / "no" / "such" / "dir", device="cpu"), CheckpointError,
      ("no such checkpoint directory",), ("check the path",)),
    R("ckpt-file-not-dir", "checkpoint", "a file instead of the directory",
      lambda c: FishS2.from_pretrained(c.checkpoint() / "config.json", device="cpu"), CheckpointError,
      ("config.json", "is a file"), ("give the checkpoint directory",)),
    R("ckpt-missing-tokenizer", "checkpoint", "tokenizer.json missing", checkpoint_without("tokenizer.json"),
      CheckpointError, ("missing tokenizer.json",), ("copy the missing files",)),
    R("ckpt-missing-codec", "checkpoint", "codec.pth missing", checkpoint_without("codec.pth"), CheckpointError,
      ("missing codec.pth",), ("copy the missing files",)),
    R("ckpt-missing-shard", "checkpoint", "a weight shard missing", checkpoint_without("model-00002-of-00002.safetensors"),
      CheckpointError, ("model-00002-of-00002.safetensors",), ("download",)),
    R("ckpt-truncated-shard", "checkpoint", "a truncated shard", checkpoint_with(
        "model-00001-of-00002.safetensors", truncate), CheckpointError,
      ("model-00001-of-00002.safetensors", "truncated or corrupt"), ("download it again",)),
    R("ckpt-shard-of-another-model", "checkpoint", "a shard of another model", another_models_shard, CheckpointError,
      ("wrong shape",), ("Download the checkpoint again",)),
    R("ckpt-int-weights", "checkpoint", "weights of the wrong dtype (int32)", damage_shard(to_int), CheckpointError,
      ("not floating point", "I32"), ("download the original model",)),
    R("ckpt-bad-dtype-name", "checkpoint", "dtype='int8'", lambda c: FishS2.from_pretrained(
        c.checkpoint(), device="cpu", dtype="int8"), ParameterError, ("dtype='int8'",), ("use one of auto, bf16",)),
    R("ckpt-int8-compile", "checkpoint", "int8=True, compile=True on the CPU", lambda c: FishS2.from_pretrained(
        c.checkpoint(), device="cpu", int8=True, compile=True), ParameterError, ("compile=True with int8 weights on the cpu",),
      ("Turn compile off",)),
    R("ckpt-fp8-on-cpu", "checkpoint", "fp8=True on a device without fp8 matmuls (the CPU)",
      lambda c: FishS2.from_pretrained(c.checkpoint(), device="cpu", fp8=True), ParameterError,
      ("fp8=True", "the cpu has no fp8 matmuls"), ("compute capability 8.9", "int8=True")),
    R("ckpt-int8-and-fp8", "checkpoint", "int8=True, fp8=True", lambda c: FishS2.from_pretrained(
        c.checkpoint(), device="cpu", int8=True, fp8=True), ParameterError, ("int8=True and fp8=True",),
      ("choose one weight format",)),
    R("ckpt-bad-torch-dtype", "checkpoint", "dtype=torch.int8", lambda c: FishS2.from_pretrained(
        c.checkpoint(), device="cpu", dtype=torch.int8), ParameterError, ("dtype=torch.int8",), ("use one of",)),
    R("ckpt-unknown-model-type", "checkpoint", "config.json with model_type 'llama'", checkpoint_with(
        "config.json", set_model_type), CheckpointError, ("config.json", "model_type is 'llama'"),
      ("download the model again",)),
    R("ckpt-config-not-json", "checkpoint", "config.json that is not JSON", checkpoint_with(
        "config.json", lambda p: p.write_text("{oops")), CheckpointError, ("config.json", "not valid JSON"),
      ("download the model again",)),
    R("ckpt-tokenizer-corrupt", "checkpoint", "a corrupt tokenizer.json", checkpoint_with(
        "tokenizer.json", lambda p: p.write_text("{}")), CheckpointError, ("tokenizer.json",), ("download the checkpoint again",)),
    R("ckpt-codec-truncated", "checkpoint", "a truncated codec.pth", checkpoint_with("codec.pth", truncate),
      CheckpointError, ("codec.pth", "corrupt or truncated"), ("download the model again",)),
    R("ckpt-codec-pickled-code", "checkpoint", "a codec.pth holding pickled code", pickled_codec, CheckpointError,
      ("codec.pth", "could run code", "nothing in it was executed"), ("use the official codec.pth",)),
    R("ckpt-symlink-outside", "checkpoint", "a symlink pointing outside the models folder", symlink_outside_root,
      CheckpointError, ("s2-pro", "outside the models folder", "it leads to"),
      ("move or copy the checkpoint folder into the models folder",)),
    R("ckpt-hub-target-symlink-outside", "checkpoint", "the hub download folder is a symlink leading outside",
      hub_target_symlink_outside_root, CheckpointError, ("outside the models folder",), ("move or copy",)),
    R("ckpt-dotdot-outside", "checkpoint", "a `models/../elsewhere` path with models_root", dotdot_outside_root,
      CheckpointError, ("outside the models folder",), ("move or copy the checkpoint folder into the models folder",)),
    R("ckpt-symlink-inside", "checkpoint", "a symlink to a folder inside the models folder", symlink_inside_root, None,
      outcome="accepted"),
    R("ckpt-interrupted-download", "checkpoint", "a hub download interrupted (Ctrl-C)", interrupted_download, None,
      outcome="nothing is installed: the files stay in `<name>.partial`, which does not load (missing files named)"),
    # parameters
    *[R(f"param-{k}-{v}", "parameters", f"{k}={v!r}", (lambda k, v: lambda c: c.say("Hi.", **{k: v}))(k, v),
        ParameterError, (f"{k}=",), (fix,)) for k, v, fix in [
        ("temperature", 0, "must be in (0, 2]"), ("temperature", -1.0, "must be in (0, 2]"),
        ("temperature", 2.5, "must be in (0, 2]"), ("temperature", float("nan"), "must be in (0, 2]"),
        ("temperature", "0.8", "must be in (0, 2]"), ("top_p", 0, "must be in (0, 1]"),
        ("top_p", 1.5, "must be in (0, 1]"), ("top_p", float("nan"), "must be in (0, 1]"),
        ("top_k", 0, "must be an integer ≥ 1"), ("top_k", 2.5, "must be an integer ≥ 1"),
        ("top_k", True, "must be an integer ≥ 1"), ("max_frames", 0, "must be an integer in 1 … 4095"),
        ("max_frames", 10**9, "must be an integer in 1 … 4095"), ("max_frames", 2.0, "must be an integer"),
        ("chunk_length", 0, "must be an integer ≥ 1"), ("seed", "abc", "or None for a random seed"),
        ("seed", 1.5, "or None for a random seed"), ("seed", True, "or None for a random seed"),
        ("check_every", 0, "must be an integer ≥ 1"), ("check_every", 2.5, "must be an integer ≥ 1"),
    ]],
    R("param-device-unknown", "parameters", "device='tpu'", lambda c: FishS2.from_pretrained(
        c.checkpoint(), device="tpu"), ParameterError, ("device='tpu'", "not a device"), ("use auto, cpu, cuda",)),
    R("param-device-no-cuda", "parameters", "device='cuda' on a machine without a CUDA GPU", no_cuda_device,
      ParameterError, ("device='cuda'", "no CUDA GPU"), ("use cpu or auto",)),
    R("param-temperature-fp16", "parameters", "temperature=1e-4 with fp16 weights (the engine API; nodes stop at 0.01)",
      lambda c: FishS2.from_pretrained(c.checkpoint(), device="cpu", dtype="fp16").generate(
          "Hi.", [c.voice], max_frames=2, seed=1, temperature=1e-4), ParameterError,
      ("temperature=0.0001 with fp16 weights",), ("Use a temperature ≥ 0.001 or bf16/fp32 weights",)),
    R("param-max-frames-beyond-context", "parameters", "max_frames that with the prompt exceeds the context",
      lambda c: c.say("Hi.", max_frames=4090), ParameterError, ("max_frames=4090", "at most"), ("lower max_frames",)),
    R("param-takes-0", "parameters", "takes=0", lambda c: c.tts.generate_takes("Hi.", [c.voice], takes=0), ParameterError,
      ("takes=0",), ("must be an integer ≥ 1",)),
    R("param-seed-negative", "parameters", "seed=-5", negative_seed, None, outcome="accepted; the absolute value is used"),
    R("param-seed-huge", "parameters", "seed=2**64+3", huge_seed, None,
      outcome="accepted; folded modulo 2⁶³ (takes continue past it: seed … seed+takes−1)"),
    R("param-seed-numpy", "parameters", "seed=np.int64(7)", numpy_seed, None, outcome="accepted as 7"),
    R("param-numpy-numbers", "parameters", "NumPy numbers: temperature=np.float32(0.5), top_k=np.int64(30), "
      "max_frames=np.int64(2), takes=np.int64(2)", numpy_numbers, None,
      outcome="accepted as the Python numbers they hold"),
    R("param-mode-string", "parameters", "mode='fast' (a string)", lambda c: c.say("Hi.", mode="fast"),
      ParameterError, ("mode='fast'",), ("must be a fishs2.model.AttentionMode, or None",)),
    R("param-seed-none", "parameters", "seed=None", random_seed, None,
      outcome="a random seed is drawn and reported in `result.seed`; re-using it reproduces the take"),
    # failures
    R("oom-generate", "failure", "GPU out of memory while generating", oom_in("slow", lambda c: c.say("Hi.")),
      OutOfMemoryError, ("out of memory", "generating 1 take(s) of up to 2 frames"),
      ("lower max_frames", "fewer takes", "smaller dtype", "int8")),
    R("oom-decode", "failure", "GPU out of memory while decoding", oom_in("decode_chunked", lambda c: c.tts.decode(
        torch.zeros(10, 3, dtype=torch.long))), OutOfMemoryError, ("out of memory", "decoding 3 frames"),
      ("decode fewer frames at once",)),
    R("oom-encode", "failure", "GPU out of memory while encoding a voice", oom_in("encode", lambda c: c.encode(
        speech(1.5))), OutOfMemoryError, ("out of memory", "encoding 1.5 s of reference audio"),
      ("use a shorter reference clip",)),
]


@pytest.fixture(scope="module")
def voice(tiny_tts) -> Voice:
    return tiny_tts.encode_voice(REFERENCE_WAV, "This is the reference voice.", name="ref")


@pytest.fixture
def ctx(tiny_tts, voice, tmp_path, monkeypatch) -> Ctx:
    return Ctx(tiny_tts, voice, tmp_path, monkeypatch)


def test_row_ids_are_unique():
    ids = [r.id for r in ROWS]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input(row: Row, ctx: Ctx):
    if row.error is None:
        row.call(ctx)
        return
    with pytest.raises(row.error) as info:
        row.call(ctx)
    assert type(info.value) is row.error, f"expected exactly {row.error.__name__}, got {type(info.value).__name__}"
    assert isinstance(info.value, FishS2Error)
    message = str(info.value)
    for fragment in (*row.names, *row.fix):
        assert fragment in message, f"{fragment!r} missing from: {message}"
    assert row.names and row.fix, "every error row names the input and the fix"


def test_troubleshooting_lists_every_row():
    text = DOC.read_text(encoding="utf-8")
    missing = [r.id for r in ROWS if f"`{r.id}`" not in text]
    assert not missing, f"docs/TROUBLESHOOTING.md lacks rows {missing}; regenerate: python -m tests.test_bad_inputs"
    readme = (DOC.parents[1] / "README.md").read_text(encoding="utf-8")
    assert f"({len(ROWS)} cases" in readme, f"README.md's count of troubleshooting cases is not {len(ROWS)}"


# ── interrupt and out-of-memory: the model keeps nothing and stays usable ─────────────────────────────────────────
class Interrupted(Exception):
    """Stands in for ComfyUI's InterruptProcessingException."""


DIALOGUE = "<|speaker:0|>First line of the scene.<|speaker:0|>And a second, longer line after it."
OPTIONS = dict(seed=21, max_frames=10, chunk_length=1)


def watch_caches(tts: FishS2, monkeypatch) -> list:
    """Weak references to every KV cache the model allocates from now on."""
    import weakref

    refs = []
    original = tts.model.slow_caches

    def spy(*args, **kwargs):
        caches = original(*args, **kwargs)
        refs.extend(weakref.ref(c) for c in caches)
        return caches

    monkeypatch.setattr(tts.model, "slow_caches", spy)
    return refs


def all_freed(refs: list) -> bool:
    import gc

    gc.collect()
    return bool(refs) and all(r() is None for r in refs)


@pytest.fixture(scope="module")
def fresh_result(tiny_checkpoint_dir, voice):
    """The dialogue generated by a freshly loaded model: what any later run with the same seed must equal."""
    fresh = FishS2.from_pretrained(tiny_checkpoint_dir, device="cpu", dtype="fp32")
    return fresh.generate(DIALOGUE, [voice], **OPTIONS)


def test_interrupt_releases_everything_and_next_run_equals_a_fresh_one(tiny_tts, voice, fresh_result, monkeypatch):
    assert fresh_result.num_frames > 4
    refs = watch_caches(tiny_tts, monkeypatch)

    def on_frame(done):
        if done == 3:
            raise Interrupted

    with pytest.raises(Interrupted) as info:
        tiny_tts.generate(DIALOGUE, [voice], on_frame=on_frame, **OPTIONS)
    # While the exception (and its traceback) is still held — ComfyUI keeps it for the error report — the
    # generation's caches are already gone: the stream was closed, not left suspended.
    assert info.value is not None and all_freed(refs)
    monkeypatch.undo()
    again = tiny_tts.generate(DIALOGUE, [voice], **OPTIONS)
    assert [s.num_frames for s in again.segments] == [s.num_frames for s in fresh_result.segments]
    assert torch.equal(again.codes, fresh_result.codes)


def test_interrupt_in_the_second_segment_of_takes(tiny_tts, voice, fresh_result):
    frames_in_first = fresh_result.segments[0].num_frames

    def on_frame(done):
        if done == 2 * frames_in_first + 1:  # two takes: past the first segment of both
            raise Interrupted

    with pytest.raises(Interrupted):
        tiny_tts.generate_takes(DIALOGUE, [voice], takes=2, on_frame=on_frame, **OPTIONS)
    again = tiny_tts.generate(DIALOGUE, [voice], **OPTIONS)
    assert torch.equal(again.codes, fresh_result.codes)


def test_out_of_memory_mid_generation_frees_caches_and_model_stays_usable(tiny_tts, voice, fresh_result, monkeypatch):
    import fishs2.pipeline as pipeline

    refs = watch_caches(tiny_tts, monkeypatch)
    freed = []
    monkeypatch.setattr(pipeline, "free_device_memory", lambda device: freed.append(str(device)))
    original = tiny_tts.model.slow.forward
    calls = []

    def forward(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # after the prefill and two decode steps
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(*args, **kwargs)

    monkeypatch.setattr(tiny_tts.model.slow, "forward", forward)
    frames = []
    with pytest.raises(OutOfMemoryError) as info:
        tiny_tts.generate(DIALOGUE, [voice], on_frame=frames.append, **OPTIONS)
    message = str(info.value)
    assert "up to 10 frames" in message and "lower max_frames" in message and "Tried to allocate 2.00 GiB" in message
    assert frames == [1, 2, 3] and freed == ["cpu"]
    assert info.value.__cause__ is None  # the torch traceback (holding the caches) is not chained
    assert all_freed(refs)
    monkeypatch.undo()
    again = tiny_tts.generate(DIALOGUE, [voice], **OPTIONS)
    assert torch.equal(again.codes, fresh_result.codes)


def test_out_of_memory_guard_empties_the_cuda_cache_and_passes_other_errors(monkeypatch):
    import fishs2.pipeline as pipeline

    emptied = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    with pytest.raises(OutOfMemoryError, match="out of memory on cuda:0 while testing .*; lower it"):
        with pipeline._out_of_memory_guard(torch.device("cuda:0"), "testing", "lower it"):
            raise torch.OutOfMemoryError("CUDA out of memory.")
    assert emptied == [True]
    with pytest.raises(OutOfMemoryError, match="MPS backend out of memory"):  # MPS/ROCm raise RuntimeError
        with pipeline._out_of_memory_guard(torch.device("cpu"), "testing", "lower it"):
            raise RuntimeError("MPS backend out of memory (MPS allocated: 9 GB)")
    with pytest.raises(OutOfMemoryError, match="out of memory on cpu while testing .*can't allocate memory"):
        with pipeline._out_of_memory_guard(torch.device("cpu"), "testing", "lower it"):  # the CPU allocator's words
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:124] . DefaultCPUAllocator: can't allocate memory: "
                               "you tried to allocate 1779200000 bytes. Error code 12 (Cannot allocate memory)")
    with pytest.raises(RuntimeError, match="shape mismatch") as info:  # not an OOM: untouched
        with pipeline._out_of_memory_guard(torch.device("cpu"), "testing", "lower it"):
            raise RuntimeError("shape mismatch")
    assert type(info.value) is RuntimeError


def test_failed_call_is_not_half_applied_to_a_voice_file(tmp_path, voice, monkeypatch):
    """A crash while saving leaves the previous voice file byte for byte and no temporary file behind."""
    import safetensors.torch

    path = voice.save(tmp_path / "narrator")
    before = path.read_bytes()

    def crash(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    changed = Voice(voice.codes[:, :5].clone(), "other text", "narrator")
    with pytest.raises(VoiceError, match=r"cannot write .*narrator.safetensors \(disk full\)"):
        changed.save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["narrator.json", "narrator.safetensors"]
    assert torch.equal(Voice.load(path).codes, voice.codes)


# ── docs/TROUBLESHOOTING.md ───────────────────────────────────────────────────────────────────────────────────────
HEADER = """# Troubleshooting: every bad input and what fishs2 says

Each row is a test in `tests/test_bad_inputs.py` (run on the tiny checkpoint, so sizes such as "context holds
4096" are the tiny model's; S2 Pro holds 32768). Errors are `fishs2.errors` classes, all subclasses of
`FishS2Error`; the message names the input and the fix. Rows marked *accepted* are normalisations we do on
purpose. Regenerate with `python -m tests.test_bad_inputs > docs/TROUBLESHOOTING.md`.

## Policies

- **Typed special tokens** (`<|im_end|>`, `<|voice|>`, `<|semantic:N|>`, …) in text or transcripts are plain
  text: the engine tokenizes them literally (`Tokenizer.encode_literal`), so they can never end a message or
  inject audio tokens; the script parser additionally escapes `<|` with U+200B. `<|speaker:N|>` is the one label
  the engine reads: it picks voice N.
- **Tags** `[...]` must be balanced, non-empty, on one line and not nested; a turn must hold words besides tags.
- **Text normalisation**: `\\r\\n`/`\\r` → `\\n`, tabs → spaces; other control characters and lone surrogates are
  errors naming line and column. Tokenization applies NFC, as the official tokenizer does.
- **Seeds**: `None` draws one (reported in `result.seed`); negative seeds use their absolute value; seeds are
  folded modulo 2⁶³; any integer type (numpy included) is accepted; takes use seed … seed+takes−1.
- **Reference audio**: 1 s … 120 s (10–30 s is best; a warning above 30 s); mono-mixed, resampled to 44.1 kHz,
  integer PCM scaled; silent, DC-only, clipped, non-finite or out-of-range float samples are refused.
  A WAV whose data chunk is cut short is refused (the transcript would no longer match).
- **Codes**: values the model cannot emit are refused by `FishS2.decode`; values the model can emit but the
  codec's residual codebooks do not hold (fast-AR vocabulary 4096 vs 1024) are clamped, as the official decoder does.
- **Checkpoints** are read as data only: safetensors, `torch.load(weights_only=True)` for `codec.pth` (a pickle
  with code is refused and never executed), JSON. With `models_root` (the node pack passes its model folders),
  a checkpoint folder whose real path leaves the roots — a symlink pointing elsewhere, a `..` path — is refused;
  symlinked *files* inside a checkpoint folder (e.g. into the Hugging Face cache) are followed. The CLI and
  Python API pass no root: a path you type yourself is used as given.
- **Voices** are `.safetensors` + `.json` (data only). `.pt`/`.pth`/`.pkl`/… voice files are refused unopened.
  Saving writes a temporary file, fsyncs it and renames it, so a crash leaves the old voice or the new one.
- **Out of memory** on the GPU is caught at the model boundary (`FishS2.stream`, `decode`, `encode_voice`,
  loading): the failed call's tensors and the allocator cache are freed, the model stays usable, and
  `OutOfMemoryError` names the setting to lower.
- **Cancelling** (an exception from `on_frame`, e.g. ComfyUI's interrupt) closes the generation at once; the
  model keeps no per-request state, so the next run with the same seed equals a fresh one.

## The matrix

| id | area | input | result | message |
|---|---|---|---|---|
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(ctx: Ctx) -> str:
    lines = [HEADER.rstrip("\n")]
    for row in ROWS:
        if row.error is None:
            try:
                row.call(ctx)
                result, message = "accepted", row.outcome
            except pytest.skip.Exception:
                result, message = "accepted", row.outcome + " (not checked here: no MP3 support)"
        else:
            try:
                row.call(ctx)
                raise AssertionError(f"{row.id}: no error")
            except row.error as exc:
                result = f"`{type(exc).__name__}`"
                message = str(exc).replace(str(ctx.tmp), "<dir>").replace(str(Path.cwd()), ".")
        lines.append(f"| `{row.id}` | {row.area} | {_cell(row.input)} | {result} | {_cell(message)} |")
        ctx.monkeypatch.undo()
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m tests.test_bad_inputs > docs/TROUBLESHOOTING.md
    import logging
    import tempfile

    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        tts = FishS2.from_pretrained(copy_tiny_checkpoint(base / "tiny"), device="cpu", dtype="fp32")
        voice = tts.encode_voice(REFERENCE_WAV, "This is the reference voice.", name="ref")
        mp = pytest.MonkeyPatch()
        try:
            sys.stdout.write(render(Ctx(tts, voice, base / "rows", mp)))
        finally:
            mp.undo()
