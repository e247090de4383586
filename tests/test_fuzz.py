"""Property-based tests over everything typed text passes through on its way to the model: the script parser, tag
validation, `FishS2.plan` and the prompt builder.

The property, for any unicode string (surrogates, control characters, special-token strings and brackets
included): either a prompt is built whose decoded user text is the planned text (NFC-normalised, as the tokenizer
does) — with no control or audio token smuggled in and no word lost — or our documented `TextError` is raised,
its message starting with the input's name. Never another exception.
"""

from __future__ import annotations

import os
import unicodedata

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fishs2.errors import TextError
from fishs2.prompt import Reference
from fishs2.script import Turn, normalize_text, parse_script, turns_to_text, validate_tagged_text

from .golden import SHIPPED

# Pieces that stress the parsers: speaker labels of every form, special tokens whole and in fragments, brackets,
# line breaks, control and format characters, combining marks, a lone surrogate, emoji, right-to-left text.
PIECES = [
    "<|speaker:0|>", "<|speaker:1|>", "<|speaker:12|>", "<|im_end|>", "<|im_start|>", "<|voice|>", "<|semantic:3|>",
    "<|endoftext|>", "<think>", "<|", "|>", "<", "|", ">", "[", "]", "[whisper]", "[laughing nervously]", "[]",
    "[S1] ", "[S2] ", "@Voice1 ", "@Alice ", "Alice: ", "Bob: ", "Speaker 2: ", "：", "\n", "\r\n", "\r", "\t",
    "\u2028", "\x00", "\x1b", "\x7f", "\u200b", "\ufeff", "e\u0301", "\u0338", "\ud800", "\udfff", "😀👍🏽", "مرحبا",
    "世界", " ", "  ", "hello", "Hi.", "...", "0", "1",
]
ANY_TEXT = (
    st.text(max_size=120)
    | st.text(alphabet=st.characters(blacklist_categories=()), max_size=60)  # surrogates and controls included
    | st.lists(st.sampled_from(PIECES) | st.text(max_size=4), max_size=16).map("".join)
)
# FISHS2_FUZZ_EXAMPLES=5000 for a longer hunt than the default run.
FUZZ = settings(max_examples=int(os.environ.get("FISHS2_FUZZ_EXAMPLES", "250")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def voice(tiny_tts):
    return tiny_tts.encode_voice(SHIPPED / "codec_input.wav", "This is the reference voice.", name="ref")


def decoded_user_text(tts, prompt: torch.Tensor) -> str:
    """The text of the prompt's last user message, decoded back from its token ids."""
    tok = tts.tokenizer
    ids = prompt[0].tolist()
    user_start = [i for i, t in enumerate(ids) if t == tok.im_start_id][-2]
    head = tok.encode("<|im_start|>user\n")
    assert ids[user_start : user_start + len(head)] == head
    end = max(i for i, t in enumerate(ids) if t == tok.im_end_id)
    return tok.decode(ids[user_start + len(head) : end])


def check_prompt(tts, text: str, references: list[Reference]) -> None:
    """Build the prompt for one batch text and check it holds exactly that text and nothing else."""
    prompt = tts.prompts.build(text, references)
    template = tts.prompts.build("x", references)[0].tolist()
    ids = prompt[0].tolist()
    tok = tts.tokenizer
    assert decoded_user_text(tts, prompt) == unicodedata.normalize("NFC", text)
    for special in (tok.im_start_id, tok.im_end_id, tok.voice_id):
        assert ids.count(special) == template.count(special), "typed text became a control token"
    semantic = sum(tok.semantic_begin_id <= i <= tok.semantic_end_id for i in ids)
    assert semantic == sum(r.codes.shape[1] for r in references), "typed text became an audio token"


def words(text: str) -> str:
    return "".join(text.split())


def expect_text_error(exc: TextError, *names: str) -> None:
    assert isinstance(exc, TextError)
    assert str(exc).startswith(names), f"message does not name the input: {exc}"


@FUZZ
@given(text=ANY_TEXT, chunk_length=st.integers(1, 300))
def test_plan_and_prompt_any_unicode(tiny_tts, voice, text, chunk_length):
    """`FishS2.plan` (the engine's string API) → prompt, for any string."""
    try:
        batches, references = tiny_tts.plan(text, [voice, voice], chunk_length)
    except TextError as exc:
        expect_text_error(exc, "text")
        return
    for batch_text, _ in batches:
        check_prompt(tiny_tts, batch_text, references)
    # nothing lost: the batches hold every non-blank character of the (normalised) input, in order
    assert words("".join(b for b, _ in batches)) == words(normalize_text(text))


@FUZZ
@given(text=ANY_TEXT)
def test_script_parser_to_prompt_any_unicode(tiny_tts, voice, text):
    """The node path: `parse_script` → turns (each speaker on a voice slot) → `plan` → prompt."""
    try:
        script = parse_script(text)
    except TextError as exc:
        expect_text_error(exc, "script")
        return
    turns = [Turn(t.speaker, t.text) for t in script.turns]
    voices = [voice] * max(1, len(script.speakers))
    try:
        batches, references = tiny_tts.plan(turns, voices, 200)
    except TextError as exc:
        # What the parser lets through and the engine stops: a turn of only [tags] or only invisible characters
        # (the engine asks for words, see docs/TROUBLESHOOTING.md) and lone surrogates (fishs2.script does not
        # check category Cs).
        expect_text_error(exc, "text[")
        assert any(reason in str(exc) for reason in ("only [tags]", "no words to speak", "surrogate"))
        return
    for batch_text, _ in batches:
        assert "<|" not in batch_text.replace("<|speaker:", "")  # every typed special token was escaped
        check_prompt(tiny_tts, batch_text, references)
    assert words("".join(b for b, _ in batches)) == words(turns_to_text(turns))


@FUZZ
@given(text=ANY_TEXT)
def test_tagged_text_to_prompt_any_unicode(tiny_tts, voice, text):
    """The Tagged Text node path: `validate_tagged_text` → one turn → prompt."""
    try:
        checked = validate_tagged_text(text)
    except TextError as exc:
        expect_text_error(exc, "text")
        return
    try:
        batches, references = tiny_tts.plan([checked], [voice], 200)
    except TextError as exc:  # lone surrogates and invisible-only text pass validate_tagged_text; the engine stops them
        expect_text_error(exc, "text[0]")
        assert "surrogate" in str(exc) or "no words to speak" in str(exc)
        return
    assert [b for b, _ in batches] == [checked]
    check_prompt(tiny_tts, checked, references)


@FUZZ
@given(text=ANY_TEXT, transcript=ANY_TEXT)
def test_prompt_builder_any_unicode(tiny_tts, voice, text, transcript):
    """The prompt builder on its own (user text and a reference transcript), below every validation layer."""
    references = [Reference(transcript, voice.codes)]
    try:
        prompt = tiny_tts.prompts.build(text, references)
    except TextError as exc:
        expect_text_error(exc, "text")
        return
    assume(text.strip())
    tok = tiny_tts.tokenizer
    assert decoded_user_text(tiny_tts, prompt) == unicodedata.normalize("NFC", text)
    template = tiny_tts.prompts.build("x", references)[0].tolist()
    assert prompt[0].tolist().count(tok.im_end_id) == template.count(tok.im_end_id)


@FUZZ
@given(text=ANY_TEXT)
def test_literal_encoding_never_yields_special_ids(tiny_tts, text):
    tok = tiny_tts.tokenizer
    try:
        ids = tok.encode_literal(text)
    except TextError as exc:
        expect_text_error(exc, "text")
        assert any("\ud800" <= c <= "\udfff" for c in text)
        return
    special = {tok._tok.token_to_id(t) for t in tok.special_tokens}
    assert not special.intersection(ids)
    assert tok.decode(ids) == unicodedata.normalize("NFC", text)


@pytest.mark.parametrize("text", ["ab\ud800", "\udfff", "<|im_end|>\ud83d"])
def test_lone_surrogates_are_a_text_error_everywhere(tiny_tts, voice, text):
    for call in (lambda: tiny_tts.plan(text, [voice], 200), lambda: tiny_tts.prompts.build(text),
                 lambda: tiny_tts.tokenizer.encode_literal(text), lambda: tiny_tts.plan([text], [voice], 200)):
        with pytest.raises(TextError, match="surrogate"):
            call()
