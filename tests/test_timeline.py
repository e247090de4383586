"""Timeline: exact positions from frame counts, SRT / WebVTT / JSON that standard parsers read, and times that
equal the sample positions of each line in the mixed audio (± 1 ms)."""

from __future__ import annotations

import json
import math
import os
from fractions import Fraction

import pytest
import srt
import torch
import webvtt

from fishs2.errors import ParameterError
from fishs2.generate import Segment
from fishs2.mix import assemble
from fishs2.script import ZWSP, Turn
from fishs2.timeline import build_timeline, layout, parse_fps, round_half_up, turns_from_segments

from .comfyui import creator
from .comfyui.harness import run

SR = 44100
MS = SR / 1000  # samples in one millisecond


def random_codes(frames: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 16, (10, frames), generator=g)


def segments_of(frames, limit=()):
    return [Segment(f"s{i}", [i], random_codes(n, i), i in limit) for i, n in enumerate(frames)]


TURNS = [Turn(0, "Hello [whisper] there."), Turn(1, "Hi, how <" + ZWSP + "|are|> you?"), Turn(0, "Fine & well.")]
NAMES = ("Alice", "Bob")
FRAMES = [3, 5, 2]


@pytest.fixture(scope="module")
def decoded(tiny_tts):
    segments = segments_of(FRAMES, limit={1})
    audio = tiny_tts.decode(torch.cat([s.codes for s in segments], dim=1))
    return segments, audio


def srt_times(text):
    return [(c.start.total_seconds(), c.end.total_seconds(), c.content) for c in srt.parse(text)]


def vtt_seconds(stamp: str) -> float:
    h, m, s = stamp.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def vtt_times(text):
    return [(vtt_seconds(c.start), vtt_seconds(c.end), c) for c in webvtt.from_string(text).captions]


def locate(mix: torch.Tensor, piece: torch.Tensor, near: float, margin: int = 0) -> int:
    """The offset k within ± 1 ms of `near` seconds where mix[k + margin : k + n - margin] equals the piece's
    middle exactly (to 1e-6); fails when there is none."""
    n = piece.shape[-1]
    centre = round(near * SR)
    for k in range(max(0, centre - int(MS) - 1), centre + int(MS) + 2):
        window = mix[k + margin : k + n - margin]
        if window.shape[-1] == n - 2 * margin and torch.allclose(window, piece[margin : n - margin], atol=1e-6, rtol=0):
            return k
    raise AssertionError(f"line audio not found within 1 ms of {near:.4f} s")


# ── layout and positions ───────────────────────────────────────────────────────────────────────────────────


def test_layout_gaps_lead_in_and_crossfades():
    p = layout([100, 200, 50], 1000, gap=0.01, lead_in=0.5)
    assert p.starts == (500, 610, 820) and p.total == 870 and p.fade_in == (0, 0, 0)
    p = layout([100, 200, 50], 1000, crossfade=0.03)  # gap 0: overlap by the fade, capped at half a line
    assert p.starts == (0, 70, 245) and p.fade_out == (30, 25, 0) and p.fade_in == (0, 30, 25)
    p = layout([100, 200], 1000, gap=0.1, crossfade=0.02)  # with a gap: fades, no overlap
    assert p.starts == (0, 200) and p.fade_out == (20, 0) and p.fade_in == (0, 20)
    assert layout([], 1000, lead_in=1).total == 1000
    with pytest.raises(ParameterError, match="^gap: "):
        layout([1], 1000, gap=-0.1)


def test_build_timeline_positions_text_and_flags():
    segments = segments_of(FRAMES, limit={1})
    tl = build_timeline(segments, TURNS, NAMES, gap=0.5, lead_in=0.25)
    gap, lead = round(0.5 * SR), round(0.25 * SR)
    starts = [lead, lead + 3 * 2048 + gap, lead + 8 * 2048 + 2 * gap]
    assert [l.start_sample for l in tl.lines] == starts
    assert [l.end_sample - l.start_sample for l in tl.lines] == [n * 2048 for n in FRAMES]
    assert tl.total_samples == starts[-1] + 2 * 2048
    assert [l.speaker_name for l in tl.lines] == ["Alice", "Bob", "Alice"]
    assert tl.lines[0].text == "Hello [whisper] there." and tl.lines[0].plain_text == "Hello there."
    assert tl.lines[1].text == "Hi, how <|are|> you?"  # the engine's escape is undone for subtitles
    assert [l.hit_frame_limit for l in tl.lines] == [False, True, False]
    assert any("line 2 reached max_frames" in w for w in tl.warnings)


