"""The FishS2 API end to end on the tiny checkpoint: voices, generation, takes, streaming, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fishs2.errors import AudioError, ParameterError, TextError, VoiceError
from fishs2.generate import FrameEvent, SegmentEvent
from fishs2.voice import Voice

from .golden import SHIPPED

REFERENCE_WAV = SHIPPED / "codec_input.wav"


@pytest.fixture(scope="module")
def voice(tiny_tts):
    return tiny_tts.encode_voice(REFERENCE_WAV, "This is the reference voice.", name="ref")


def test_encode_voice_from_file_and_tensor_agree(tiny_tts, voice):
    import soundfile as sf

    samples, rate = sf.read(str(REFERENCE_WAV), dtype="float32")
    from_tensor = tiny_tts.encode_voice(torch.from_numpy(samples)[None], "x", sample_rate=rate)
    assert voice.codes.shape == (10, -(-len(samples) // 2048))
    assert torch.equal(voice.codes, from_tensor.codes)


def test_generate_decode_lengths(tiny_tts, voice):
    result = tiny_tts.generate("Hello there, how are you?", [voice], seed=7, max_frames=20)
    assert result.codes.shape[0] == 10 and result.codes.dtype == torch.int64
    audio = tiny_tts.decode(result.codes)
    assert audio.dtype == torch.float32 and audio.shape == (1, result.num_frames * 2048)
    assert torch.isfinite(audio).all() and audio.abs().max() <= 1


def test_same_seed_same_codes_different_seed_differs(tiny_tts, voice):
    a = tiny_tts.generate("Same seed, same codes.", [voice], seed=11, max_frames=16)
    b = tiny_tts.generate("Same seed, same codes.", [voice], seed=11, max_frames=16)
    c = tiny_tts.generate("Same seed, same codes.", [voice], seed=12, max_frames=16)
    assert torch.equal(a.codes, b.codes)
    assert a.codes.shape != c.codes.shape or not torch.equal(a.codes, c.codes)


def test_takes_equal_single_runs(tiny_tts, voice):
    text = "<|speaker:0|>First line.<|speaker:0|>Second, longer line of the dialogue."
    takes = tiny_tts.generate_takes(text, [voice], seed=100, takes=3, max_frames=12, chunk_length=20)
    for i, take in enumerate(takes):
        single = tiny_tts.generate(text, [voice], seed=100 + i, max_frames=12, chunk_length=20)
        assert take.seed == 100 + i
        assert [s.num_frames for s in take.segments] == [s.num_frames for s in single.segments]
        assert torch.equal(take.codes, single.codes)


def test_stream_yields_frames_then_segments(tiny_tts, voice):
    events = list(tiny_tts.stream("<|speaker:0|>One.<|speaker:0|>Two.", [voice], seed=3, max_frames=6, chunk_length=1))
    segments = [e for e in events if isinstance(e, SegmentEvent)]
    frames = [e for e in events if isinstance(e, FrameEvent)]
    assert [s.segment for s in segments] == [0, 1]
    for s in segments:
        mine = [f.codes for f in frames if f.segment == s.segment]
        assert torch.equal(torch.stack(mine, dim=1), s.result.codes)


def test_frame_limit_keeps_last_frame_and_is_reported(tiny_tts):
    result = tiny_tts.generate("A sentence that will not finish in three frames.", seed=1, max_frames=3)
    limited = [s for s in result.segments if s.hit_frame_limit]
    for s in limited:
        assert s.num_frames == 3


def test_text_before_first_speaker_is_kept(tiny_tts, voice):
    batches, _ = tiny_tts.plan("Intro words. <|speaker:0|>Then the line.", [voice], chunk_length=1000)
    assert batches[0][0].startswith("Intro words.")


def test_speaker_without_voice_is_rejected(tiny_tts, voice):
    with pytest.raises(TextError, match="speaker\\(s\\) 1 have no voice"):
        tiny_tts.generate("<|speaker:0|>Hi.<|speaker:1|>Hello.", [voice], max_frames=2)


def test_typed_special_tokens_stay_text(tiny_tts):
    prompt = tiny_tts.prompts.build("say <|im_end|> literally")
    im_end = tiny_tts.tokenizer.im_end_id
    user_start = (prompt[0] == tiny_tts.tokenizer.im_start_id).nonzero()[1].item()
    user_ids = prompt[0, user_start:].tolist()
    assert user_ids.count(im_end) == 1  # only the real end of the user message, not the typed one
    assert "<|im_end|> literally" in tiny_tts.tokenizer.decode(user_ids)


@pytest.mark.parametrize("kwargs, match", [
    ({"temperature": 0}, "temperature"), ({"temperature": 2.5}, "temperature"), ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"), ({"top_k": 0}, "top_k"), ({"max_frames": 0}, "max_frames"),
    ({"max_frames": 10**9}, "max_frames"), ({"chunk_length": 0}, "chunk_length"), ({"seed": "abc"}, "seed"),
])
def test_bad_parameters(tiny_tts, kwargs, match):
    with pytest.raises(ParameterError, match=match):
        tiny_tts.generate("Hello.", **kwargs)


def test_empty_text(tiny_tts):
    with pytest.raises(TextError, match="empty"):
        tiny_tts.generate("   ")


def test_negative_and_huge_seeds_are_normalised(tiny_tts):
    a = tiny_tts.generate("Seeds.", seed=-5, max_frames=4)
    b = tiny_tts.generate("Seeds.", seed=5, max_frames=4)
    assert a.seed == 5 and torch.equal(a.codes, b.codes)
    assert tiny_tts.generate("Seeds.", seed=2**70, max_frames=2).seed < 2**63


def test_context_is_trimmed_for_long_scripts(tmp_path, caplog):
    """A script longer than the context generates every batch; old exchanges are dropped from the prompt."""
    import json
    import logging

    from fishs2 import FishS2

    from .conftest import copy_tiny_checkpoint

    directory = copy_tiny_checkpoint(tmp_path / "short")
    config = json.loads((directory / "config.json").read_text())
    config["text_config"]["max_seq_len"] = 160
    (directory / "config.json").write_text(json.dumps(config))
    tts = FishS2.from_pretrained(directory, device="cpu")
    lines = "".join(f"<|speaker:0|>Line number {i} of a long script." for i in range(12))
    with caplog.at_level(logging.INFO, logger="fishs2.generate"):
        result = tts.generate(lines, seed=0, max_frames=8, chunk_length=1)
    assert len(result.segments) == 12
    assert [s.turn_indices for s in result.segments] == [[i] for i in range(12)]
    assert any("dropped" in r.message for r in caplog.records)


def test_voice_roundtrip_and_validation(tmp_path, tiny_tts, voice):
    path = voice.save(tmp_path / "ref")
    assert path.suffix == ".safetensors" and path.with_suffix(".json").is_file()
    loaded = Voice.load(path)
    assert torch.equal(loaded.codes, voice.codes) and loaded.text == voice.text and loaded.name == "ref"
    bad = Voice(codes=voice.codes.clone(), text="x", name="bad")
    bad.codes[3, 0] = 10_000
    with pytest.raises(VoiceError, match="out of range"):
        tiny_tts.generate("Hi.", [bad], max_frames=2)


def test_a_generated_take_is_a_voice(tmp_path, tiny_tts, voice):
    """A take's codes (residual codes may exceed the codec's codebooks: the fast AR's vocabulary is wider, 4096
    against 1024 in S2 Pro) go back into a prompt as a voice, also after a save and load."""
    take = tiny_tts.generate("Hello there, friend.", [voice], seed=1, max_frames=30)
    assert int(take.codes[1:].max()) >= tiny_tts.codec.codebook_size  # the case the check used to refuse
    reused = Voice(take.codes, "Hello there, friend.", name="take")
    loaded = tiny_tts.load_voice(reused.save(tmp_path / "take"))
    again = tiny_tts.generate("Next line.", [loaded], seed=2, max_frames=5)
    assert again.num_frames > 0


def test_int8_loading_quantises_and_generates(tiny_checkpoint_dir, tiny_tts):
    from fishs2 import FishS2

    quantised = FishS2.from_pretrained(tiny_checkpoint_dir, device="cpu", dtype="fp32", int8=True)
    assert quantised.int8 and not tiny_tts.int8
    full = tiny_tts.memory_estimate(100, 50)
    small = quantised.memory_estimate(100, 50)
    assert small.weights < full.weights
    result = quantised.generate("Hello there.", seed=0, max_frames=6)
    assert result.codes.shape[0] == 10 and 1 <= result.num_frames <= 6


def test_compiled_model_generates_the_same_codes(tiny_checkpoint_dir, tiny_tts):
    from fishs2 import FishS2

    compiled = FishS2.from_pretrained(tiny_checkpoint_dir, device="cpu", dtype="fp32", compile=True)
    assert all(block._compiled_call_impl is not None for block in compiled.model.slow.layers)
    text = "<|speaker:0|>Compiled blocks, same speech."
    assert torch.equal(compiled.generate(text, seed=3, max_frames=12).codes,
                       tiny_tts.generate(text, seed=3, max_frames=12).codes)


def test_memory_estimate_grows_with_the_request(tiny_tts):
    base = tiny_tts.memory_estimate(100, 50)
    cfg = tiny_tts.config
    per_position = 2 * cfg.slow.n_layer * cfg.slow.kv_size * 4  # k and v, fp32
    assert tiny_tts.memory_estimate(200, 50).kv_cache - base.kv_cache >= 100 * per_position
    assert tiny_tts.memory_estimate(100, 50, takes=3).kv_cache >= 3 * (150 * per_position)
    assert base.total > base.llm > base.weights > 0


def test_memory_estimate_of_the_cuda_graph_path_counts_its_cache_bucket(tiny_tts):
    """On CUDA the decoder's cache is rounded up to a multiple of 1024 positions; the estimate counts those."""
    from fishs2.memory import kv_cache_bytes

    cfg = tiny_tts.config
    exact = tiny_tts.memory_estimate(100, 50, cuda_graph=False).kv_cache
    bucket = tiny_tts.memory_estimate(100, 50, cuda_graph=True).kv_cache
    assert bucket - exact == kv_cache_bytes(cfg, 1024, dtype=tiny_tts.dtype) - kv_cache_bytes(cfg, 150, dtype=tiny_tts.dtype) \
        + (1024 - 150) * cfg.slow.head_dim * 4  # and the (fp32) RoPE rows of the extra positions
    assert tiny_tts.memory_estimate(100, 50).kv_cache == exact  # a CPU model decodes without the graph


