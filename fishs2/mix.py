"""Assemble generated lines into one mix and per-speaker stems, with gaps and crossfades, plus their timeline.

The audio of every line is cut from ONE decode of all segments' codes (`FishS2.decode(generation.codes)`, the
same audio Codec Decode gives) at frame boundaries: the codec is causal, so line i's samples are exactly those
frames' samples of the whole decode, and with no gap and no crossfade the mix equals that decode sample for sample.
The lines are then placed by `fishs2.timeline.layout` (lead-in, gaps, crossfades) — the same function the
timeline uses, so the timeline's sample positions are where the lines are in the mix.

Stems: one track per speaker (in `Timeline.speaker_names` order), each holding that speaker's lines at their
places in the mix and silence (exact zeros) elsewhere; every stem has the mix's length, and the stems add up to
the mix (to float rounding, ≤ 1e-6). A line in which several speakers share one segment (generated with
`chunk_length` > 1 and several speakers in one batch) cannot be split; it goes to a stem of its own named after
those speakers ("Alice + Bob") and `MixResult.warnings` says so: generate with `chunk_length=1` to get one
segment per turn. Lines of turns without a speaker (text before the first label, or single-voice text) go to a
stem named "narrator" unless they belong to a named speaker.

See `fishs2.timeline` for the rules on text before the first label and the frame limit (kept, not dropped).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .errors import CodesError, ParameterError
from .script import Turn
from .timeline import FRAME_SAMPLES, SAMPLE_RATE, Placement, Timeline, build_timeline, layout

NARRATOR = "narrator"

__all__ = ["MixResult", "assemble", "mix_generation", "place_lines", "NARRATOR"]


@dataclass(frozen=True)
class MixResult:
    """`mix` float32 [1, T]; `stems` float32 [S, T] (one row per name in `stem_names`); the `timeline`."""

    mix: torch.Tensor
    stems: torch.Tensor
    stem_names: tuple[str, ...]
    timeline: Timeline
    sample_rate: int
    warnings: tuple[str, ...] = ()


def _ramp(n: int, rising: bool) -> torch.Tensor:
    """Linear fade of n samples, evaluated at sample centres: (k + ½)/n rising, its mirror falling; a rising and
    a falling ramp of the same length add up to exactly 1 at every sample."""
    ramp = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    return ramp if rising else 1.0 - ramp


def place_lines(pieces: Sequence[torch.Tensor], place: Placement, groups: Sequence[int], n_groups: int) -> torch.Tensor:
    """Put each piece [C, n] (faded per `place`) at its start in the track of its group → float32 [G, C, T]."""
    channels = pieces[0].shape[0] if pieces else 1
    tracks = torch.zeros(n_groups, channels, place.total, dtype=torch.float32)
    for piece, start, fade_in, fade_out, group in zip(pieces, place.starts, place.fade_in, place.fade_out, groups):
        piece = piece.to(torch.float32).clone()
        n = piece.shape[-1]
        if fade_in:
            piece[..., :fade_in] *= _ramp(fade_in, rising=True).float()
        if fade_out:
            piece[..., n - fade_out :] *= _ramp(fade_out, rising=False).float()
        tracks[group, :, start : start + n] += piece
    return tracks


def assemble(
    audio: torch.Tensor,
    frames: Sequence[int],
    timeline: Timeline,
    *,
    gap: float = 0.0,
    crossfade: float = 0.0,
    lead_in: float = 0.0,
    frame_samples: int = FRAME_SAMPLES,
) -> MixResult:
    """Cut `audio` ([T] or [1, T], the decode of all segments, `sum(frames) × frame_samples` samples) into the
    lines of `frames` frames each and lay them out with `gap` / `crossfade` / `lead_in` (see
    `fishs2.timeline.layout`). `timeline` gives the speakers; it must have been built with the same options
    (`build_timeline(..., gap=, crossfade=, lead_in=)`), which is checked.
    """
    if not isinstance(audio, torch.Tensor) or not audio.is_floating_point():
        raise ParameterError("audio: expected a float tensor of samples.")
    if audio.dim() == 1:
        audio = audio[None]
    if audio.dim() != 2 or audio.shape[0] != 1:
        raise ParameterError(f"audio: expected mono [samples] or [1, samples], got {list(audio.shape)}.")
    frames = [int(f) for f in frames]
    expected = sum(frames) * frame_samples
    if audio.shape[-1] != expected:
        raise CodesError(
            f"audio: holds {audio.shape[-1]} samples but the segments' {sum(frames)} frames make {expected}; "
            "decode all segments' codes together (Generation.codes)."
        )
    if len(timeline.lines) != len(frames):
        raise ParameterError(f"timeline: has {len(timeline.lines)} lines for {len(frames)} segments.")
    sample_rate = timeline.sample_rate
    place = layout([f * frame_samples for f in frames], sample_rate, gap=gap, crossfade=crossfade, lead_in=lead_in)
    if tuple(l.start_sample for l in timeline.lines) != place.starts or timeline.total_samples != place.total:
        raise ParameterError(
            "timeline: was built with other gap / crossfade / lead_in settings than this mix; build both with the "
            "same ones."
        )
    bounds = [0]
    for f in frames:
        bounds.append(bounds[-1] + f * frame_samples)
    pieces = [audio[:, a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    names: list[str] = list(timeline.speaker_names)
    groups: list[int] = []
    merged = []
    for line in timeline.lines:
        if line.speaker is not None and 0 <= line.speaker < len(names):
            groups.append(line.speaker)
            continue
        if line.speaker is not None:
            name = f"Voice{line.speaker + 1}"
        elif len(set(line.speakers)) > 1:
            name = " + ".join(
                NARRATOR if s is None else (names[s] if 0 <= s < len(timeline.speaker_names) else f"Voice{s + 1}")
                for s in dict.fromkeys(line.speakers)
            )
            merged.append(line)
        else:
            name = NARRATOR
        if name not in names:
            names.append(name)
        groups.append(names.index(name))
    stems = place_lines(pieces, place, groups, len(names))  # float32 [S, C, T]
    mix = stems.sum(dim=0)  # [C, T]
    warnings = list(timeline.warnings)
    if merged:
        numbers = ", ".join(str(l.index + 1) for l in merged)
        warnings.append(
            f"line(s) {numbers} hold several speakers in one segment and cannot be split into their stems; they are "
            "in stems of their own. Generate with chunk_length = 1 for one segment per turn."
        )
    return MixResult(
        mix=mix,
        stems=stems[:, 0],
        stem_names=tuple(names),
        timeline=timeline,
        sample_rate=sample_rate,
        warnings=tuple(warnings),
    )


def mix_generation(
    tts,
    generation,
    turns: Sequence[Turn] | None = None,
    speaker_names: Sequence[str] = (),
    *,
    gap: float = 0.0,
    crossfade: float = 0.0,
    lead_in: float = 0.0,
) -> MixResult:
    """Decode a `Generation` with `tts` (a `FishS2`) once and assemble its mix, stems and timeline."""
    segments = list(generation.segments)
    if not segments or sum(int(s.codes.shape[-1]) for s in segments) == 0:
        raise CodesError("codes: the generation holds no frames; generate again with another seed or text.")
    rate = int(getattr(tts, "sample_rate", SAMPLE_RATE))
    frame_samples = int(getattr(tts, "frame_length", FRAME_SAMPLES))
    timeline = build_timeline(segments, turns, speaker_names, sample_rate=rate, frame_samples=frame_samples,
                              gap=gap, crossfade=crossfade, lead_in=lead_in)
    audio = tts.decode(generation.codes)  # [1, n·2048] float32 CPU
    frames = [int(s.codes.shape[-1]) for s in segments]
    return assemble(audio, frames, timeline, gap=gap, crossfade=crossfade, lead_in=lead_in, frame_samples=frame_samples)
