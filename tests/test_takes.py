"""Takes: N takes with seeds s … s+N−1 equal N single runs; the AUDIO batch of takes and Pick Take (audio and
codes) give back each take exactly."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from .comfyui import creator
from .comfyui.harness import run

DIALOGUE = "<|speaker:0|>Take one line.<|speaker:1|>And a reply, a little longer."
OPTIONS = dict(max_frames=4, chunk_length=1, temperature=0.9)


@pytest.fixture(scope="module")
def takes(tiny_tts):
    return tiny_tts.generate_takes(DIALOGUE, seed=40, takes=3, **OPTIONS)


def test_n_takes_equal_n_single_runs(tiny_tts, takes):
    assert [t.seed for t in takes] == [40, 41, 42]
    for i, take in enumerate(takes):
        single = tiny_tts.generate(DIALOGUE, seed=40 + i, **OPTIONS)
        assert len(take.segments) == len(single.segments) == 2
        for a, b in zip(take.segments, single.segments):
            assert a.turn_indices == b.turn_indices and a.hit_frame_limit == b.hit_frame_limit
            assert torch.equal(a.codes, b.codes)
    assert not all(torch.equal(takes[0].codes, t.codes) for t in takes[1:])  # different seeds differ


# ── AUDIO batch and Pick Take ──────────────────────────────────────────────────────────────────────────────


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    with creator.folders(tmp_path_factory.mktemp("creator_takes")):
        yield creator.load()


def test_audio_batch_and_pick_return_each_take_exactly(pack, tiny_tts, takes):
    helpers = pack.module("nodes.takes")
    clips = [tiny_tts.decode(t.codes) for t in takes]
    clips[1] = clips[1][:, :-1000]  # make the lengths differ, as takes of real models do
    batch = helpers.audio_batch(clips, 44100)
    longest = max(c.shape[-1] for c in clips)
    assert batch["waveform"].shape == (3, 1, longest) and batch[helpers.LENGTHS_KEY] == [c.shape[-1] for c in clips]
    for i, clip in enumerate(clips):
        picked = run(pack.nodes["FishS2PickTake"], audio=batch, index=i, trim_padding=True).outputs[0]
        assert picked["sample_rate"] == 44100 and torch.equal(picked["waveform"][0], clip)
    padded = run(pack.nodes["FishS2PickTake"], audio=batch, index=1, trim_padding=False).outputs[0]
    assert padded["waveform"].shape[-1] == longest and torch.all(padded["waveform"][..., clips[1].shape[-1]:] == 0)
    plain = {"waveform": batch["waveform"], "sample_rate": 44100}  # a batch from elsewhere: no lengths recorded
    assert run(pack.nodes["FishS2PickTake"], audio=plain, index=2, trim_padding=True).outputs[0]["waveform"].shape[-1] == longest
    errors = pack.module("fishs2.errors")
    with pytest.raises(errors.ParameterError, match=r"^index: 3 is out of range; the batch holds 3 item\(s\)"):
        run(pack.nodes["FishS2PickTake"], audio=batch, index=3, trim_padding=True)
    with pytest.raises(errors.AudioError, match="^audio: "):
        run(pack.nodes["FishS2PickTake"], audio={"waveform": torch.zeros(5)}, index=0, trim_padding=True)


def _pack_generation(pack, generation):
    gen_mod = pack.module("fishs2.generate")
    return gen_mod.Generation(
        segments=[gen_mod.Segment(s.text, s.turn_indices, s.codes, s.hit_frame_limit) for s in generation.segments],
        seed=generation.seed,
    )


def test_pick_take_codes(pack, takes):
    CodesData = pack.module("nodes.types").CodesData
    # The codes of a multi-take generation: all takes in seed order, `generation` = take 0 (see the report for the
    # field Dual-AR Generate needs; here it is added in a subclass when the pack does not have it yet).
    fields = {f.name for f in dataclasses.fields(CodesData)}
    WithTakes = CodesData if "takes" in fields else dataclasses.make_dataclass(
        "WithTakes", [("takes", tuple, dataclasses.field(default=()))], bases=(CodesData,), frozen=True
    )
    generations = tuple(_pack_generation(pack, t) for t in takes)
    codes = WithTakes(generation=generations[0], takes=generations, seed=40)
    for i in range(3):
        picked = run(pack.nodes["FishS2PickTakeCodes"], codes=codes, index=i).outputs[0]
        assert picked.seed == 40 + i and picked.takes == (generations[i],)
        assert torch.equal(picked.generation.codes, takes[i].codes)
    errors = pack.module("fishs2.errors")
    with pytest.raises(errors.ParameterError, match=r"^index: 3 is out of range; the codes hold 3 take"):
        run(pack.nodes["FishS2PickTakeCodes"], codes=codes, index=3)
    single = CodesData(generation=generations[1], seed=41)
    assert run(pack.nodes["FishS2PickTakeCodes"], codes=single, index=0).outputs[0].generation is generations[1]
    with pytest.raises(errors.ParameterError, match=r"^index: 1 is out of range; the codes hold 1 take"):
        run(pack.nodes["FishS2PickTakeCodes"], codes=single, index=1)
    with pytest.raises(errors.CodesError, match="^codes: "):
        run(pack.nodes["FishS2PickTakeCodes"], codes=None, index=0)
