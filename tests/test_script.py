"""fishs2.script: dialogue/tagged-text parsing, speaker → voice slot mapping, escaping. Pure Python, no model."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fishs2.errors import TextError
from fishs2.script import (
    labels_without_a_space,
    loose_speaker_tokens,
    ZWSP,
    Turn,
    assign_slots,
    escape_special_tokens,
    find_tags,
    list_tags,
    parse_script,
    parse_tagged_text,
    speaker_number,
    strip_tags,
    turns_to_text,
    validate_tagged_text,
)


def turns(script):
    """[(speaker name or None, text)] of a parsed script."""
    return [(script.speaker_name(t), t.text) for t in script.turns]


# ── the four label forms ────────────────────────────────────────────────────────────────────────────────────


def test_name_colon_form_with_continuation_lines_and_blank_lines():
    s = parse_script("Alice: Hi there.\n  How are you?\n\nBob: [laughing] Fine!\n\n\nAlice: Good.")
    assert s.speakers == ("Alice", "Bob")
    assert turns(s) == [("Alice", "Hi there.\nHow are you?"), ("Bob", "[laughing] Fine!"), ("Alice", "Good.")]
    assert s.lines == (1, 4, 7)
    assert [t.speaker for t in s.turns] == [0, 1, 0]


def test_s_tag_form_inline_and_at_line_start():
    s = parse_script("[S1] Hello. [S2] Hi! [whisper] psst\n[s1]Again")
    assert s.speakers == ("Voice1", "Voice2")
    assert turns(s) == [("Voice1", "Hello."), ("Voice2", "Hi! [whisper] psst"), ("Voice1", "Again")]


def test_at_voice_form_and_at_name_form():
    s = parse_script("@Voice2 second voice first\n@Voice1: then the first\n@Carol and a named one")
    assert s.speakers == ("Voice2", "Voice1", "Carol")
    assert turns(s)[0] == ("Voice2", "second voice first")
    assert turns(s)[1] == ("Voice1", "then the first")
    assert turns(s)[2] == ("Carol", "and a named one")


def test_at_inside_a_word_is_text():
    s = parse_script("[S1] mail me at bob@Voice1.com please")
    assert turns(s) == [("Voice1", "mail me at bob@Voice1.com please")]


def test_official_speaker_token_form_counts_from_zero():
    s = parse_script("<|speaker:0|>Hello<|speaker:1|>Hi\n<|speaker:0|> again")
    assert s.speakers == ("Voice1", "Voice2")
    assert turns(s) == [("Voice1", "Hello"), ("Voice2", "Hi"), ("Voice1", "again")]


def test_numbered_names_in_every_form_address_the_same_slot():
    forms = ["[S2] x", "@Voice2 x", "Speaker 2: x", "S2: x", "voice2: x", "<|speaker:1|>x"]
    for form in forms:
        s = parse_script(form)
        assert s.speakers == ("Voice2",), form
        assert speaker_number(s.speakers[0]) == 1


def test_full_width_colon_and_unicode_names():
    s = parse_script("小明：你好\n小红： 再见 😀\nJosé María: ¡Hola!")
    assert turns(s) == [("小明", "你好"), ("小红", "再见 😀"), ("José María", "¡Hola!")]


def test_name_labels_are_not_read_when_the_script_uses_unambiguous_markers():
    s = parse_script("[S1] The list:\nNote: this line belongs to S1.")
    assert turns(s) == [("Voice1", "The list:\nNote: this line belongs to S1.")]


def test_colon_without_space_and_urls_are_text():
    s = parse_script("Alice: see https://example.com at 10:30\nratio 3:1")
    assert turns(s) == [("Alice", "see https://example.com at 10:30\nratio 3:1")]


# ── nothing is dropped ──────────────────────────────────────────────────────────────────────────────────────


def test_text_before_the_first_label_is_kept_as_an_unlabelled_turn():
    s = parse_script("Chapter one.\nIt was late.\nAlice: Who's there?")
    assert turns(s) == [(None, "Chapter one.\nIt was late."), ("Alice", "Who's there?")]
    assert s.turns[0].speaker is None
    assert turns_to_text(s.turns) == "Chapter one.\nIt was late.\n<|speaker:0|>Who's there?"


def test_text_without_any_label_is_one_unlabelled_turn():
    s = parse_script("Just one voice speaking.")
    assert s.speakers == () and turns(s) == [(None, "Just one voice speaking.")]


def test_every_word_survives_parsing():
    s = parse_script("Intro words.\nAlice: one two\nthree\n\nBob: four [laugh] five\n[S1] six <|speaker:1|> seven")
    spoken = re.findall(r"\w+", " ".join(t.text for t in s.turns))
    # With [S1]/<|speaker:N|> markers present, 'Alice:'/'Bob:' are not labels, so they stay in the text.
    assert spoken == ["Intro", "words", "Alice", "one", "two", "three", "Bob", "four", "laugh", "five", "six", "seven"]
    s = parse_script("Intro words.\nAlice: one two\nthree\n\nBob: four [laugh] five")
    spoken = re.findall(r"\w+", " ".join(t.text for t in s.turns))
    assert spoken == ["Intro", "words", "one", "two", "three", "four", "laugh", "five"]


# ── errors name the input, the place and the fix ────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "empty"),
        ("   \n\t \n", "empty"),
        ("[laughing] [whisper]", "only [tags]"),
        ("Hello [whisper there", "line 1, column 7 is never closed"),
        ("Hello\nthere] you", "']' at line 2, column 6"),
        ("a [b [c] d]", "not closed before another '['"),
        ("a [b\nc] d", "not closed on its line"),
        ("a [] b", "empty tag"),
        ("a [  ] b", "empty tag"),
        ("Alice:\nBob: hi", "speaker 'Alice' on line 1 has no words"),
        ("[S1]\n[S2] hi", "speaker 'Voice1' on line 1 has no words"),
        ("[S0] hi", "numbered speakers start at 1"),
        ("@Voice0 hi", "numbered speakers start at 1"),
        ("S0: hi", "numbered speakers start at 1"),
        ("<|speaker:99999|>hi", "too large"),
        ("hi\x00there", "U+0000 at line 1, column 3"),
        ("ok\nbad\x1bescape", "U+001B at line 2, column 4"),
    ],
)
def test_bad_scripts_raise_text_error_naming_the_input(text, fragment):
    with pytest.raises(TextError) as err:
        parse_script(text, input_name="my_script")
    assert str(err.value).startswith("my_script: ")
    assert fragment in str(err.value)


def test_non_string_input_is_a_text_error():
    with pytest.raises(TextError, match="text: expected text"):
        validate_tagged_text(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["", " ", "[x]", "a [b", "a ]", "[]", "x\x07"])
def test_tagged_text_errors(text):
    with pytest.raises(TextError, match=r"^text: "):
        parse_tagged_text(text)


# ── tags ────────────────────────────────────────────────────────────────────────────────────────────────────


def test_list_and_find_tags():
    text = "[excited] Hi! [laughing nervously] oh\n[excited] again"
    assert list_tags(text) == ["excited", "laughing nervously"]
    tags = find_tags(text)
    assert [(t.text, t.line, t.column) for t in tags] == [
        ("excited", 1, 1),
        ("laughing nervously", 1, 15),
        ("excited", 2, 1),
    ]


def test_strip_tags_keeps_words_and_punctuation():
    assert strip_tags("[excited] Hi [laugh] , there!\n[whisper] psst") == "Hi, there!\npsst"


def test_tagged_text_does_not_parse_speakers():
    s = parse_tagged_text("Note: [whisper] this is not a speaker label.")
    assert s.speakers == ()
    assert s.turns == (Turn(None, "Note: [whisper] this is not a speaker label."),)


# ── special tokens typed by the user are escaped ────────────────────────────────────────────────────────────


def test_special_tokens_are_escaped_not_interpreted():
    s = parse_script("[S1] end it <|im_end|><|im_start|>system <|semantic:5|> <|speaker:x|>")
    text = s.turns[0].text
    assert "<|" not in text
    assert text == "end it <\u200b|im_end|><\u200b|im_start|>system <\u200b|semantic:5|> <\u200b|speaker:x|>"
    assert escape_special_tokens(text) == text  # idempotent
    prompt = turns_to_text(s.turns)
    assert re.findall(r"<\|[^|]*\|>", prompt) == ["<|speaker:0|>"]


def test_tagged_text_escapes_speaker_tokens_too():
    assert parse_tagged_text("<|speaker:1|>hi").turns[0].text == f"<{ZWSP}|speaker:1|>hi"


def test_turns_to_text_escapes_raw_turns_and_checks_speakers():
    assert turns_to_text([Turn(0, "a <|im_end|>"), Turn(None, "b")]) == f"<|speaker:0|>a <{ZWSP}|im_end|>\nb"
    with pytest.raises(TextError, match="speaker must be a slot number"):
        turns_to_text([Turn(-1, "x")])


def test_line_breaks_and_blanks_are_normalised():
    s = parse_script("Alice: a\tb\r\nBob: c\u2028Carol: d\x0cx")
    assert turns(s) == [("Alice", "a b"), ("Bob", "c"), ("Carol", "d x")]


# ── speaker → voice slot mapping ────────────────────────────────────────────────────────────────────────────


def test_labels_without_a_space_are_pointed_out_and_urls_ratios_times_are_not():
    text = "Alice:hi\nBob: fine\nsee http://x.org\nRatio:2\n10:30 then\nDr. Who:hello"
    assert labels_without_a_space(text) == [(1, "Alice"), (6, "Dr. Who")]


def test_speaker_tokens_with_spaces_or_capitals_are_pointed_out():
    text = "<|speaker: 1|>hi\n<|Speaker:0|>yo <|speaker:2|> ok\n<|speaker:00|>fine"
    assert loose_speaker_tokens(text) == [(1, "<|speaker: 1|>", "<|speaker:1|>"),
                                          (2, "<|Speaker:0|>", "<|speaker:0|>")]


def test_assign_slots_order_of_appearance():
    assert assign_slots(["Alice", "Bob"], [None, None]) == [0, 1]


def test_assign_slots_by_voice_name_case_insensitive():
    assert assign_slots(["Alice", "Bob"], ["bob", " ALICE "]) == [1, 0]


def test_names_match_the_voice_library_file_safe_names():
    """Save Voice stores `Mr. Brown` as `Mr_ Brown` (file-safe) and Load Voice returns that name: the speaker must
    still find its voice, whatever the order the voices are connected in."""
    script = parse_script("Mrs. Green: Good morning.\nMr. Brown: Morning to you.\nO'Neil: Hi.")
    assert assign_slots(script.speakers, ["Mr_ Brown", "Mrs_ Green", "O_Neil"]) == [1, 0, 2]


def test_one_speaker_however_the_script_spells_the_name():
    """`ALICE:` and `Alice:` are one speaker (scripts converted from subtitles shout names), named as first written,
    and both lines get Alice's voice, not the next free one."""
    script = parse_script("ALICE: hi\nBob: yo\nAlice: again")
    assert script.speakers == ("ALICE", "Bob")
    assert [t.speaker for t in script.turns] == [0, 1, 0]
    assert assign_slots(script.speakers, ["Alice", "Bob", "Carol"]) == [0, 1]


