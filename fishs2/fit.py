"""Fit audio to a video: output sample rate, exact length, loudness.

* **Sample rate**: 44100 Hz is the codec's native rate; 48000 Hz (the usual video rate) is made with torchaudio's
  windowed-sinc resampler (`torchaudio.functional.resample`, default settings), whose output has
  ceil(T · new / old) samples.
* **Length** (padding with silence or trimming, always at the end): to `duration` seconds gives
  `round_half_up(duration × sample_rate)` samples; to `frame_count` video frames at `fps` gives exactly
  `round_half_up(frame_count × sample_rate / fps)` samples — computed with exact fractions, halves rounded up
  (e.g. 100 frames at 30000/1001 fps and 48 kHz → 160160 samples; 1 frame at 24 fps and 44.1 kHz → 1837.5 → 1838).
* **Loudness**: integrated loudness per ITU-R BS.1770-4 (K-weighting, 400 ms blocks with 75 % overlap, absolute
  gate −70 LUFS and relative gate −10 LU), measured with `pyloudnorm`, then one gain brings it to the target
  (e.g. −16 LUFS for online video / podcasts, −23 LUFS for EBU R128 broadcast). The gain can be measured on a
  `reference` (the mix) and applied to other tracks (its stems), so they keep adding up to the mix. Silent audio is
  left unchanged (its loudness is −∞); a gain that would push a sample past `max_peak` is lowered to fit and
  reported.

Order: resample → pad / trim → loudness (the loudness of what is output). A `Timeline` passed along is
resampled and fitted the same way (`Timeline.resample`, `Timeline.fit`), so subtitle times stay right.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

import torch

from .errors import AudioError, ParameterError
from .timeline import Timeline, parse_fps, round_half_up, seconds_to_samples

NATIVE_RATE = 44100
VIDEO_RATE = 48000
MIN_LOUDNESS_SECONDS = 0.4  # one BS.1770 gating block
MAX_FIT_SECONDS = 4 * 3600  # a longer target would need gigabytes per channel (4 h at 48 kHz: 2.8 GB as float32)

__all__ = [
    "NATIVE_RATE",
    "VIDEO_RATE",
    "target_length",
    "resample",
    "pad_or_trim",
    "integrated_loudness",
    "normalize_loudness",
    "LoudnessReport",
    "FitResult",
    "fit_audio",
]


def target_length(sample_rate: int, *, duration=None, frame_count=None, fps=None) -> int | None:
    """Samples for `duration` seconds, or for `frame_count` frames at `fps` (see the module doc for the rounding);
    None when neither is given. Raises ParameterError naming the input that is wrong."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
        raise ParameterError(f"sample_rate: must be a positive integer, got {sample_rate!r}.")
    if duration is not None and frame_count is not None:
        raise ParameterError("duration: give either a duration or a frame count, not both.")
    if duration is not None:
        return _checked_length(seconds_to_samples(duration, sample_rate, "duration"), sample_rate,
                               f"duration={duration!r} s")
    if frame_count is not None:
        if isinstance(frame_count, bool) or not isinstance(frame_count, int) or frame_count < 0:
            raise ParameterError(f"frame_count: must be an integer ≥ 0, got {frame_count!r}.")
        if fps is None:
            raise ParameterError("fps: is needed to turn frame_count into a length.")
        samples = round_half_up(Fraction(frame_count) * sample_rate / parse_fps(fps))
        return _checked_length(samples, sample_rate, f"frame_count={frame_count} at fps {fps!r}")
    return None


def _checked_length(samples: int, sample_rate: int, what: str) -> int:
    """A target length of at least one sample and at most MAX_FIT_SECONDS, else ParameterError naming `what`."""
    if samples < 1:
        raise ParameterError(f"{what}: is no audio at all (0 samples); give a length above zero.")
    if samples > MAX_FIT_SECONDS * sample_rate:
        raise ParameterError(f"{what}: is {samples / sample_rate / 3600:.1f} h of audio; at most "
                             f"{MAX_FIT_SECONDS // 3600} h can be fitted at once — fit a long programme in parts.")
    return samples


def _as_3d(waveform: torch.Tensor, input_name: str) -> torch.Tensor:
    if not isinstance(waveform, torch.Tensor) or not waveform.is_floating_point():
        raise AudioError(f"{input_name}: expected a float tensor of samples.")
    if waveform.dim() == 1:
        waveform = waveform[None, None]
    elif waveform.dim() == 2:
        waveform = waveform[None]
    if waveform.dim() != 3:
        raise AudioError(f"{input_name}: expected [samples], [channels, samples] or [batch, channels, samples], "
                         f"got {list(waveform.shape)}.")
    return waveform


