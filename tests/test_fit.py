"""Fit to video: exact sample counts for a duration or frame count at an fps, 48 kHz resampling with the timeline
kept in step, and loudness within ± 0.5 LU of the target (checked against BS.1770 reference values)."""

from __future__ import annotations

import math

import pytest
import torch

from fishs2.errors import AudioError, ParameterError
from fishs2.fit import fit_audio, integrated_loudness, normalize_loudness, pad_or_trim, target_length
from fishs2.generate import Segment
from fishs2.script import Turn
from fishs2.timeline import build_timeline

from .comfyui import creator
from .comfyui.harness import run

SR = 44100


def sine(amplitude: float, seconds: float, rate: int = SR, freq: float = 997.0) -> torch.Tensor:
    t = torch.arange(int(seconds * rate), dtype=torch.float64) / rate
    return (amplitude * torch.sin(2 * math.pi * freq * t)).float()


def speechlike(seconds: float, rate: int = SR, seed: int = 0) -> torch.Tensor:
    """Harmonics with syllable-rate amplitude modulation and pauses, plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * rate), dtype=torch.float64) / rate
    f0 = 140 + 25 * torch.sin(2 * math.pi * 2.5 * t)
    phase = 2 * math.pi * torch.cumsum(f0, 0) / rate
    x = sum(torch.sin(k * phase) / k for k in range(1, 10))
    envelope = torch.sin(2 * math.pi * 3 * t).clamp(min=0) * (torch.sin(2 * math.pi * 0.4 * t) > -0.5)
    return (0.2 * x * envelope + 0.002 * torch.randn(t.shape, generator=g, dtype=torch.float64)).float()


# ── length ─────────────────────────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    "frames, fps, rate, expected",
    [
        (240, 24, 48000, 480000),  # 10 s
        (100, "30000/1001", 48000, 160160),  # NTSC: 100 × 48000 × 1001 / 30000 exactly
        (1, 24, 44100, 1838),  # 1837.5 → halves round up
        (7, 29.97, 44100, 10300),  # 10300.30…
        (3, 25, 44100, 5292),  # 5292 exactly
    ],
)
def test_frame_count_gives_exact_sample_count(frames, fps, rate, expected):
    assert target_length(rate, frame_count=frames, fps=fps) == expected
    audio = torch.randn(1, 1, 7000)
    out = fit_audio(audio, SR, output_rate=rate, frame_count=frames, fps=fps)
    assert out.waveform.shape == (1, 1, expected) and out.sample_rate == rate


@pytest.mark.parametrize("length, message", [
    (dict(duration=0.0), r"duration=0.0 s: is no audio at all"),
    (dict(frame_count=0, fps=25), r"frame_count=0 at fps 25: is no audio at all"),
    (dict(duration=5 * 3600.0), r"is 5.0 h of audio; at most 4 h"),
    (dict(frame_count=10_000_000, fps=0.001), r"at most 4 h can be fitted at once"),
])
def test_empty_and_huge_targets_are_refused_before_any_allocation(length, message):
    """A target of no audio, or one that would need gigabytes, is a mistake named by its input, not a zero-sample
    file that a later node chokes on, or an allocation failure."""
    with pytest.raises(ParameterError, match=message):
        target_length(48000, **length)


def test_pad_appends_silence_and_trim_cuts_the_end():
    x = torch.arange(1, 11, dtype=torch.float32)[None, None]
    assert torch.equal(pad_or_trim(x, 4), x[..., :4])
    padded = pad_or_trim(x, 13)
    assert padded.shape[-1] == 13 and torch.equal(padded[..., :10], x) and torch.all(padded[..., 10:] == 0)
    assert fit_audio(x, 10, duration=0.55).waveform.shape[-1] == 6  # 5.5 → 6
    assert fit_audio(x, 10, duration=1.2).waveform.shape[-1] == 12


def test_length_errors_name_the_input():
    with pytest.raises(ParameterError, match="^fps: "):
        target_length(SR, frame_count=10)
    with pytest.raises(ParameterError, match="^fps: "):
        target_length(SR, frame_count=10, fps=0)
    with pytest.raises(ParameterError, match="^frame_count: "):
        target_length(SR, frame_count=-1, fps=24)
    with pytest.raises(ParameterError, match="^duration: "):
        target_length(SR, duration=-1)


def test_resampling_to_48k_keeps_the_timeline_on_the_audio():
    """Lines are bursts separated by exact silence; after resampling their onsets in the 48 kHz audio are where
    the resampled timeline says (± 1 ms)."""
    frames = [3, 2, 4]
    segments = [Segment(f"s{i}", [i], torch.zeros(10, n, dtype=torch.long), False) for i, n in enumerate(frames)]
    turns = [Turn(0, "a"), Turn(1, "b"), Turn(0, "c")]
    tl = build_timeline(segments, turns, ["A", "B"], gap=0.3, lead_in=0.1)
    audio = torch.zeros(tl.total_samples)
    for line in tl.lines:
        audio[line.start_sample : line.end_sample] = sine(0.5, 1.0, freq=440.0)[: line.end_sample - line.start_sample]
    out = fit_audio(audio, SR, output_rate=48000, timeline=tl, frame_count=48, fps=24)
    wave, fitted = out.waveform[0, 0], out.timeline
    assert out.sample_rate == fitted.sample_rate == 48000
    assert wave.shape[-1] == fitted.total_samples == 96000  # padded to 2 s
    loud = (wave.abs() > 0.05).nonzero().flatten()
    onsets = [int(loud[0])] + [int(b) for a, b in zip(loud[:-1], loud[1:]) if b - a > 480]
    assert len(onsets) == 3
    for onset, line in zip(onsets, fitted.lines):
        assert abs(onset - line.start_sample) <= 48
        assert abs(line.start_sample / 48000 - tl.lines[line.index].start_sample / SR) <= 1 / 48000


def test_trim_to_fewer_frames_flags_the_timeline():
    segments = [Segment(f"s{i}", [i], torch.zeros(10, 5, dtype=torch.long), False) for i in range(3)]
    tl = build_timeline(segments, [Turn(0, "a"), Turn(0, "b"), Turn(0, "c")], ["A"])
    out = fit_audio(torch.zeros(tl.total_samples), SR, timeline=tl, duration=0.4)
    assert out.waveform.shape[-1] == 17640
    assert [l.cut for l in out.timeline.lines] == ["", "end", "all"]
    assert any("past the trimmed end" in w for w in out.warnings)
    with pytest.raises(ParameterError, match="^timeline: describes"):
        fit_audio(torch.zeros(100), SR, timeline=tl)


# ── loudness ───────────────────────────────────────────────────────────────────────────────────────────────


def test_meter_matches_bs1770_reference_values():
    # BS.1770: a 997 Hz sine of amplitude A in one channel reads 20·log10(A) − 3.01 LUFS.
    for amplitude in (1.0, 0.1, 10 ** (-20 / 20)):
        expected = 20 * math.log10(amplitude) - 3.0103
        assert integrated_loudness(sine(amplitude, 3.0), SR) == pytest.approx(expected, abs=0.1)
    assert integrated_loudness(sine(0.1, 3.0, rate=48000), 48000) == pytest.approx(-23.01, abs=0.1)
    # Gating (EBU Tech 3341 case 3, shortened): -36 / -23 / -36 dBFS-LUFS tones for 1 / 6 / 1 s read -23 LUFS,
    # because the quiet parts fall under the relative gate; silence falls under the absolute gate.
    quiet = 10 ** ((-36 + 3.0103) / 20)
    loud = 10 ** ((-23 + 3.0103) / 20)
    gated = torch.cat([sine(quiet, 1.0), sine(loud, 6.0), sine(quiet, 1.0), torch.zeros(SR)])
    assert integrated_loudness(gated, SR) == pytest.approx(-23.0, abs=0.3)
    assert integrated_loudness(torch.zeros(SR), SR) == -math.inf


@pytest.mark.parametrize("target", [-16.0, -23.0, -30.0])
def test_normalised_sine_lands_on_target(target):
    out, report = normalize_loudness(sine(0.5, 2.0)[None], SR, target)
    peak = float(out.abs().max())
    assert 20 * math.log10(peak) - 3.0103 == pytest.approx(target, abs=0.5)  # reference formula, no meter
    assert integrated_loudness(out, SR) == pytest.approx(target, abs=0.5)
    assert report.gain_db[0] == pytest.approx(target - report.measured_lufs[0])


@pytest.mark.parametrize("rate", [44100, 48000])
def test_normalised_speechlike_signal_within_half_a_lu(rate):
    x = speechlike(4.0, rate)[None, None].repeat(2, 1, 1) * torch.tensor([1.0, 0.05])[:, None, None]
    out = fit_audio(x, rate, target_lufs=-16.0)
    for item in out.waveform:
        assert integrated_loudness(item, rate) == pytest.approx(-16.0, abs=0.5)


def test_shared_gain_keeps_stems_adding_up_to_the_mix():
    a, b = speechlike(3.0, seed=1), speechlike(3.0, seed=2) * 0.5
    a[SR:] = 0
    b[:SR] = 0
    stems, mix = torch.stack([a, b])[:, None], (a + b)[None, None]
    norm_mix = fit_audio(mix, SR, target_lufs=-20.0).waveform
    norm_stems = fit_audio(stems, SR, target_lufs=-20.0, reference=mix).waveform
    assert (norm_stems.sum(0) - norm_mix[0]).abs().max() <= 1e-6
    assert integrated_loudness(norm_mix[0], SR) == pytest.approx(-20.0, abs=0.5)


def test_stems_keep_adding_up_to_the_mix_when_the_peak_limit_lowers_the_gain():
    """At a loud target the limiter steps in: with a reference it lowers one gain for every item, so the stems
    still add up to the mix fitted the same way (per-stem limiting broke the sum by 0.17 at -5 LUFS)."""
    a, b = speechlike(3.0, seed=1), speechlike(3.0, seed=2) * 0.5
    a[SR:] = 0
    b[:SR] = 0
    stems, mix = torch.stack([a, b])[:, None], (a + b)[None, None]
    fitted_mix = fit_audio(stems.sum(0, keepdim=True), SR, target_lufs=-5.0, reference=mix)
    fitted_stems = fit_audio(stems, SR, target_lufs=-5.0, reference=mix)
    assert all(fitted_stems.loudness.limited) and len(set(fitted_stems.loudness.gain_db)) == 1
    assert (fitted_stems.waveform.sum(0) - fitted_mix.waveform[0]).abs().max() <= 1e-6
    assert fitted_stems.waveform.abs().max() <= 1.0 + 1e-6
    assert "for every item" in fitted_stems.loudness.warnings[0]


def test_silence_short_clips_and_peak_limit():
    out, report = normalize_loudness(torch.zeros(1, SR), SR, -16.0)
    assert torch.equal(out, torch.zeros(1, SR)) and "silent" in report.warnings[0]
    with pytest.raises(AudioError, match="^audio: is 0.200 s long"):
        normalize_loudness(torch.ones(1, SR // 5) * 0.1, SR, -16.0)
    spiky = sine(0.01, 2.0)
    spiky[1000] = 0.9
    out, report = normalize_loudness(spiky, SR, -10.0)
    assert report.limited == (True,) and float(out.abs().max()) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ParameterError, match="^target_lufs: "):
        normalize_loudness(spiky, SR, 5.0)


# ── node ───────────────────────────────────────────────────────────────────────────────────────────────────


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    with creator.folders(tmp_path_factory.mktemp("creator_fit")):
        yield creator.load()


FIT = dict(sample_rate="48000 (video)", length="images", duration_seconds=1.0, frame_count=1, fps=25.0,
           normalize_loudness=True, target_lufs=-16.0)


def test_fit_node_matches_an_image_batch_and_the_timeline(pack):
    segments = [Segment(f"s{i}", [i], torch.zeros(10, 4, dtype=torch.long), False) for i in range(2)]
    timeline_mod = pack.module("fishs2.timeline")
    gen_mod = pack.module("fishs2.generate")
    Turn_ = pack.module("fishs2.script").Turn
    tl = timeline_mod.build_timeline([gen_mod.Segment(s.text, s.turn_indices, s.codes, False) for s in segments],
                                     [Turn_(0, "a"), Turn_(1, "b")], ["A", "B"], gap=0.2)
    audio = {"waveform": speechlike(1 + tl.total_samples / SR)[None, None, : tl.total_samples], "sample_rate": SR}
    images = torch.zeros(30, 8, 8, 3)
    out = run(pack.nodes["FishS2FitAudio"], audio=audio, images=images, timeline=tl, **FIT)
    fitted, fitted_tl = out.outputs
    assert fitted["sample_rate"] == 48000 and fitted["waveform"].shape == (1, 1, 57600)  # 30 frames at 25 fps
    assert fitted_tl.sample_rate == 48000 and fitted_tl.total_samples == 57600
    errors = pack.module("fishs2.errors")
    with pytest.raises(errors.ParameterError, match="^images: "):
        run(pack.nodes["FishS2FitAudio"], audio=audio, **FIT)
    with pytest.raises(errors.AudioError, match="^audio: "):
        run(pack.nodes["FishS2FitAudio"], audio=torch.zeros(3), **{**FIT, "length": "keep"})
