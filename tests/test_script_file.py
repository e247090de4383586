"""Long-form scripts from txt / srt / json: speakers, cue times, long turns split at sentence ends, and nothing
dropped without a note — every word of the file reaches a turn, in order."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fishs2.errors import TextError
from fishs2.generate import Segment
from fishs2.script import ZWSP, Turn, strip_tags
from fishs2.script_file import load_script_file, parse_script_source, split_text
from fishs2.timeline import build_timeline

from .comfyui import creator
from .comfyui.harness import run


def words(text: str) -> list[str]:
    return text.replace(ZWSP, "").split()


# ── splitting ──────────────────────────────────────────────────────────────────────────────────────────────


def test_split_prefers_sentence_ends_then_clauses():
    text = "First sentence here. Second one is a bit longer, with a clause. Third!"
    # the middle sentence (45 bytes) is over the limit: it is cut at its comma, and the pieces are packed
    assert split_text(text, 40) == ["First sentence here.", "Second one is a bit longer,", "with a clause. Third!"]
    assert split_text(text, 1000) == [text]
    assert split_text("你好世界。这是测试。再见。", 30) == ["你好世界。这是测试。", "再见。"]  # 15 bytes a sentence
    assert split_text("你好世界这是测试再见", 16) == ["你好世界这", "是测试再见"]  # no punctuation: between characters


def test_split_never_cuts_a_tag_and_never_leaves_only_tags():
    text = "Hello there. [whispering very quietly] Goodbye now. [laughing]"
    pieces = split_text(text, 20)
    assert all(_has_words(p) for p in pieces)
    assert "[whispering very quietly]" in " ".join(pieces) and "[laughing]" in pieces[-1]
    assert words(" ".join(pieces)) == words(text)


def _has_words(piece: str) -> bool:
    return bool(strip_tags(piece).strip())


word = st.text(alphabet=st.sampled_from("abcdeéß你好"), min_size=1, max_size=12)
token = st.one_of(word, word.map(lambda w: w + "."), word.map(lambda w: w + ","), word.map(lambda w: f"[{w}]"))


@settings(max_examples=150, deadline=None)
@given(st.lists(token, min_size=1, max_size=60).filter(lambda ts: any(not t.startswith("[") for t in ts)),
       st.integers(min_value=16, max_value=120))
def test_split_keeps_every_word_in_order_within_the_limit(tokens, limit):
    text = " ".join(tokens)
    pieces = split_text(text, limit)
    # every character in order (a word longer than the limit is cut between characters, so compare glyphs)
    assert "".join(words(" ".join(pieces))) == "".join(words(text))
    assert all(_has_words(p) for p in pieces)
    for p in pieces:
        if "[" not in p:  # only a lone tag joining a neighbour may push a piece past the limit
            assert len(p.encode()) <= limit
        assert p.count("[") == p.count("]")  # tags are never cut


# ── txt ────────────────────────────────────────────────────────────────────────────────────────────────────


def test_txt_keeps_text_before_the_first_label_and_splits_long_turns():
    long_line = " ".join(f"Sentence number {i} is here." for i in range(40))
    text = f"A preamble before anyone speaks.\nAlice: Hi.\nBob: {long_line}\nAlice: Bye [whisper] now."
    loaded = parse_script_source(text, "txt", "talk.txt", max_turn_bytes=200)
    turns = loaded.turns
    assert turns[0] == Turn(None, "A preamble before anyone speaks.")
    assert loaded.speakers == ("Alice", "Bob")
    bob = [t for t in turns if t.speaker == 1]
    assert len(bob) > 1 and all(len(t.text.encode()) <= 200 for t in bob)
    assert words(" ".join(t.text for t in bob)) == words(long_line)
    assert all(t.text.endswith(".") for t in bob)  # cut at sentence ends
    assert turns[-1] == Turn(0, "Bye [whisper] now.")
    assert loaded.sources[0] == "line 1" and loaded.sources[-1] == "line 4"
    assert any("split" in w for w in loaded.warnings)
    assert words(" ".join(t.text for t in turns)) == words(text.replace("Alice:", "").replace("Bob:", ""))


def test_txt_without_labels_is_one_speaker_turn_by_turn():
    prose = "\n".join(f"Line {i} of a long story, told slowly and with care." for i in range(30))
    loaded = parse_script_source(prose, "txt", "story.txt", max_turn_bytes=120)
    assert loaded.speakers == () and all(t.speaker is None for t in loaded.turns)
    assert len(loaded.turns) > 10 and words(" ".join(t.text for t in loaded.turns)) == words(prose)


# ── srt ────────────────────────────────────────────────────────────────────────────────────────────────────

SRT = """1
00:00:01,000 --> 00:00:02,500
ALICE: <i>Did you</i> hear that?