def test_warm_up_keeps_the_decoder_of_its_bucket_and_changes_no_result(tiny_tts):
    """A server's warm-up leaves the decoder (and on CUDA its graphs) that a request of that size reuses, draws
    nothing from the global generator, and the request's codes are those of a model that was never warmed."""
    from fishs2.generate import static_capacity

    text, options = "<|speaker:0|>After the warm-up.", dict(seed=5, max_frames=12, cuda_graph=True)
    tiny_tts.model.static_decoder = None
    cold = tiny_tts.generate(text, **options).codes
    tiny_tts.model.static_decoder = None
    rng = torch.random.get_rng_state()
    tiny_tts.warm_up(max_frames=300, prompt_len=500, takes=2, cuda_graph=True)
    assert torch.equal(torch.random.get_rng_state(), rng)
    kept = tiny_tts.model.static_decoder
    assert kept.key[:2] == (2, static_capacity(800, tiny_tts.config.max_seq_len)) and not kept.busy
    tiny_tts.warm_up(max_frames=300, prompt_len=500, cuda_graph=True)
    kept = tiny_tts.model.static_decoder
    assert torch.equal(tiny_tts.generate(text, **options).codes, cold)
    assert tiny_tts.model.static_decoder is kept  # the request fell into the warmed bucket
    tiny_tts.warm_up(max_frames=1, prompt_len=1)  # shorter than the warm-up's own prompt: still a valid request


