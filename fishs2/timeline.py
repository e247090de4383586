"""The timeline of what was spoken: per line the speaker, the text, and where it lies in the audio.

Timings are exact, not estimated: they come from the number of code frames each generated segment holds
(one frame = `FRAME_SAMPLES` = 2048 samples at 44.1 kHz) and from the layout of the mix (`layout`: lead-in,
gaps, crossfades), which `fishs2.mix` uses to place the audio. A timeline therefore equals the sample positions
of every line in the mixed audio, and stays right after `fishs2.fit` resamples, pads or trims it
(`Timeline.resample`, `Timeline.fit`).

A *line* is one generated segment. With `chunk_length=1` every script turn is its own segment, which gives one
line per turn (what subtitles and lip-sync want); with larger chunks several turns share a segment and their
line lists them all (`turns`, `speakers`), since the audio of one segment cannot be split per turn.

Rules that differ from the official code, on purpose (the engine's, reported here):

* Text before the first speaker label is kept as a turn of its own (the official splitter drops it); it appears
  in the timeline as a line with `speaker=None` (or the narrator voice chosen by the node pack).
* A segment that reaches `max_frames` keeps its last frame (the official loop drops it) and its line is flagged
  `hit_frame_limit=True`; `Timeline.warnings` names it.

Conventions (exact rational arithmetic, no float drift):

* Seconds: `start = start_sample / sample_rate`; `end` is exclusive (the first sample after the line).
* Video frames at `fps`: `start_frame = floor(start · fps)` (the frame on screen when the line starts) and
  `end_frame = ceil(end · fps)` (exclusive): the line is heard within frames `start_frame … end_frame − 1`.
* SRT / WebVTT times are rounded to the nearest millisecond (halves up).
* `fps` may be an int, a float (taken as its decimal text: 29.97 → 2997/100), a Fraction or a string such as
  "30000/1001".
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Iterable, Sequence

from .errors import ParameterError
from .script import ZWSP, Turn, strip_tags

SAMPLE_RATE = 44100
FRAME_SAMPLES = 2048
FORMAT = "fishs2-timeline"
VERSION = 1

__all__ = [
    "SAMPLE_RATE",
    "FRAME_SAMPLES",
    "Line",
    "Timeline",
    "Placement",
    "layout",
    "build_timeline",
    "turns_from_segments",
    "parse_fps",
    "seconds_to_samples",
    "round_half_up",
    "to_srt",
    "to_vtt",
    "to_json",
]


# ── numbers ─────────────────────────────────────────────────────────────────────────────────────────────────


def round_half_up(x: Fraction | int) -> int:
    """Nearest integer, halves rounded up (towards +∞), exactly."""
    return math.floor(Fraction(x) + Fraction(1, 2))


def _exact(value, input_name: str) -> Fraction:
    """int / float / Fraction / numeric string → Fraction; floats by their shortest decimal text (0.1 → 1/10)."""
    if isinstance(value, bool):
        raise ParameterError(f"{input_name}: expected a number, got {value!r}.")
    try:
        if isinstance(value, float):
            if not math.isfinite(value):
                raise ValueError
            return Fraction(repr(value))
        if isinstance(value, (int, Fraction)):
            return Fraction(value)
        if isinstance(value, str):
            return Fraction(value.strip())
        return Fraction(repr(float(value)))  # numpy scalars and the like
    except (ValueError, ZeroDivisionError, TypeError):
        raise ParameterError(f"{input_name}: {value!r} is not a number.") from None


def parse_fps(fps, input_name: str = "fps") -> Fraction:
    """A frame rate (int, float, Fraction, or "30000/1001") → a positive Fraction."""
    rate = _exact(fps, input_name)
    if rate <= 0:
        raise ParameterError(f"{input_name}: must be above 0 frames per second, got {fps!r}.")
    return rate


def seconds_to_samples(seconds, sample_rate: int, input_name: str = "seconds", minimum: float = 0.0) -> int:
    """round_half_up(seconds × sample_rate), with `seconds` ≥ `minimum` checked (ParameterError names the input)."""
    value = _exact(seconds, input_name)
    if value < Fraction(repr(float(minimum))):
        raise ParameterError(f"{input_name}: must be ≥ {minimum:g} seconds, got {seconds!r}.")
    return round_half_up(value * sample_rate)


def _check_rate(sample_rate, input_name: str = "sample_rate") -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
        raise ParameterError(f"{input_name}: must be a positive integer (samples per second), got {sample_rate!r}.")
    return sample_rate


# ── layout of the mix ───────────────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Placement:
    """Where each line's audio goes in the mix, in samples at the mix's rate.

    Line i occupies `[starts[i], starts[i] + lengths[i])`. `fade_in[i]` / `fade_out[i]` are the lengths of its
    linear fade-in / fade-out (0 = none); with gap 0 and a crossfade, consecutive lines overlap by the fade.
    """

    starts: tuple[int, ...]
    lengths: tuple[int, ...]
    fade_in: tuple[int, ...]
    fade_out: tuple[int, ...]
    total: int  # samples in the mix: the end of the last line (or lead_in when there are no lines)

    @property
    def ends(self) -> tuple[int, ...]:
        return tuple(s + n for s, n in zip(self.starts, self.lengths))


def layout(
    lengths: Sequence[int],
    sample_rate: int = SAMPLE_RATE,
    *,
    gap: float = 0.0,
    crossfade: float = 0.0,
    lead_in: float = 0.0,
) -> Placement:
    """Place lines of `lengths` samples one after another.

    * `lead_in` seconds of silence come before the first line.
    * `gap` seconds of silence separate consecutive lines.
    * `crossfade` seconds: the fade length at each boundary between two lines. With `gap == 0` the two lines
      overlap by it (the first fades out linearly while the next fades in); with a gap they do not overlap and
      each fades out / in over it into the silence (removes clicks at the cuts). A fade never takes more than
      half of either line.

    Seconds become samples by `round_half_up(seconds × sample_rate)`.
    """
    sample_rate = _check_rate(sample_rate)
    lengths = [int(n) for n in lengths]
    if any(n < 0 for n in lengths):
        raise ParameterError(f"lengths: must be ≥ 0 samples, got {lengths}.")
    gap_n = seconds_to_samples(gap, sample_rate, "gap")
    fade_n = seconds_to_samples(crossfade, sample_rate, "crossfade")
    start = seconds_to_samples(lead_in, sample_rate, "lead_in")
    count = len(lengths)
    fades = [min(fade_n, lengths[i] // 2, lengths[i + 1] // 2) for i in range(count - 1)]
    starts, fade_in, fade_out = [], [0] * count, [0] * count
    for i, n in enumerate(lengths):
        if i > 0:
            overlap = fades[i - 1] if gap_n == 0 else 0
            start = starts[-1] + lengths[i - 1] + gap_n - overlap
            fade_in[i] = fades[i - 1]
        if i < count - 1:
            fade_out[i] = fades[i]
        starts.append(start)
    total = max((s + n for s, n in zip(starts, lengths)), default=start)
    return Placement(tuple(starts), tuple(lengths), tuple(fade_in), tuple(fade_out), total)


# ── the timeline ────────────────────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Line:
    """One spoken line (one generated segment).

    `speaker` is the speaker index (into `Timeline.speaker_names`) when every turn of the line has the same
    speaker, else None; `speakers` lists each turn's speaker. `text` keeps the inline [tags]; `plain_text` has
    them stripped (for subtitles). `cut` is "" (whole), "end" (the end was trimmed away by `Timeline.fit`) or
    "all" (it lies entirely past the trimmed end; left out of SRT / WebVTT, kept in JSON).
    """

    index: int
    segment: int
    turns: tuple[int, ...]
    speaker: int | None
    speakers: tuple[int | None, ...]
    speaker_name: str
    texts: tuple[str, ...]
    text: str
    plain_text: str
    start_sample: int
    end_sample: int
    frames: int
    hit_frame_limit: bool = False
    cut: str = ""


@dataclass(frozen=True)
class Timeline:
    """Lines with sample positions at `sample_rate` in audio of `total_samples` samples."""

    lines: tuple[Line, ...]
    sample_rate: int = SAMPLE_RATE
    total_samples: int = 0
    speaker_names: tuple[str, ...] = ()
    warnings: tuple[str, ...] = field(default=())

    # -- time conversions ------------------------------------------------------------------------------------
    def seconds(self, sample: int) -> Fraction:
        return Fraction(sample, self.sample_rate)

    def start(self, line: Line) -> Fraction:
        return self.seconds(line.start_sample)

    def end(self, line: Line) -> Fraction:
        return self.seconds(line.end_sample)

    @property
    def duration(self) -> Fraction:
        return self.seconds(self.total_samples)

    def frame_range(self, line: Line, fps) -> tuple[int, int]:
        """(start_frame, end_frame) at `fps`: floor(start·fps), ceil(end·fps) (end exclusive)."""
        rate = parse_fps(fps)
        return math.floor(self.start(line) * rate), math.ceil(self.end(line) * rate)

    # -- transformations that follow fit.py ------------------------------------------------------------------
    def resample(self, sample_rate: int) -> "Timeline":
        """The same timeline for the audio resampled to `sample_rate`: every position p becomes
        round_half_up(p · new / old); the total becomes the resampled length ceil(total · new / old) (what
        torchaudio's resampler returns)."""
        new = _check_rate(sample_rate)
        if new == self.sample_rate:
            return self
        ratio = Fraction(new, self.sample_rate)
        lines = tuple(
            replace(line, start_sample=round_half_up(line.start_sample * ratio),
                    end_sample=round_half_up(line.end_sample * ratio))
            for line in self.lines
        )
        return replace(self, lines=lines, sample_rate=new, total_samples=math.ceil(self.total_samples * ratio))

    def fit(self, total_samples: int) -> "Timeline":
        """The timeline for the audio padded or trimmed (at the end) to `total_samples`.

        Padding changes no line. Trimming moves the end of a line that crosses the new end to it (`cut="end"`)
        and marks lines that start at or after it `cut="all"`; both are named in `warnings`.
        """
        if isinstance(total_samples, bool) or not isinstance(total_samples, int) or total_samples < 0:
            raise ParameterError(f"total_samples: must be an integer ≥ 0, got {total_samples!r}.")
        lines, trimmed, removed = [], [], []
        for line in self.lines:
            empty_at_end = line.start_sample == line.end_sample == total_samples
            if line.start_sample >= total_samples and not empty_at_end:
                line = replace(line, start_sample=total_samples, end_sample=total_samples, cut="all")
                removed.append(line)
            elif line.end_sample > total_samples:
                line = replace(line, end_sample=total_samples, cut="end")
                trimmed.append(line)
            lines.append(line)
        warnings = list(self.warnings)
        end_s = float(Fraction(total_samples, self.sample_rate))
        if trimmed:
            warnings.append(
                f"{_describe(trimmed)} cut short by the trimmed end at {end_s:.3f} s."
            )
        if removed:
            warnings.append(
                f"{_describe(removed)} past the trimmed end at {end_s:.3f} s: not heard, left out of the subtitles."
            )
        return replace(self, lines=tuple(lines), total_samples=total_samples, warnings=tuple(warnings))

    def shift(self, samples: int) -> "Timeline":
        """Every line `samples` later (≥ 0), the total longer by as much (silence added in front)."""
        if samples < 0:
            raise ParameterError(f"samples: must be ≥ 0, got {samples}.")
        lines = tuple(replace(l, start_sample=l.start_sample + samples, end_sample=l.end_sample + samples)
                      for l in self.lines)
        return replace(self, lines=lines, total_samples=self.total_samples + samples)

    # -- writers ---------------------------------------------------------------------------------------------
    def to_srt(self, **options) -> str:
        return to_srt(self, **options)

    def to_vtt(self, **options) -> str:
        return to_vtt(self, **options)

    def to_json(self, fps=None, **options) -> str:
        return to_json(self, fps, **options)

    def to_dict(self, fps=None) -> dict:
        rate = parse_fps(fps) if fps is not None else None
        out_lines = []
        for line in self.lines:
            item = {
                "index": line.index,
                "segment": line.segment,
                "turns": list(line.turns),
                "speaker": line.speaker_name,
                "speaker_index": line.speaker,
                "speakers": list(line.speakers),
                "text": line.text,
                "text_plain": line.plain_text,
                "start": float(self.start(line)),
                "end": float(self.end(line)),
                "start_sample": line.start_sample,
                "end_sample": line.end_sample,
                "frames": line.frames,
                "hit_frame_limit": line.hit_frame_limit,
                "cut": line.cut,
            }
            if rate is not None:
                item["start_frame"], item["end_frame"] = self.frame_range(line, rate)
            out_lines.append(item)
        return {
            "format": FORMAT,
            "version": VERSION,
            "sample_rate": self.sample_rate,
            "total_samples": self.total_samples,
            "duration": float(self.duration),
            "fps": None if rate is None else (rate.numerator if rate.denominator == 1 else float(rate)),
            "fps_exact": None if rate is None else f"{rate.numerator}/{rate.denominator}",
            "frame_samples": FRAME_SAMPLES,
            "speakers": list(self.speaker_names),
            "lines": out_lines,
            "warnings": list(self.warnings),
        }


def _describe(lines: Sequence[Line]) -> str:
    numbers = ", ".join(str(l.index + 1) for l in lines)
    return f"line {numbers}" if len(lines) == 1 else f"lines {numbers}"


# ── building ────────────────────────────────────────────────────────────────────────────────────────────────

_SPEAKER_TOKEN = re.compile(r"<\|speaker:(\d+)\|>")


def turns_from_segments(segments: Sequence) -> list[Turn]:
    """The turns of segments generated from raw text (no script): split each segment's prompt text at its
    `<|speaker:N|>` tags. Turn k of the result is the k-th turn over all segments, as in `turn_indices`."""
    turns: list[Turn] = []
    for segment in segments:
        text = segment.text
        pieces = _SPEAKER_TOKEN.split(text)
        if pieces[0].strip():
            turns.append(Turn(None, pieces[0].strip()))
        for number, body in zip(pieces[1::2], pieces[2::2]):
            turns.append(Turn(int(number), body.strip()))
    return turns


def _plain(text: str) -> str:
    return strip_tags(text).replace(ZWSP, "")


def _unescape(text: str) -> str:
    """Undo the engine's escape of typed `<|` (a ZERO WIDTH SPACE after the `<`): subtitles show what was typed."""
    return text.replace("<" + ZWSP + "|", "<|")


def build_timeline(
    segments: Sequence,
    turns: Sequence[Turn] | None = None,
    speaker_names: Sequence[str] = (),
    *,
    sample_rate: int = SAMPLE_RATE,
    frame_samples: int = FRAME_SAMPLES,
    gap: float = 0.0,
    crossfade: float = 0.0,
    lead_in: float = 0.0,
) -> Timeline:
    """The timeline of generated `segments` (`fishs2.generate.Segment`: codes [K, n], turn_indices,
    hit_frame_limit), placed like `fishs2.mix.assemble` places their audio (same `gap` / `crossfade` /
    `lead_in`; see `layout`).

    `turns` are the script's turns (speaker = index into `speaker_names`, or None); without them the turns are
    read back from the segments' prompt text (`turns_from_segments`) and speakers are named `Voice{N+1}`.
    """
    segments = list(segments)
    if turns is None:
        turns = turns_from_segments(segments)
        used = sorted({t.speaker for t in turns if t.speaker is not None})
        if not speaker_names:
            speaker_names = [f"Voice{i + 1}" for i in range(max(used, default=-1) + 1)]
    turns = list(turns)
    names = tuple(speaker_names)
    lengths = [int(s.codes.shape[-1]) * frame_samples for s in segments]
    place = layout(lengths, sample_rate, gap=gap, crossfade=crossfade, lead_in=lead_in)
    lines, limited = [], []
    for index, (segment, start, length) in enumerate(zip(segments, place.starts, lengths)):
        indices = tuple(int(i) for i in segment.turn_indices)
        bad = [i for i in indices if not 0 <= i < len(turns)]
        if bad:
            raise ParameterError(
                f"turns: segment {index + 1} refers to turn(s) {bad} but the script has {len(turns)} turn(s); "
                "the codes do not belong to this script."
            )
        own = [turns[i] for i in indices]
        speakers = tuple(t.speaker for t in own)
        distinct = list(dict.fromkeys(speakers))
        speaker = distinct[0] if len(distinct) == 1 else None
        speaker_name = " + ".join(_name(s, names) for s in distinct if _name(s, names)) if distinct else ""
        texts = tuple(_unescape(t.text.strip()) for t in own)
        line = Line(
            index=index,
            segment=index,
            turns=indices,
            speaker=speaker,
            speakers=speakers,
            speaker_name=speaker_name,
            texts=texts,
            text="\n".join(texts),
            plain_text="\n".join(_plain(t) for t in texts),
            start_sample=start,
            end_sample=start + length,
            frames=int(segment.codes.shape[-1]),
            hit_frame_limit=bool(segment.hit_frame_limit),
        )
        lines.append(line)
        if line.hit_frame_limit:
            limited.append(line)
    warnings = []
    if limited:
        warnings.append(
            f"{_describe(limited)} reached max_frames and may be cut off mid-word; raise max_frames or split "
            "the line."
        )
    return Timeline(tuple(lines), sample_rate, place.total, names, tuple(warnings))


def _name(speaker: int | None, names: Sequence[str]) -> str:
    if speaker is None:
        return ""
    return names[speaker] if 0 <= speaker < len(names) else f"Voice{speaker + 1}"


# ── writers ─────────────────────────────────────────────────────────────────────────────────────────────────


def _clock(seconds: Fraction, separator: str) -> str:
    ms = round_half_up(seconds * 1000)
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{separator}{ms:03d}"


def _cue_rows(timeline: Timeline, line: Line, tags: bool) -> list[tuple[str, str]]:
    """(speaker name, one-line text) per turn of the line; turns left without words are skipped."""
    rows = []
    for speaker, text in zip(line.speakers, line.texts):
        text = " ".join((text if tags else _plain(text)).split())
        if text:
            rows.append((_name(speaker, timeline.speaker_names), text))
    return rows or [(line.speaker_name, "…")]


def _spoken(timeline: Timeline) -> Iterable[Line]:
    return (line for line in timeline.lines if line.cut != "all")


def to_srt(timeline: Timeline, *, tags: bool = False, speaker_labels: bool = False) -> str:
    """SubRip text: cues numbered from 1, `HH:MM:SS,mmm --> HH:MM:SS,mmm`, one text row per turn, [tags]
    stripped unless `tags`, `Name: ` in front with `speaker_labels`. Lines cut away entirely are left out."""
    blocks = []
    for number, line in enumerate(_spoken(timeline), start=1):
        rows = [
            (f"{name}: {text}" if speaker_labels and name else text).replace("-->", "->")
            for name, text in _cue_rows(timeline, line, tags)
        ]
        clock = f"{_clock(timeline.start(line), ',')} --> {_clock(timeline.end(line), ',')}"
        blocks.append(f"{number}\n{clock}\n" + "\n".join(rows))
    return "\n\n".join(blocks) + "\n" if blocks else ""


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_vtt(timeline: Timeline, *, tags: bool = False, speaker_labels: bool = True) -> str:
    """WebVTT text; cue identifiers are the line numbers (from 1). With `speaker_labels` each turn is a voice
    span `<v Name>text` (players show the name). Lines cut away entirely are left out."""
    blocks = ["WEBVTT"]
    for line in _spoken(timeline):
        rows = []
        for name, text in _cue_rows(timeline, line, tags):
            text = _vtt_escape(text)
            rows.append(f"<v {_vtt_escape(name)}>{text}" if speaker_labels and name else text)
        clock = f"{_clock(timeline.start(line), '.')} --> {_clock(timeline.end(line), '.')}"
        blocks.append(f"{line.index + 1}\n{clock}\n" + "\n".join(rows))
    return "\n\n".join(blocks) + "\n"


def to_json(timeline: Timeline, fps=None, *, indent: int | None = 2) -> str:
    """JSON of `Timeline.to_dict(fps)`: seconds, samples, and (with `fps`) video frames per line."""
    return json.dumps(timeline.to_dict(fps), ensure_ascii=False, indent=indent)