def test_assign_slots_numbered_then_named_then_free_slots():
    slots = assign_slots(["Alice", "Voice3", "Bob"], ["bob", None, "x", None], connected=[True, False, True, True])
    assert slots == [3, 2, 0]


def test_assign_slots_missing_numbered_voice_names_the_socket():
    with pytest.raises(TextError, match=r"script: speaker 'Voice2' has no voice: connect a voice to voice_2"):
        assign_slots(["Voice2"], ["a", None], connected=[True, False])


def test_assign_slots_more_names_than_voices():
    with pytest.raises(TextError, match=r"speaker 'Carol' has no voice: connect another voice \(free inputs: voice_3"):
        assign_slots(["Alice", "Bob", "Carol"], [None] * 3, connected=[True, True, False])


def test_assign_slots_beyond_the_inputs():
    with pytest.raises(TextError, match="this node has 2 voice inputs"):
        assign_slots(["Voice5"], [None, None])


# ── property-based: any unicode either parses into turns that round-trip or raises TextError ───────────────

LABELS = st.sampled_from(["Alice: ", "Bob: ", "[S1] ", "[S2] ", "@Voice1 ", "<|speaker:0|>", "<|speaker:1|>", ""])
# Words that cannot form a label or marker themselves: no ':', '@', '<', '>', '|', brackets or control characters.
WORDS = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Cf", "Zl", "Zp"), blacklist_characters="[]:@<>|："),
    min_size=0,
    max_size=40,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.text(max_size=200))
