"""Reading reference audio files and preparing samples for the codec (mono, float32, 44.1 kHz)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from fishs2.audio import audio_stats, load_audio, prepare_reference
from fishs2.errors import AudioError


def sine(seconds: float, rate: int, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    """[L, C] float32 sine, each channel at a different amplitude."""
    t = np.arange(int(seconds * rate)) / rate
    wave = np.sin(2 * math.pi * freq * t)
    return np.stack([wave * 0.5 / (c + 1) for c in range(channels)], axis=1).astype(np.float32)


@pytest.mark.parametrize("suffix, subtype, atol", [(".wav", "FLOAT", 0.0), (".flac", "PCM_16", 1 / 32768)])
def test_load_wav_and_flac(tmp_path: Path, suffix: str, subtype: str, atol: float):
    data = sine(0.5, 22050, channels=2)
    path = tmp_path / f"clip{suffix}"
    soundfile.write(path, data, 22050, subtype=subtype)
    waveform, rate = load_audio(path)
    assert rate == 22050 and waveform.dtype == torch.float32
    assert waveform.shape == (2, len(data))  # channels first
    torch.testing.assert_close(waveform, torch.from_numpy(data.T.copy()), atol=atol, rtol=0)


def test_load_mp3_when_supported(tmp_path: Path):
    if "MP3" not in soundfile.available_formats():
        pytest.skip("this libsndfile has no MP3 support")
    path = tmp_path / "clip.mp3"
    soundfile.write(path, sine(1.0, 44100), 44100, format="MP3")
    waveform, rate = load_audio(path)
    assert rate == 44100 and waveform.shape[0] == 1 and waveform.shape[1] > 40000
    assert 0.3 < float(waveform.abs().max()) < 0.7


def test_load_errors(tmp_path: Path, monkeypatch):
    with pytest.raises(AudioError, match="not found"):
        load_audio(tmp_path / "missing.wav")
    text = tmp_path / "notes.wav"
    text.write_text("definitely not audio")
    monkeypatch.setattr("shutil.which", lambda name: None)  # behave as if ffmpeg were not installed
    with pytest.raises(AudioError, match="not a readable audio file"):
        load_audio(text)
    m4a = tmp_path / "voice.m4a"
    m4a.write_bytes(b"\x00\x00\x00\x18ftypM4A " + bytes(64))
    with pytest.raises(AudioError, match="install ffmpeg"):
        load_audio(m4a)
    truncated = tmp_path / "truncated.flac"
    soundfile.write(truncated, sine(0.5, 16000), 16000)
    truncated.write_bytes(truncated.read_bytes()[:30])
    with pytest.raises(AudioError, match="truncated.flac"):
        load_audio(truncated)


@pytest.mark.parametrize("rate", [8000, 16000, 48000])
def test_resample_to_44k(rate: int):
    mono = prepare_reference(torch.from_numpy(sine(1.0, rate)[:, 0]), rate)
    assert mono.dtype == torch.float32 and mono.dim() == 1
    assert mono.shape[0] == 44100  # 1 s stays 1 s
    assert abs(float(mono.abs().max()) - 0.5) < 0.02


def test_44k_passes_through_unchanged():
    data = torch.from_numpy(sine(0.2, 44100)[:, 0])
    assert torch.equal(prepare_reference(data, 44100), data)


def test_channels_are_averaged_and_batch_of_one_accepted():
    data = torch.from_numpy(sine(0.2, 44100, channels=2).T.copy())  # [2, L], amplitudes 0.5 and 0.25
    expected = (data[0] + data[1]) / 2
    torch.testing.assert_close(prepare_reference(data, 44100), expected)
    torch.testing.assert_close(prepare_reference(data[None].numpy(), 44100), expected)
    with pytest.raises(AudioError, match="batch of 2"):
        prepare_reference(torch.stack([data, data]), 44100)


def test_integer_pcm_is_scaled():
    ints = np.array([[0, 16384, -32768, 32767]], dtype=np.int16)
    np.testing.assert_allclose(prepare_reference(ints, 44100).numpy(), [0, 0.5, -1, 32767 / 32768])
    int32 = torch.tensor([2**30, -(2**31)], dtype=torch.int32)
    np.testing.assert_allclose(prepare_reference(int32, 44100).numpy(), [0.5, -1.0])
    as_f64 = prepare_reference(np.array([0.25, -0.5], dtype=np.float64), 44100)
    assert as_f64.dtype == torch.float32 and as_f64.tolist() == [0.25, -0.5]


@pytest.mark.parametrize(
    "waveform, rate, match",
    [
        (torch.tensor([0.0, float("nan"), 0.1]), 44100, "NaN"),
        (torch.tensor([0.0, float("inf")]), 44100, "NaN or infinite"),
        (torch.zeros(0), 44100, "empty"),
        (torch.zeros(2, 0), 44100, "empty"),
        (torch.zeros(1000, 2), 44100, "channels first"),
        (torch.zeros(1, 1, 1, 10), 44100, "expected"),
        (torch.zeros(10), 0, "sample_rate"),
        (torch.zeros(10), 22050.5, "sample_rate"),
        (np.array(["a", "b"]), 44100, "dtype"),
        ([0.1, 0.2], 44100, "numpy array or torch tensor"),
    ],
)
def test_prepare_reference_errors(waveform, rate, match: str):
    with pytest.raises(AudioError, match=match):
        prepare_reference(waveform, rate)


def test_audio_stats():
    x = torch.cat([torch.full((44100,), 0.1), torch.ones(441)])
    stats = audio_stats(x)
    assert stats.duration == pytest.approx(44541 / 44100)
    assert stats.peak == 1.0
    assert stats.dc == pytest.approx(float(x.mean()))
    assert stats.rms == pytest.approx(float((x - x.mean()).pow(2).mean().sqrt()), rel=1e-5)
    assert stats.clipped_fraction == pytest.approx(441 / 44541)
    silent = audio_stats(torch.zeros(100), sample_rate=100)
    assert (silent.peak, silent.rms, silent.duration) == (0.0, 0.0, 1.0)
