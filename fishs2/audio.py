"""Reading reference audio and turning it into what the codec expects: mono float32 at 44.1 kHz (spec §7.8)."""

from __future__ import annotations

import logging
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio

from .errors import AudioError

CODEC_SAMPLE_RATE = 44100
MIN_RATE, LOW_RATE, MAX_RATE = 4000, 16000, 768000

log = logging.getLogger(__name__)

# Containers libsndfile cannot read; they need ffmpeg.
_FFMPEG_ONLY = {".m4a", ".mp4", ".aac", ".opus", ".webm", ".wma", ".mkv", ".mov", ".amr", ".ac3"}


def load_audio(path: str | Path) -> tuple[torch.Tensor, int]:
    """Read an audio file → (waveform float32 [C, L] in [−1, 1], sample_rate).

    wav / flac / ogg / mp3 / aiff … are read with soundfile; anything else (m4a, opus, …) with the
    `ffmpeg` program when it is installed. Raises AudioError for a missing, unreadable or
    non-audio file.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"audio file not found: {path}; check the path (a folder or a missing file was given)")
    try:
        data, sample_rate = soundfile.read(str(path), dtype="float32", always_2d=True)  # [L, C]
    except (RuntimeError, TypeError, ValueError) as e:  # LibsndfileError is a RuntimeError
        data, sample_rate = _read_with_ffmpeg(path, e)
    else:
        _check_wav_complete(path)
    if data.size == 0:
        raise AudioError(f"audio file {path} holds no samples; export the recording again")
    return torch.from_numpy(np.ascontiguousarray(data.T)), int(sample_rate)


def audio_seconds(path: str | Path) -> float | None:
    """How long an audio file is, from its header alone (no samples read), or None when soundfile cannot tell."""
    try:
        info = soundfile.info(str(path))
    except (RuntimeError, TypeError, ValueError):
        return None
    return info.frames / info.samplerate if info.samplerate > 0 and info.frames > 0 else None


def _check_wav_complete(path: Path) -> None:
    """AudioError if a RIFF/WAVE file's data chunk announces more bytes than the file holds (a cut-off copy or
    download): libsndfile would silently return the part that is there, and the transcript would no longer match."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return
            size = path.stat().st_size
            while True:
                chunk = f.read(8)
                if len(chunk) < 8:
                    return
                chunk_id, length = chunk[:4], struct.unpack("<I", chunk[4:])[0]
                if chunk_id == b"data":
                    # 0 and 0xFFFFFFFF mark streams written without knowing their length; trust the file then.
                    if length not in (0, 0xFFFFFFFF) and f.tell() + length > size:
                        have = max(0, size - f.tell())
                        raise AudioError(
                            f"audio file {path} is truncated: its header announces {length} bytes of samples but "
                            f"only {have} are there ({have / length:.0%}); copy or export the file again"
                        )
                    return
                f.seek(length + (length & 1), 1)
    except OSError:
        return


