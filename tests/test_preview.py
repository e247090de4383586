"""Live preview: chunks arrive while generation runs, join into the final audio, and change nothing."""

from __future__ import annotations

import io

import pytest
import soundfile
import torch

from fishs2.errors import ParameterError
from fishs2.generate import FrameEvent, SegmentEvent
from fishs2.preview import LivePreview, generate_with_preview

TEXT = "<|speaker:0|>First line here.<|speaker:0|>A second line."
OPTIONS = dict(max_frames=5, chunk_length=1)


def joined(chunks, take=0):
    mine = [c for c in chunks if c.take == take]
    position = 0
    for c in mine:
        assert c.start == position  # contiguous, in order
        position = c.end
    return torch.cat([c.audio for c in mine])


@pytest.mark.parametrize("every_frames", [None, 2])
def test_preview_changes_nothing_and_joins_into_the_final_audio(tiny_tts, every_frames):
    chunks = []
    with_preview = generate_with_preview(tiny_tts, TEXT, seed=9, takes=2, every_frames=every_frames,
                                         preview_takes=(0, 1), on_chunk=chunks.append, **OPTIONS)
    plain = tiny_tts.generate_takes(TEXT, seed=9, takes=2, **OPTIONS)
    for a, b in zip(with_preview, plain):
        assert a.seed == b.seed and torch.equal(a.codes, b.codes)
        assert [s.hit_frame_limit for s in a.segments] == [s.hit_frame_limit for s in b.segments]
    for take, generation in enumerate(plain):
        final = tiny_tts.decode(generation.codes)[0]
        audio = joined(chunks, take)
        assert audio.shape == final.shape
        assert (audio - final).abs().max() <= 1e-4
    lines = [c for c in chunks if c.take == 0 and c.segment_done]
    assert len(lines) == 2  # one chunk ends each finished line
    if every_frames is None:
        assert all(c.segment_done for c in chunks)
    else:
        assert any(not c.segment_done and c.audio.shape[-1] == 2 * 2048 for c in chunks)


def test_first_chunk_arrives_before_generation_finishes(tiny_tts):
    log = []
    preview = LivePreview(tiny_tts.codec, every_frames=2)
    for event in tiny_tts.stream(TEXT, seed=9, **OPTIONS):
        log.append("frame" if isinstance(event, FrameEvent) else "segment")
        log += ["chunk"] * len(preview.feed(event))
    assert "chunk" in log and log.index("chunk") < log.index("segment") < len(log) - 1
    frames_before = log[: log.index("chunk")].count("frame")
    assert frames_before == 2