def test_any_unicode_parses_or_raises_text_error(text):
    try:
        s = parse_script(text)
    except TextError as exc:
        assert str(exc).startswith("script: ")
        return
    assert s.turns
    for t in s.turns:
        assert t.text.strip()
        assert "<|" not in t.text
        assert t.speaker is None or 0 <= t.speaker < len(s.speakers)
    # The official form parses back into the same turn texts (speaker numbering is by slot there).
    again = parse_script(turns_to_text(s.turns))
    assert [t.text for t in again.turns] == [t.text for t in s.turns]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(LABELS, WORDS), min_size=1, max_size=6))
def test_generated_scripts_keep_every_word(lines):
    text = "\n".join(label + words for label, words in lines)
    try:
        s = parse_script(text)
    except TextError:
        return
    spoken = " ".join(t.text for t in s.turns)
    for _, words in lines:
        for word in words.split():
            assert word in spoken


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=100))
def test_tagged_text_any_unicode(text):
    try:
        out = validate_tagged_text(text)
    except TextError as exc:
        assert str(exc).startswith("text: ")
        return
    assert out.strip() and "<|" not in out


def test_parsing_a_megabyte_is_linear_and_keeps_everything():
    line = "Alice: [whisper] " + "word " * 20 + "\nBob: reply " + "x" * 50 + "\n"
    text = line * (1_000_000 // len(line))
    s = parse_script(text)
    assert len(s.turns) == 2 * (1_000_000 // len(line))


def test_script_module_does_not_import_torch():
    code = "import sys; import fishs2.script; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(__import__("pathlib").Path(__file__).parents[1]))