def _read_with_ffmpeg(path: Path, soundfile_error: Exception) -> tuple[np.ndarray, int]:
    """Decode with the ffmpeg program into a temporary float WAV; AudioError if that is impossible."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        suffix = path.suffix.lower()
        if suffix in _FFMPEG_ONLY or (suffix == ".mp3" and "MP3" not in soundfile.available_formats()):
            raise AudioError(
                f"cannot decode {path}: {path.suffix} needs ffmpeg; install ffmpeg "
                "(e.g. `apt install ffmpeg`) or convert the file to wav/flac"
            ) from soundfile_error
        raise AudioError(
            f"cannot read {path}: not a readable audio file ({soundfile_error}); use wav, flac, ogg or mp3, "
            "or install ffmpeg for other formats"
        ) from soundfile_error
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "decoded.wav"
        cmd = [ffmpeg, "-nostdin", "-v", "error", "-i", str(path), "-vn", "-c:a", "pcm_f32le", str(wav)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0 or not wav.is_file():
            raise AudioError(
                f"cannot read {path}: not a readable audio file (ffmpeg: {result.stderr.strip()[-300:]})"
            ) from soundfile_error
        data, sample_rate = soundfile.read(str(wav), dtype="float32", always_2d=True)
    return data, sample_rate


def prepare_reference(waveform: torch.Tensor | np.ndarray, sample_rate: int) -> torch.Tensor:
    """Samples → mono float32 [L] at 44.1 kHz, as the official reference path does.

    `waveform` is [L], [C, L] or [1, C, L] (channels first), numpy or torch, float or integer PCM
    (int16 / int32 scaled to [−1, 1], uint8 centred at 128). Channels are averaged, then the audio is
    resampled with torchaudio's default windowed-sinc resampler when `sample_rate` is not 44100.
    Raises AudioError for empty, non-finite or malformed input.
    """
    x = _to_float_tensor(waveform)
    if x.dim() == 3:
        if x.shape[0] != 1:
            raise AudioError(
                f"reference audio: got a batch of {x.shape[0]} clips {list(x.shape)}; pass one clip [C, L]"
            )
        x = x[0]
    if x.dim() == 1:
        x = x[None]
    if x.dim() != 2:
        raise AudioError(f"reference audio: expected [L], [C, L] or [1, C, L], got {list(x.shape)}; pass one clip")
    if x.numel() == 0:
        raise AudioError(f"reference audio: is empty {list(x.shape)}; pass a clip of 10–30 s of speech")
    if x.shape[0] > x.shape[1]:
        raise AudioError(
            f"reference audio: shape {list(x.shape)} has more channels than samples; "
            "pass channels first ([C, L]), e.g. transpose soundfile's [L, C] output"
        )
    if not bool(torch.isfinite(x).all()):
        raise AudioError(
            "reference audio: contains NaN or infinite samples; the clip is damaged — export or record it again"
        )
    rate = _check_rate(sample_rate)
    if not MIN_RATE <= rate <= MAX_RATE:
        raise AudioError(
            f"sample_rate={rate}: not a rate audio is recorded at ({MIN_RATE} … {MAX_RATE} Hz); pass the clip's real "
            "sample rate"
        )
    if rate < LOW_RATE:
        log.warning("reference audio is sampled at %d Hz (telephone quality); cloning works better from 22 kHz or "
                    "more", rate)
    mono = x.mean(dim=0)  # [L]
    if rate != CODEC_SAMPLE_RATE:
        mono = torchaudio.functional.resample(mono, orig_freq=rate, new_freq=CODEC_SAMPLE_RATE)
    return mono.contiguous()


def _to_float_tensor(waveform: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Any numpy / torch sample array → float32 tensor with integer PCM scaled to [−1, 1]."""
    if isinstance(waveform, np.ndarray):
        if waveform.dtype == np.uint8:
            return torch.from_numpy((waveform.astype(np.float32) - 128.0) / 128.0)
        if waveform.dtype.kind in "iu":
            scale = float(2 ** (8 * waveform.dtype.itemsize - 1))
            return torch.from_numpy(waveform.astype(np.float64) / scale).float()
        if waveform.dtype.kind != "f":
            raise AudioError(f"reference audio: unsupported sample dtype {waveform.dtype}; pass float or integer PCM samples")
        return torch.from_numpy(np.ascontiguousarray(waveform)).float()
    if not isinstance(waveform, torch.Tensor):
        raise AudioError(
            f"reference audio: expected a numpy array or torch tensor, got {type(waveform).__name__}; "
            "pass samples as an array (or a file path to encode_voice)"
        )
    waveform = waveform.detach().cpu()
    if waveform.dtype == torch.uint8:
        return (waveform.float() - 128.0) / 128.0
    if waveform.dtype in (torch.int8, torch.int16, torch.int32, torch.int64):
        scale = float(2 ** (8 * waveform.element_size() - 1))
        return (waveform.double() / scale).float()
    if not waveform.is_floating_point():
        raise AudioError(f"reference audio: unsupported sample dtype {waveform.dtype}; pass float or integer PCM samples")
    return waveform.float()


def _check_rate(sample_rate: int | float) -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, float, np.integer, np.floating)):
        raise AudioError(f"sample_rate must be a positive integer (Hz, e.g. 44100), got {sample_rate!r}")
    if not np.isfinite(sample_rate) or sample_rate <= 0 or int(sample_rate) != sample_rate:
        raise AudioError(f"sample_rate must be a positive integer (Hz, e.g. 44100), got {sample_rate!r}")
    return int(sample_rate)


@dataclass(frozen=True)
class AudioStats:
    """Level statistics of a clip, for callers deciding whether it is usable."""

    peak: float  # max |x|
    rms: float  # root mean square around the mean (the DC offset removed)
    dc: float  # mean
    duration: float  # seconds
    clipped_fraction: float  # share of samples with |x| ≥ clip_level


def audio_stats(waveform: torch.Tensor, sample_rate: int = CODEC_SAMPLE_RATE, clip_level: float = 0.999) -> AudioStats:
    """Peak, RMS, DC offset, duration and clipped share of a mono clip [L] (or any shape, flattened)."""
    x = waveform.detach().float().flatten()
    if x.numel() == 0:
        raise AudioError("reference audio: is empty")
    dc = float(x.mean())
    return AudioStats(
        peak=float(x.abs().max()),
        rms=float((x - dc).pow(2).mean().sqrt()),
        dc=dc,
        duration=x.numel() / _check_rate(sample_rate),
        clipped_fraction=float((x.abs() >= clip_level).float().mean()),
    )