def test_first_chunks_are_short_then_grow_to_every_frames(tiny_tts):
    """With first_frames the first audio comes after a few frames; chunks then double up to every_frames, and a
    finished line still ends in a chunk of whatever is left."""
    from fishs2.generate import Segment

    codes = torch.randint(0, tiny_tts.codec.codebook_size, (10, 20))  # a 20-frame line, streamed frame by frame, then finished
    events = [FrameEvent(0, 0, codes[:, i]) for i in range(20)]
    events.append(SegmentEvent(0, 0, Segment("line", [0], codes, False)))
    preview = LivePreview(tiny_tts.codec, every_frames=5, first_frames=1)
    chunks = [c for e in events for c in preview.feed(e)]
    assert [c.audio.shape[-1] // 2048 for c in chunks] == [1, 2, 4, 5, 5, 3]  # 1 + 2 + 4 + 5 + 5, then the rest
    assert chunks[-1].segment_done and not any(c.segment_done for c in chunks[:-1])
    joined = torch.cat([c.audio for c in chunks])
    assert (joined - tiny_tts.decode(codes)[0]).abs().max() <= 1e-4


def test_only_selected_takes_are_previewed(tiny_tts):
    preview = LivePreview(tiny_tts.codec, takes=(1,))
    chunks = [c for e in tiny_tts.stream(TEXT, seed=2, takes=2, **OPTIONS) for c in preview.feed(e)]
    assert chunks and {c.take for c in chunks} == {1}


def test_chunk_wav_bytes_is_a_playable_file(tiny_tts):
    preview = LivePreview(tiny_tts.codec)
    events = list(tiny_tts.stream("Hello.", seed=1, max_frames=3))
    chunk = [c for e in events for c in preview.feed(e)][0]
    data, rate = soundfile.read(io.BytesIO(chunk.wav_bytes()), dtype="float32")
    assert rate == 44100 and data.shape == (chunk.audio.shape[-1],)
    assert abs(data - chunk.audio.clamp(-1, 1).numpy()).max() <= 0.5 / 32768 + 1e-7


def test_bad_options_and_events(tiny_tts):
    with pytest.raises(ParameterError, match="^every_frames: "):
        LivePreview(tiny_tts.codec, every_frames=0)
    with pytest.raises(ParameterError, match="^first_frames: must be"):
        LivePreview(tiny_tts.codec, every_frames=4, first_frames=0)
    with pytest.raises(ParameterError, match="^first_frames: needs every_frames"):
        LivePreview(tiny_tts.codec, first_frames=4)
    with pytest.raises(ParameterError, match="^event: "):
        LivePreview(tiny_tts.codec).feed(type("Other", (), {"take": 0})())


def test_websocket_message_carries_a_playable_chunk(tiny_tts):
    import base64

    from .comfyui import creator

    live = creator.load().module("nodes.live_preview")
    sent = []
    send = live.make_sender("17", "prompt-1", send_sync=lambda event, data: sent.append((event, data)))
    generate_with_preview(tiny_tts, "Hello there.", seed=4, max_frames=3, on_chunk=send)
    assert sent and all(event == live.EVENT == "fishs2.preview" for event, _ in sent)
    message = sent[0][1]
    assert message["node"] == "17" and message["prompt_id"] == "prompt-1" and message["start"] == 0
    data, rate = soundfile.read(io.BytesIO(base64.b64decode(message["wav"])), dtype="float32")
    assert rate == message["sample_rate"] == 44100 and len(data) == message["samples"]
    assert message["samples"] % 2048 == 0 and 0 < message["samples"] <= 3 * 2048
    failing = live.make_sender("17", send_sync=lambda event, data: 1 / 0)
    generate_with_preview(tiny_tts, "Hello there.", seed=4, max_frames=2, on_chunk=failing)  # never raises


def test_an_exception_in_on_chunk_stops_generation_and_the_model_stays_usable(tiny_tts):
    class Cancel(Exception):
        pass

    def cancel(chunk):
        raise Cancel

    with pytest.raises(Cancel):
        generate_with_preview(tiny_tts, TEXT, seed=9, on_chunk=cancel, every_frames=1, **OPTIONS)
    again = generate_with_preview(tiny_tts, TEXT, seed=9, on_chunk=lambda c: None, **OPTIONS)
    assert torch.equal(again[0].codes, tiny_tts.generate(TEXT, seed=9, **OPTIONS).codes)
    with pytest.raises(ParameterError, match="^seed="):
        generate_with_preview(tiny_tts, TEXT, seed="x", on_chunk=lambda c: None, **OPTIONS)


def test_chunks_decode_without_cudnn_benchmark_and_restore_it(tiny_tts, monkeypatch):
    """Benchmark mode would time every convolution for each new chunk length; the preview turns it off while it
    decodes and puts the caller's setting back."""
    seen = []
    decode_stream = tiny_tts.codec.decode_stream
    monkeypatch.setattr(tiny_tts.codec, "decode_stream",
                        lambda *a, **k: seen.append(torch.backends.cudnn.benchmark) or decode_stream(*a, **k))
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    preview = LivePreview(tiny_tts.codec, every_frames=2)
    chunks = [c for e in tiny_tts.stream("Hello there.", seed=1, max_frames=6) for c in preview.feed(e)]
    assert chunks and seen == [False] * len(chunks) and torch.backends.cudnn.benchmark is True