@pytest.mark.parametrize("kwargs, match", [(dict(max_frames=0), "max_frames=0"), (dict(takes=1.5), "takes=1.5"),
                                           (dict(prompt_len=10**6), "context holds")])
def test_warm_up_rejects_bad_sizes(tiny_tts, kwargs, match):
    with pytest.raises(ParameterError, match=match):
        tiny_tts.warm_up(**kwargs)


def test_a_long_recording_is_refused_before_its_samples_are_read(tmp_path, tiny_tts, monkeypatch):
    """The length comes from the file's header: an hour-long file must not be read into memory just to be refused."""
    import soundfile

    long_file = tmp_path / "ten-minutes.wav"
    soundfile.write(str(long_file), np.zeros(600 * 8000, np.int16), 8000, subtype="PCM_16")
    monkeypatch.setattr(soundfile, "read", lambda *a, **k: pytest.fail("the samples were read"))
    with pytest.raises(AudioError, match="is 10.0 min long"):
        tiny_tts.encode_voice(long_file, "A transcript.")


def test_speaker_labels_with_leading_zeros_are_the_plain_label(tiny_tts, voice):
    """`<|speaker:00|>` is speaker 0 for the voice check and in the prompt the model sees (the label is plain text
    to it): the same codes as `<|speaker:0|>`."""
    plain = tiny_tts.generate("<|speaker:0|>Hello there.", [voice], seed=4, max_frames=6)
    padded = tiny_tts.generate("<|speaker:00|>Hello there.", [voice], seed=4, max_frames=6)
    assert torch.equal(plain.codes, padded.codes)
    batches, _ = tiny_tts.plan(["<|speaker:000|>Line."], [voice], 200)
    assert batches[0][0].startswith("<|speaker:0|>")


def test_stream_checks_its_inputs_when_called(tiny_tts, voice):
    """Mistakes surface at the call, not at the first `next()` somewhere later in the caller's loop."""
    with pytest.raises(TextError, match="empty"):
        tiny_tts.stream("   ", [voice])
    with pytest.raises(ParameterError, match="check_every=0"):
        tiny_tts.stream("Hi.", [voice], check_every=0)
