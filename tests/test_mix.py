"""Mix and stems: sample-aligned, stems add up to the mix (± 1e-6), silence where others speak, the plain mix is
the Codec Decode output, and the timeline stays right after gaps and crossfades."""

from __future__ import annotations

import pytest
import torch

from fishs2.errors import CodesError, ParameterError
from fishs2.generate import Generation, Segment
from fishs2.mix import NARRATOR, assemble, mix_generation
from fishs2.script import Turn
from fishs2.timeline import build_timeline

from .comfyui import creator
from .comfyui.harness import run

SR = 44100
TURNS = [Turn(0, "One."), Turn(1, "Two."), Turn(0, "Three."), Turn(2, "Four.")]
NAMES = ("Alice", "Bob", "Carol")
FRAMES = [3, 2, 4, 2]


def generation(frames=FRAMES, indices=None):
    segments = []
    for i, n in enumerate(frames):
        g = torch.Generator().manual_seed(i)
        segments.append(Segment(f"s{i}", indices[i] if indices else [i], torch.randint(0, 16, (10, n), generator=g), False))
    return Generation(segments=segments, seed=0)


@pytest.fixture(scope="module")
def gen():
    return generation()


@pytest.fixture(scope="module")
def audio(tiny_tts, gen):
    return tiny_tts.decode(gen.codes)


def test_plain_mix_is_the_codec_decode_output(tiny_tts, gen, audio):
    result = mix_generation(tiny_tts, gen, TURNS, NAMES)
    assert result.mix.shape == audio.shape and torch.equal(result.mix, audio)
    assert result.stem_names == NAMES and result.stems.shape == (3, audio.shape[-1])


@pytest.mark.parametrize("gap, crossfade, lead_in", [(0.0, 0.0, 0.0), (0.4, 0.0, 0.2), (0.1, 0.02, 0.0), (0.0, 0.03, 0.5)])
def test_stems_sum_to_mix_and_are_silent_where_others_speak(gen, audio, gap, crossfade, lead_in):
    tl = build_timeline(gen.segments, TURNS, NAMES, gap=gap, crossfade=crossfade, lead_in=lead_in)
    result = assemble(audio, FRAMES, tl, gap=gap, crossfade=crossfade, lead_in=lead_in)
    mix, stems = result.mix[0], result.stems
    assert mix.dtype == stems.dtype == torch.float32
    assert stems.shape == (3, mix.shape[-1]) and mix.shape[-1] == tl.total_samples
    assert (stems.sum(dim=0) - mix).abs().max() <= 1e-6
    for s in range(3):
        own = torch.zeros(mix.shape[-1], dtype=torch.bool)
        for line in tl.lines:
            if line.speaker == s:
                own[line.start_sample : line.end_sample] = True
        assert torch.all(stems[s][~own] == 0), f"stem {s} is not silent where others speak"
        assert stems[s][own].abs().max() > 0
    # silence before the first line and in the gaps is exact
    first = tl.lines[0].start_sample
    assert torch.all(mix[:first] == 0)
    if gap > 0:
        for a, b in zip(tl.lines[:-1], tl.lines[1:]):
            assert b.start_sample - a.end_sample == round(gap * SR) and torch.all(mix[a.end_sample : b.start_sample] == 0)


def test_lines_are_at_their_timeline_positions(gen, audio):
    gap, fade = 0.25, 0.01
    tl = build_timeline(gen.segments, TURNS, NAMES, gap=gap, crossfade=fade)
    mix = assemble(audio, FRAMES, tl, gap=gap, crossfade=fade).mix[0]
    n_fade = round(fade * SR)
    offset = 0
    for line, frames in zip(tl.lines, FRAMES):
        piece = audio[0, offset : offset + frames * 2048]
        offset += frames * 2048
        got = mix[line.start_sample : line.end_sample]
        # the unfaded middle is the line's audio exactly; the faded ends are scaled copies of it
        assert torch.equal(got[n_fade:-n_fade], piece[n_fade:-n_fade])
        ramp = (torch.arange(n_fade, dtype=torch.float64) + 0.5) / n_fade
        if line.index > 0:
            assert torch.allclose(got[:n_fade], (piece[:n_fade].double() * ramp).float(), atol=1e-7)
        if line.index < len(tl.lines) - 1:
            assert torch.allclose(got[-n_fade:], (piece[-n_fade:].double() * ramp.flip(0)).float(), atol=1e-7)