def test_segment_with_several_turns_is_one_line_naming_both():
    segments = [Segment("x", [0, 1], random_codes(4, 0), False), Segment("y", [2], random_codes(2, 1), False)]
    tl = build_timeline(segments, TURNS, NAMES)
    assert tl.lines[0].speaker is None and tl.lines[0].speakers == (0, 1)
    assert tl.lines[0].speaker_name == "Alice + Bob"
    cue = list(srt.parse(tl.to_srt(speaker_labels=True)))[0]
    assert cue.content == "Alice: Hello there.\nBob: Hi, how <|are|> you?"


def test_turns_read_back_from_raw_text_segments():
    segments = [Segment("Intro. <|speaker:0|>One.", [0, 1], random_codes(2, 0), False),
                Segment("<|speaker:1|>Two.", [2], random_codes(2, 1), False)]
    assert turns_from_segments(segments) == [Turn(None, "Intro."), Turn(0, "One."), Turn(1, "Two.")]
    tl = build_timeline(segments)
    assert tl.speaker_names == ("Voice1", "Voice2") and tl.lines[1].speaker_name == "Voice2"


def test_segment_turns_must_exist():
    with pytest.raises(ParameterError, match="segment 1 refers to turn"):
        build_timeline([Segment("x", [5], random_codes(1, 0), False)], TURNS, NAMES)


# ── the writers against standard parsers and the real mix ──────────────────────────────────────────────────