2
00:00:03,000 --> 00:00:04,250
Over there.

3
00:00:04,500 --> 00:00:05,000
[THUNDER]

4
00:00:05,000 --> 00:00:07,000 X1:10
{\\an8}BOB: [laughing] It's just
the wind.
"""


def test_srt_speakers_times_markup_and_skipped_cues():
    loaded = parse_script_source(SRT, "srt", "film.srt")
    assert loaded.turns == (Turn(0, "Did you hear that?"), Turn(0, "Over there."), Turn(1, "[laughing] It's just the wind."))
    assert loaded.speakers == ("ALICE", "BOB")
    assert loaded.times == ((1.0, 2.5), (3.0, 4.25), (5.0, 7.0))
    assert loaded.sources == ("cue 1 (line 3)", "cue 2 (line 7)", "cue 4 (line 15)")
    assert any("formatting mark" in w for w in loaded.warnings)
    assert any("cue 3" in w and "[THUNDER]" in w and "skipped" in w for w in loaded.warnings)


def test_srt_errors_name_file_and_line():
    with pytest.raises(TextError, match=r"^film\.srt, line 2: expected a cue time line"):
        parse_script_source("1\n00:00:01 -> 00:00:02\nHi\n", "srt", "film.srt")
    with pytest.raises(TextError, match=r"^film\.srt, line 2: the cue ends"):
        parse_script_source("1\n00:00:05,000 --> 00:00:02,000\nHi\n", "srt", "film.srt")


# ── json ───────────────────────────────────────────────────────────────────────────────────────────────────


def test_json_forms_and_unused_keys():
    data = [
        {"speaker": "Alice", "text": "Hello.", "start": 1, "end": 2, "emotion": "happy"},
        {"text": "Still Alice."},
        {"speaker": 1, "text": "Slot one is Voice2."},
        ["Speaker 3", "Numbered names become slots."],
        "Bob: A string item is a script line.",
    ]
    loaded = parse_script_source(json.dumps(data), "json", "lines.json")
    assert [t.speaker for t in loaded.turns] == [0, 0, 1, 2, 3]
    assert loaded.speakers == ("Alice", "Voice2", "Voice3", "Bob")
    assert loaded.times[0] == (1.0, 2.0) and loaded.times[1] is None
    assert loaded.turns[-1].text == "A string item is a script line."
    assert any("'emotion' (1×)" in w for w in loaded.warnings)
    wrapped = parse_script_source(json.dumps({"lines": data[:2]}), "json", "lines.json")
    assert wrapped.turns == loaded.turns[:2]


@pytest.mark.parametrize("data, match", [
    ([{"speaker": "A"}], r"^x\.json, item 1: has no 'text'"),
    ([{"text": "   "}], r"^x\.json, item 1: has no words"),
    ([{"text": "[only a tag]"}], r"^x\.json, item 1: the text holds only \[tags\]"),
    ([{"speaker": -1, "text": "x"}], r"^x\.json, item 1: speaker slot -1"),
    ({"other": []}, r"^x\.json: expected a list of lines"),
    ([3], r"^x\.json, item 1: expected an object"),
])
def test_json_errors_name_the_item(data, match):
    with pytest.raises(TextError, match=match):
        parse_script_source(json.dumps(data), "json", "x.json")
    with pytest.raises(TextError, match=r"^x\.json: is not valid JSON \(line 1"):
        parse_script_source("[{", "json", "x.json")


def test_timeline_json_loads_back_as_a_script():
    turns = [Turn(0, "Hi [whisper] you."), Turn(1, "Hello <" + ZWSP + "|im_end|> there.")]
    segments = [Segment("a", [0], torch.zeros(10, 2, dtype=torch.long), False),
                Segment("b", [1], torch.zeros(10, 3, dtype=torch.long), False)]
    text = build_timeline(segments, turns, ["Alice", "Bob"]).to_json(fps=25)
    loaded = parse_script_source(text, "json", "timeline.json")
    assert loaded.turns == tuple(turns) and loaded.speakers == ("Alice", "Bob") and not loaded.warnings
    assert loaded.times[1] == (2 * 2048 / 44100, 5 * 2048 / 44100)


# ── files ──────────────────────────────────────────────────────────────────────────────────────────────────


def test_load_file_encodings_and_errors(tmp_path):
    (tmp_path / "a.txt").write_bytes("\ufeffAlice: Grüße.".encode("utf-8"))
    assert load_script_file(tmp_path / "a.txt").turns == (Turn(0, "Grüße."),)
    (tmp_path / "b.srt").write_bytes(SRT.encode("utf-16"))
    assert load_script_file(tmp_path / "b.srt").speakers == ("ALICE", "BOB")
    (tmp_path / "c.txt").write_bytes(b"Alice: \xff\xfe\xfa broken")
    with pytest.raises(TextError, match=r"^c\.txt: is not UTF-8"):
        load_script_file(tmp_path / "c.txt")
    (tmp_path / "d.docx").write_text("x")
    with pytest.raises(TextError, match=r"^d\.docx: unknown script type"):
        load_script_file(tmp_path / "d.docx")
    with pytest.raises(TextError, match=r"^missing\.txt: file not found"):
        load_script_file(tmp_path / "missing.txt")
    (tmp_path / "e.txt").write_text("  \n\n")
    with pytest.raises(TextError, match=r"^e\.txt: is empty"):
        load_script_file(tmp_path / "e.txt")


def test_long_script_generates_turn_by_turn_with_nothing_dropped(tiny_tts, tmp_path):
    """Every turn of a file, the preamble included, becomes a segment; lines at the frame limit keep their last
    frame and are flagged in the timeline."""
    lines = ["Opening words before any label."] + [f"{'Alice' if i % 2 else 'Bob'}: Line {i} of the script." for i in range(7)]
    (tmp_path / "long.txt").write_text("\n".join(lines), encoding="utf-8")
    loaded = load_script_file(tmp_path / "long.txt")
    gen = tiny_tts.generate(list(loaded.turns), seed=5, max_frames=3, chunk_length=1)
    assert [s.turn_indices for s in gen.segments] == [[i] for i in range(len(loaded.turns))]
    assert gen.segments[0].text == "Opening words before any label."
    tl = build_timeline(gen.segments, loaded.turns, loaded.speakers)
    assert [l.plain_text for l in tl.lines] == [t.text for t in loaded.turns]
    limited = [l for l in tl.lines if l.hit_frame_limit]
    assert limited and all(l.frames == 3 for l in limited)
    assert any("max_frames" in w for w in tl.warnings)


# ── node ───────────────────────────────────────────────────────────────────────────────────────────────────


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    with creator.folders(tmp_path_factory.mktemp("creator_script")):
        yield creator.load()


@pytest.fixture
def input_dir(pack, tmp_path):
    with creator.folders(tmp_path):
        yield tmp_path / "input"


def voice(pack, name):
    return pack.module("fishs2.voice").Voice(codes=torch.zeros(10, 5, dtype=torch.long), text="ref", name=name)


def test_load_script_file_node_maps_speakers_to_voices(pack, input_dir):
    (input_dir / "scene.srt").write_text(SRT, encoding="utf-8")
    (input_dir / "notes.png").write_bytes(b"x")
    node = pack.nodes["FishS2LoadScriptFile"]
    assert node.GET_SCHEMA().inputs[0].options == ["scene.srt"]
    bob, alice = voice(pack, "Bob"), voice(pack, "")
    out = run(node, file="scene.srt", max_turn_bytes=400, voice_1=bob, voice_2=alice)
    script, info = out.outputs
    assert script.speaker_names == ("BOB", "ALICE") and script.voices == (bob, alice)  # BOB matched by name
    assert [t.speaker for t in script.turns] == [1, 1, 0]
    assert "3 turn(s) (srt)" in info and "[THUNDER]" in info
    fingerprint = node.fingerprint_inputs(file="scene.srt", max_turn_bytes=400)
    (input_dir / "scene.srt").write_text(SRT + "\n5\n00:00:08,000 --> 00:00:09,000\nALICE: More.\n", encoding="utf-8")
    assert node.fingerprint_inputs(file="scene.srt", max_turn_bytes=400) != fingerprint


def test_load_script_file_node_errors(pack, input_dir):
    node = pack.nodes["FishS2LoadScriptFile"]
    errors = pack.module("fishs2.errors")
    assert "outside ComfyUI's input folder" in node.validate_inputs(file="../secret.txt")
    assert "was not found" in node.validate_inputs(file="nope.txt")
    (input_dir / "two.txt").write_text("Alice: Hi.\nBob: Hello.", encoding="utf-8")
    with pytest.raises(errors.TextError, match="^voice_1: no voice is connected"):
        run(node, file="two.txt", max_turn_bytes=400)
    with pytest.raises(errors.TextError, match="^file: speaker 'Bob' has no voice"):
        run(node, file="two.txt", max_turn_bytes=400, voice_1=voice(pack, "Alice"))