def test_crossfade_without_gap_overlaps_and_adds_to_one(gen):
    ones = torch.ones(1, sum(FRAMES) * 2048)
    fade = 0.04  # 1764 samples: less than half of the shortest line (4096 samples)
    tl = build_timeline(gen.segments, TURNS, NAMES, crossfade=fade)
    result = assemble(ones, FRAMES, tl, crossfade=fade)
    n_fade = round(fade * SR)
    assert result.mix.shape[-1] == sum(FRAMES) * 2048 - 3 * n_fade
    for a, b in zip(tl.lines[:-1], tl.lines[1:]):
        assert a.end_sample - b.start_sample == n_fade
    # linear ramps of equal length sum to exactly one: a constant signal stays constant across every seam
    assert torch.allclose(result.mix, torch.ones_like(result.mix), atol=1e-6)


def test_merged_speakers_get_a_stem_of_their_own_with_a_warning(tiny_tts):
    gen = generation([3, 2], indices=[[0, 1], [2]])
    result = mix_generation(tiny_tts, gen, TURNS[:3], NAMES[:2], gap=0.1)
    assert result.stem_names == ("Alice", "Bob", "Alice + Bob")
    assert torch.all(result.stems[1] == 0)  # Bob never speaks alone
    assert (result.stems.sum(0) - result.mix[0]).abs().max() <= 1e-6
    assert any("chunk_length = 1" in w for w in result.warnings)


def test_unlabelled_text_goes_to_a_narrator_stem(tiny_tts):
    gen = generation([2, 2])
    result = mix_generation(tiny_tts, gen, [Turn(None, "Intro."), Turn(0, "Hi.")], ("Alice",))
    assert result.stem_names == ("Alice", NARRATOR)
    assert torch.all(result.stems[0][: 2 * 2048] == 0) and torch.all(result.stems[1][2 * 2048 :] == 0)


def test_errors_name_what_is_wrong(gen, audio):
    tl = build_timeline(gen.segments, TURNS, NAMES, gap=0.1)
    with pytest.raises(CodesError, match="^audio: holds"):
        assemble(audio[:, :-1], FRAMES, tl, gap=0.1)
    with pytest.raises(ParameterError, match="^timeline: was built with other"):
        assemble(audio, FRAMES, tl, gap=0.2)
    with pytest.raises(ParameterError, match="^audio: expected mono"):
        assemble(audio.repeat(2, 1), FRAMES, tl, gap=0.1)
    with pytest.raises(CodesError, match="^codes: the generation holds no frames"):
        mix_generation(None, Generation(), [], ())


# ── node ───────────────────────────────────────────────────────────────────────────────────────────────────


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    with creator.folders(tmp_path_factory.mktemp("creator_mix")):
        yield creator.load()


def test_mix_stems_node(pack, gen, audio, tmp_path):
    model = creator.model_handle(pack, tmp_path)
    gen_mod = pack.module("fishs2.generate")
    Turn_ = pack.module("fishs2.script").Turn
    generation_ = gen_mod.Generation(
        segments=[gen_mod.Segment(s.text, s.turn_indices, s.codes, s.hit_frame_limit) for s in gen.segments], seed=0
    )
    codes = pack.module("nodes.types").CodesData(
        generation=generation_, turns=tuple(Turn_(t.speaker, t.text) for t in TURNS), speaker_names=NAMES, seed=0
    )
    out = run(pack.nodes["FishS2MixStems"], model=model, codes=codes, gap_seconds=0.3, crossfade_seconds=0.0,
              lead_in_seconds=0.5)
    mix, stems, speakers, timeline = out.outputs
    assert mix["sample_rate"] == stems["sample_rate"] == SR
    assert mix["waveform"].shape == (1, 1, timeline.total_samples) and mix["waveform"].device.type == "cpu"
    assert stems["waveform"].shape == (3, 1, timeline.total_samples)
    assert speakers.split("\n") == list(NAMES)
    assert (stems["waveform"].sum(0) - mix["waveform"][0]).abs().max() <= 1e-6
    assert timeline.lines[0].start_sample == round(0.5 * SR)
    # the lines are the decode of the codes (same model, same codes)
    first = timeline.lines[0]
    assert torch.allclose(mix["waveform"][0, 0, first.start_sample : first.end_sample], audio[0, : 3 * 2048], atol=1e-6)