@pytest.mark.parametrize("gap, crossfade, lead_in", [(0.0, 0.0, 0.0), (0.3, 0.0, 0.1), (0.2, 0.01, 0.0), (0.0, 0.02, 0.05)])
def test_srt_and_vtt_times_are_the_lines_positions_in_the_mix(decoded, gap, crossfade, lead_in):
    segments, audio = decoded
    tl = build_timeline(segments, TURNS, NAMES, gap=gap, crossfade=crossfade, lead_in=lead_in)
    mix = assemble(audio, FRAMES, tl, gap=gap, crossfade=crossfade, lead_in=lead_in).mix[0]
    bounds = [0, *torch.tensor(FRAMES).cumsum(0).mul(2048).tolist()]
    pieces = [audio[0, a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    margin = round(crossfade * SR) + 1  # faded samples are not compared
    cues = srt_times(tl.to_srt())
    vtt = vtt_times(tl.to_vtt())
    assert len(cues) == len(vtt) == 3
    assert [c[2] for c in cues] == ["Hello there.", "Hi, how <|are|> you?", "Fine & well."]
    for (start, end, _), (vstart, vend, _), piece in zip(cues, vtt, pieces):
        k = locate(mix, piece, start, margin)
        assert abs(start - k / SR) <= 0.001 and abs(vstart - k / SR) <= 0.001
        assert abs(end - (k + piece.shape[-1]) / SR) <= 0.001 and abs(vend - end) < 1e-9
    assert abs(mix.shape[-1] / SR - cues[-1][1]) <= 0.001


def test_vtt_voices_escaping_and_identifiers(decoded):
    segments, _ = decoded
    captions = webvtt.from_string(build_timeline(segments, TURNS, NAMES).to_vtt()).captions
    assert [c.voice for c in captions] == ["Alice", "Bob", "Alice"]
    assert [c.identifier for c in captions] == ["1", "2", "3"]
    assert captions[2].raw_text == "<v Alice>Fine &amp; well."
    tagged = webvtt.from_string(build_timeline(segments, TURNS, NAMES).to_vtt(tags=True, speaker_labels=False))
    assert tagged.captions[0].raw_text == "Hello [whisper] there."


def test_json_parses_and_matches_the_timeline(decoded):
    segments, _ = decoded
    tl = build_timeline(segments, TURNS, NAMES, gap=0.25)
    data = json.loads(tl.to_json(fps="30000/1001"))
    assert data["format"] == "fishs2-timeline" and data["sample_rate"] == SR
    assert data["fps_exact"] == "30000/1001" and data["speakers"] == ["Alice", "Bob"]
    for item, line in zip(data["lines"], tl.lines):
        assert item["start_sample"] == line.start_sample and item["end_sample"] == line.end_sample
        assert item["start"] == pytest.approx(line.start_sample / SR, abs=1e-12)
        rate = Fraction(30000, 1001)
        assert item["start_frame"] == math.floor(Fraction(line.start_sample, SR) * rate)
        assert item["end_frame"] == math.ceil(Fraction(line.end_sample, SR) * rate)
        assert item["text"] == line.text and item["text_plain"] == line.plain_text
    assert [i["hit_frame_limit"] for i in data["lines"]] == [False, True, False]
    assert data["warnings"] and "max_frames" in data["warnings"][0]


def test_frame_numbers_and_millisecond_rounding():
    tl = build_timeline([Segment("x", [0], random_codes(1, 0), False)], [Turn(0, "a")], ["A"], lead_in=Fraction(1, 48))
    line = tl.lines[0]
    # starts at round(918.75) = 919 samples (20.8390 ms, just after frame 1 of 48 fps begins at 20.8333 ms),
    # ends 2048 samples later (67.2789 ms)
    assert line.start_sample == 919 and tl.frame_range(line, 24) == (0, 2)
    assert tl.frame_range(line, 48) == (1, 4)
    cue = list(srt.parse(tl.to_srt()))[0]
    assert cue.start.total_seconds() == 0.021 and cue.end.total_seconds() == 0.067
    assert parse_fps(29.97) == Fraction(2997, 100) and parse_fps("30000/1001") == Fraction(30000, 1001)
    assert round_half_up(Fraction(5, 2)) == 3 and round_half_up(Fraction(-5, 2)) == -2
    with pytest.raises(ParameterError, match="^fps: "):
        parse_fps(0)


def test_fit_trims_flags_and_drops_unheard_lines_from_subtitles(decoded):
    segments, _ = decoded
    tl = build_timeline(segments, TURNS, NAMES, gap=0.1)
    cut = tl.fit(tl.lines[1].start_sample + 1000)
    assert [l.cut for l in cut.lines] == ["", "end", "all"]
    assert cut.lines[1].end_sample == cut.total_samples
    assert len(list(srt.parse(cut.to_srt()))) == 2 and len(webvtt.from_string(cut.to_vtt()).captions) == 2
    assert json.loads(cut.to_json())["lines"][2]["cut"] == "all"
    assert any("past the trimmed end" in w for w in cut.warnings)
    longer = tl.fit(tl.total_samples + 5000)
    assert [l.start_sample for l in longer.lines] == [l.start_sample for l in tl.lines] and not longer.lines[2].cut


def test_resample_keeps_times_to_a_sample():
    tl = build_timeline(segments_of(FRAMES), TURNS, NAMES, gap=0.3)
    re = tl.resample(48000)
    for a, b in zip(tl.lines, re.lines):
        assert abs(a.start_sample / SR - b.start_sample / 48000) <= 0.5 / 48000
    assert re.total_samples == math.ceil(tl.total_samples * 48000 / SR)


# ── end to end: generation with the frame limit and text before the first label ────────────────────────────


def test_generated_dialogue_timeline_reports_preamble_and_frame_limit(tiny_tts):
    turns = [Turn(None, "Before any label."), Turn(0, "First line."), Turn(1, "Second line.")]
    voices = []
    gen = tiny_tts.generate(turns, voices, seed=3, max_frames=4, chunk_length=1)
    assert [s.turn_indices for s in gen.segments] == [[0], [1], [2]]  # nothing dropped
    tl = build_timeline(gen.segments, turns, ["Alice", "Bob"])
    assert tl.lines[0].text == "Before any label." and tl.lines[0].speaker is None
    for line, segment in zip(tl.lines, gen.segments):
        assert line.frames == segment.num_frames and line.hit_frame_limit == segment.hit_frame_limit
        if segment.hit_frame_limit:
            assert line.frames == 4  # the last frame at the limit is kept
    assert any(l.hit_frame_limit for l in tl.lines)  # the random tiny model never stops within 4 frames
    flagged = [i["hit_frame_limit"] for i in json.loads(tl.to_json())["lines"]]
    assert flagged == [s.hit_frame_limit for s in gen.segments]


# ── nodes ──────────────────────────────────────────────────────────────────────────────────────────────────


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    with creator.folders(tmp_path_factory.mktemp("creator_timeline")):
        yield creator.load()


def codes_data(pack, segments, turns=TURNS, names=NAMES):
    gen_mod = pack.module("fishs2.generate")
    generation = gen_mod.Generation(segments=[gen_mod.Segment(s.text, s.turn_indices, s.codes, s.hit_frame_limit)
                                              for s in segments], seed=1)
    Turn_ = pack.module("fishs2.script").Turn
    return pack.module("nodes.types").CodesData(
        generation=generation, turns=tuple(Turn_(t.speaker, t.text) for t in turns), speaker_names=names, seed=1
    )


def test_timeline_and_subtitles_nodes(pack):
    codes = codes_data(pack, segments_of(FRAMES, limit={1}))
    timeline = run(pack.nodes["FishS2Timeline"], codes=codes).outputs[0]
    assert [l.start_sample for l in timeline.lines] == [0, 3 * 2048, 8 * 2048]
    out = run(pack.nodes["FishS2Subtitles"], timeline=timeline, fps=25.0, speaker_labels=True, keep_tags=False)
    srt_text, vtt_text, json_text = out.outputs
    assert [c.content for c in srt.parse(srt_text)][0] == "Alice: Hello there."
    assert len(webvtt.from_string(vtt_text).captions) == 3
    assert json.loads(json_text)["lines"][1]["end_frame"] == math.ceil(8 * 2048 / SR * 25)
    assert "reached max_frames" in out.ui["text"][0]


def test_nodes_name_their_inputs_in_errors(pack):
    errors = pack.module("fishs2.errors")
    with pytest.raises(errors.CodesError, match="^codes: "):
        run(pack.nodes["FishS2Timeline"], codes="nope")
    with pytest.raises(errors.ParameterError, match="^timeline: "):
        run(pack.nodes["FishS2Subtitles"], timeline=None, fps=25.0, speaker_labels=True, keep_tags=False)


def test_save_subtitles_writes_side_by_side_in_output(pack):
    import folder_paths
    import soundfile

    codes = codes_data(pack, segments_of(FRAMES))
    timeline = run(pack.nodes["FishS2Timeline"], codes=codes).outputs[0]
    audio = {"waveform": torch.rand(1, 1, timeline.total_samples) * 0.1, "sample_rate": SR}
    res = run(pack.nodes["FishS2SaveSubtitles"], timeline=timeline, filename_prefix="subs/test", fps=24.0,
              speaker_labels=False, keep_tags=False, audio=audio)
    saved = res.ui["audio"][0]
    assert saved["subfolder"] == "subs" and saved["type"] == "output" and saved["filename"].endswith("_.flac")
    base = os.path.join(folder_paths.get_output_directory(), "subs", saved["filename"][: -len(".flac")])
    data, rate = soundfile.read(base + ".flac")
    assert rate == SR and len(data) == timeline.total_samples
    assert [c.content for c in srt.parse(open(base + ".srt", encoding="utf-8").read())][0] == "Hello there."
    assert webvtt.read(base + ".vtt").captions[0].text == "Hello there."
    assert json.load(open(base + ".json", encoding="utf-8"))["total_samples"] == timeline.total_samples
    again = run(pack.nodes["FishS2SaveSubtitles"], timeline=timeline, filename_prefix="subs/test", fps=24.0,
                speaker_labels=False, keep_tags=False)
    assert os.path.basename(base).replace("_00001_", "_00002_") + ".srt" in again.ui["text"][0]