def resample(waveform: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """torchaudio's default resampler over the last axis; the same tensor when the rates are equal."""
    if orig_rate == new_rate:
        return waveform
    import torchaudio

    return torchaudio.functional.resample(waveform.float(), orig_freq=int(orig_rate), new_freq=int(new_rate))


def pad_or_trim(waveform: torch.Tensor, length: int) -> torch.Tensor:
    """Exactly `length` samples on the last axis: silence appended, or the end cut off."""
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise ParameterError(f"length: must be an integer ≥ 0, got {length!r}.")
    have = waveform.shape[-1]
    if have >= length:
        return waveform[..., :length]
    return torch.nn.functional.pad(waveform, (0, length - have))


def integrated_loudness(waveform: torch.Tensor, sample_rate: int, input_name: str = "audio") -> float:
    """BS.1770-4 integrated loudness (LUFS) of one clip [samples] or [channels, samples]; −inf for silence."""
    import numpy as np
    import pyloudnorm

    x = waveform.detach().cpu().double()
    if x.dim() == 1:
        x = x[None]
    if x.dim() != 2:
        raise AudioError(f"{input_name}: expected [samples] or [channels, samples], got {list(waveform.shape)}.")
    if not bool(torch.isfinite(x).all()):
        raise AudioError(f"{input_name}: contains NaN or infinite samples.")
    seconds = x.shape[-1] / sample_rate
    if seconds < MIN_LOUDNESS_SECONDS:
        raise AudioError(
            f"{input_name}: is {seconds:.3f} s long; loudness (ITU-R BS.1770) needs at least "
            f"{MIN_LOUDNESS_SECONDS} s of audio. Turn loudness normalisation off for clips this short."
        )
    data = np.ascontiguousarray(x.numpy().T)  # [samples, channels]
    if data.shape[1] == 1:
        data = data[:, 0]
    with np.errstate(divide="ignore"):
        return float(pyloudnorm.Meter(sample_rate).integrated_loudness(data))


@dataclass(frozen=True)
class LoudnessReport:
    """Per batch item: the loudness measured (LUFS, on the reference when one was given), the gain applied (dB),
    and whether the gain was lowered to keep the peak at `max_peak`."""

    target_lufs: float
    measured_lufs: tuple[float, ...]
    gain_db: tuple[float, ...]
    limited: tuple[bool, ...]
    warnings: tuple[str, ...] = ()


def normalize_loudness(
    waveform: torch.Tensor,
    sample_rate: int,
    target_lufs: float,
    *,
    reference: torch.Tensor | None = None,
    reference_rate: int | None = None,
    max_peak: float | None = 1.0,
    input_name: str = "audio",
) -> tuple[torch.Tensor, LoudnessReport]:
    """Scale each batch item of `waveform` ([T], [C, T] or [B, C, T]) to `target_lufs`.

    With `reference` (one clip, e.g. the mix) the gain is measured on it and the same gain goes to every item
    (e.g. the stems), so sums are preserved. `max_peak` (None = no limit) lowers a gain that would push the
    largest |sample| above it: per item, or with a reference once for all, by the largest peak of the reference
    and the items, so that the items still add up to the reference.
    """
    target = float(target_lufs)
    if not math.isfinite(target) or not -70.0 <= target <= 0.0:
        raise ParameterError(f"target_lufs: must be between -70 and 0 LUFS, got {target_lufs!r}.")
    shape = waveform.shape
    x = _as_3d(waveform, input_name)
    if reference is not None:
        ref = _as_3d(reference, "loudness_reference")
        if ref.shape[0] != 1:
            raise AudioError(f"loudness_reference: must be one clip, got a batch of {ref.shape[0]}.")
        level = integrated_loudness(ref[0], reference_rate or sample_rate, "loudness_reference")
        measured = [level] * x.shape[0]
        if math.isfinite(level):
            return _one_gain(x, shape, target, level, max(_peak(ref), _peak(x)), max_peak)
    else:
        measured = [integrated_loudness(item, sample_rate, input_name if x.shape[0] == 1 else f"{input_name} item {i}")
                    for i, item in enumerate(x)]
    out, gains, limited, warnings = [], [], [], []
    for i, (item, level) in enumerate(zip(x, measured)):
        label = input_name if x.shape[0] == 1 else f"{input_name} item {i}"
        if not math.isfinite(level):
            warnings.append(f"{label}: is silent; its loudness was left unchanged.")
            out.append(item)
            gains.append(0.0)
            limited.append(False)
            continue
        gain_db = target - level
        peak = float(item.abs().max()) if item.numel() else 0.0
        was_limited = False
        if max_peak is not None and peak > 0 and peak * 10 ** (gain_db / 20) > max_peak:
            gain_db = 20 * math.log10(max_peak / peak)
            was_limited = True
            warnings.append(
                f"{label}: reaching {target:g} LUFS would push the peak past {max_peak:g}; the gain was lowered to "
                f"{gain_db:+.2f} dB (about {level + gain_db:.1f} LUFS)."
            )
        out.append(item * float(10 ** (gain_db / 20)))
        gains.append(gain_db)
        limited.append(was_limited)
    result = torch.stack(out).reshape(shape)
    return result, LoudnessReport(target, tuple(measured), tuple(gains), tuple(limited), tuple(warnings))


def _peak(x: torch.Tensor) -> float:
    return float(x.abs().max()) if x.numel() else 0.0


def _one_gain(x: torch.Tensor, shape, target: float, level: float, peak: float,
              max_peak: float | None) -> tuple[torch.Tensor, LoudnessReport]:
    """Every item of x [B, C, T] scaled by the gain that brings a reference measured at `level` LUFS to `target`,
    lowered if needed so that `peak` (the largest of the reference's and the items') stays at `max_peak`."""
    gain_db, warnings = target - level, ()
    limited = max_peak is not None and peak > 0 and peak * 10 ** (gain_db / 20) > max_peak
    if limited:
        gain_db = 20 * math.log10(max_peak / peak)
        warnings = (f"loudness_reference: reaching {target:g} LUFS would push a peak past {max_peak:g}; the gain "
                    f"was lowered to {gain_db:+.2f} dB for every item (the reference: about {level + gain_db:.1f} "
                    "LUFS), so that they still add up to it.",)
    n = x.shape[0]
    result = (x * float(10 ** (gain_db / 20))).reshape(shape)
    return result, LoudnessReport(target, (level,) * n, (gain_db,) * n, (limited,) * n, warnings)


@dataclass(frozen=True)
class FitResult:
    waveform: torch.Tensor  # float32 [B, C, T]
    sample_rate: int
    timeline: Timeline | None = None
    loudness: LoudnessReport | None = None
    warnings: tuple[str, ...] = field(default=())


def fit_audio(
    waveform: torch.Tensor,
    sample_rate: int,
    *,
    output_rate: int | None = None,
    duration=None,
    frame_count: int | None = None,
    fps=None,
    target_lufs: float | None = None,
    reference: torch.Tensor | None = None,
    reference_rate: int | None = None,
    max_peak: float | None = 1.0,
    timeline: Timeline | None = None,
    input_name: str = "audio",
) -> FitResult:
    """Resample to `output_rate`, pad / trim to `duration` or `frame_count` at `fps`, normalise loudness to
    `target_lufs` (None = off), in that order. `waveform` is [T], [C, T] or [B, C, T]; the result is
    float32 [B, C, T]. `reference` (measured for the loudness gain) goes through the same resampling and length
    fitting first. `timeline` (of `waveform`, at `sample_rate`) comes back fitted the same way."""
    x = _as_3d(waveform, input_name).float()
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
        raise ParameterError(f"sample_rate: must be a positive integer, got {sample_rate!r}.")
    rate = sample_rate if output_rate is None else int(output_rate)
    if rate <= 0:
        raise ParameterError(f"output_rate: must be a positive integer, got {output_rate!r}.")
    if timeline is not None and timeline.sample_rate != sample_rate:
        raise ParameterError(
            f"timeline: is at {timeline.sample_rate} Hz but the audio at {sample_rate} Hz; pass the timeline of this audio."
        )
    if timeline is not None and timeline.total_samples != x.shape[-1]:
        raise ParameterError(
            f"timeline: describes {timeline.total_samples} samples but the audio has {x.shape[-1]}; pass the "
            "timeline that came with this audio."
        )
    x = resample(x, sample_rate, rate)
    ref = None
    if reference is not None:
        ref = _as_3d(reference, "loudness_reference").float()
        ref = resample(ref, reference_rate or sample_rate, rate)
    if timeline is not None:
        timeline = timeline.resample(rate)
        if timeline.total_samples != x.shape[-1]:  # cannot happen with torchaudio's length rule; guard anyway
            timeline = timeline.fit(x.shape[-1])
    length = target_length(rate, duration=duration, frame_count=frame_count, fps=fps)
    if length is not None:
        x = pad_or_trim(x, length)
        if ref is not None:
            ref = pad_or_trim(ref, length)
        if timeline is not None:
            timeline = timeline.fit(length)
    report = None
    warnings: list[str] = list(timeline.warnings) if timeline is not None else []
    if target_lufs is not None:
        x, report = normalize_loudness(x, rate, target_lufs, reference=ref, max_peak=max_peak, input_name=input_name)
        warnings += report.warnings
    return FitResult(x.contiguous(), rate, timeline, report, tuple(dict.fromkeys(warnings)))
