"""Dialogue scripts and tagged text → turns. Pure Python: no torch, safe to import anywhere.

A *script* is what a person types: one or more speakers' lines with inline `[tags]` (free-form stage directions
such as `[whisper]` or `[laughing nervously]` that S2 Pro reads as style instructions). This module turns it into
`Turn(speaker, text)` records and back into the official prompt text form `<|speaker:N|>text`.

Speaker labels (any of these forms may start a turn)::

    <|speaker:0|>Hello          official form; N is the 0-based voice slot, may appear anywhere in a line
    [S1] Hello                  1-based slot (Dia style), may appear anywhere in a line
    @Voice1 Hello               1-based slot (the core Fish Audio node's convention), anywhere after whitespace
    @Alice Hello                a named speaker, at the start of a line (`@Alice: Hello` works too)
    Alice: Hello                a named speaker, at the start of a line (only when the script uses none of the
                                forms above, so that "Note: ..." in a tagged script is not taken for a speaker)

Names that spell a slot number - `S2`, `Speaker 2`, `Voice2` (any case) - mean slot 2 (0-based 1) in every form,
so `[S2]`, `@Voice2`, `Speaker 2:` and `<|speaker:1|>` all address the same voice. Other names are matched to
voices by `assign_slots`.

Rules that differ from the official code, on purpose:

* **Text before the first speaker label is kept**, never dropped (the official splitter drops it). It becomes a
  turn of its own with `speaker=None` (a narrator/preamble turn); `turns_to_text` writes it without a speaker
  tag, and `assign_slots` gives it to the first connected voice unless the caller chooses another slot.
* **User-typed special tokens are escaped, not interpreted.** The S2 tokenizer turns any `<|...|>` string found in
  text (`<|im_end|>`, `<|voice|>`, `<|semantic:5|>`, ...) into a control token, which would let typed text end
  the user message or inject audio codes. Every `<|` in turn text - except a `<|speaker:N|>` label, which this
  parser consumes - has a ZERO WIDTH SPACE (U+200B) inserted after its `<` (see `escape_special_tokens`), so the
  tokenizer sees ordinary characters. The escape is idempotent and invisible when displayed; it is never spoken.
* Line breaks: `\\r\\n`, `\\r`, U+2028/U+2029 become `\\n`; tabs, vertical tabs and form feeds become spaces.
  Any other control character (NUL, ESC, ...) is an error naming its line and column.
* Several lines of one speaker are kept, joined with `\\n`; blank lines are dropped; each label starts a new turn
  (two consecutive labels of the same speaker give two turns, so each keeps its own line for timings).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from .errors import TextError

__all__ = [
    "fold_name",
    "Turn",
    "Script",
    "Tag",
    "ZWSP",
    "normalize_text",
    "escape_special_tokens",
    "validate_tagged_text",
    "find_tags",
    "list_tags",
    "strip_tags",
    "parse_tagged_text",
    "parse_script",
    "speaker_number",
    "assign_slots",
    "turns_to_text",
]

ZWSP = "\u200b"

# A speaker label in official form. Only this token is allowed to reach the tokenizer unescaped (via turns_to_text).
_SPEAKER_TOKEN = r"<\|speaker:(\d+)\|>"
_S_TAG = r"\[\s*[Ss]\s*(\d+)\s*\]"
_AT_VOICE = r"(?<!\S)@[Vv][Oo][Ii][Cc][Ee]\s?(\d+)(?![\w])\s*:?"
# Markers that may appear anywhere in a line (all unambiguous): official token, [S1], @Voice1.
_INLINE_MARKER = re.compile(rf"{_SPEAKER_TOKEN}|{_S_TAG}|{_AT_VOICE}")
# `@Name` at the start of a line; the name is a word (letters, digits, _ . - ' ), optional colon after it.
_AT_NAME = re.compile(r"^\s*@([^\W\d_][\w.'’\-]{0,39})(?:\s*:)?(?=\s|$)")
# `Name:` at the start of a line: up to 4 words, starts with a letter, colon then whitespace or end of line.
_NAME_LABEL = re.compile(r"^\s*([^\W\d_][\w.'’\-]*(?: [\w.'’\-]+){0,3})\s*(?::(?=\s|$)|：)")
# `Alice:hi` — a label but for the space after the colon, which `_NAME_LABEL` needs so that `http://…` or
# `Ratio:2` stay text. Only a hint for the creator (`labels_without_a_space`).
_LABEL_WITHOUT_SPACE = re.compile(r"^\s*([^\W\d_][\w.'’\-]*(?: [\w.'’\-]+){0,3}):(?!//)(?=[^\W\d_])")
_NUMBERED_NAME = re.compile(r"^(?:s|speaker|voice)\s*(\d+)$", re.IGNORECASE)

_NEWLINES = str.maketrans({"\r": "\n", "\x85": "\n", "\ufeff": None, "\u2028": "\n", "\u2029": "\n", "\t": " ", "\v": " ", "\f": " "})

MAX_SLOT = 4095  # far above any real voice count; guards against `<|speaker:99999999999|>` typos


@dataclass(frozen=True)
class Turn:
    """One turn of speech: `speaker` is a voice slot (0-based, `<|speaker:N|>`) or None (no label/narrator)."""

    speaker: int | None
    text: str


@dataclass(frozen=True)
class Tag:
    """An inline `[tag]`: its content (without brackets) and where it starts (1-based line and column)."""

    text: str
    line: int
    column: int


@dataclass(frozen=True)
class Script:
    """A parsed dialogue script.

    `turns[i].speaker` is an index into `speakers` (the speaker names in order of first appearance) or None for
    the unlabelled text before the first label. `lines[i]` is the 1-based source line where turn i starts.
    Numbered speakers are named `Voice{n}` (1-based), whatever form the script used.
    """

    turns: tuple[Turn, ...]
    speakers: tuple[str, ...]
    lines: tuple[int, ...] = field(default=())

    def speaker_name(self, turn: Turn) -> str | None:
        return None if turn.speaker is None else self.speakers[turn.speaker]


def _where(text: str, index: int) -> tuple[int, int]:
    line = text.count("\n", 0, index) + 1
    column = index - (text.rfind("\n", 0, index) + 1) + 1
    return line, column


def normalize_text(text: str, input_name: str = "text") -> str:
    """Unify line breaks and blanks (see module doc); reject other control characters naming line and column."""
    if not isinstance(text, str):
        raise TextError(f"{input_name}: expected text (a string), got {type(text).__name__}.")
    text = text.replace("\r\n", "\n").translate(_NEWLINES)
    for i, ch in enumerate(text):
        if unicodedata.category(ch) == "Cs":
            line, column = _where(text, i)
            raise TextError(
                f"{input_name}: invalid unicode (a lone surrogate U+{ord(ch):04X}) at line {line}, column {column}; "
                "the text was damaged in transfer — delete the character or paste the text again."
            )
        if ch != "\n" and unicodedata.category(ch) == "Cc":
            line, column = _where(text, i)
            raise TextError(
                f"{input_name}: control character U+{ord(ch):04X} at line {line}, column {column}; "
                "delete it (it is often left over from copying text out of another program)."
            )
    return text


def escape_special_tokens(text: str) -> str:
    """Make typed `<|...|>` strings inert: insert U+200B after every `<` that starts `<|`. Idempotent."""
    return text.replace("<|", "<" + ZWSP + "|")


def find_tags(text: str, input_name: str = "text") -> list[Tag]:
    """All `[tags]` in order, with positions. Raises TextError for an unbalanced `[`/`]`, a nested `[`, a tag that
    runs past the end of its line, or an empty `[]`; the message names the input, line and column and the fix."""
    tags: list[Tag] = []
    open_at = -1
    for i, ch in enumerate(text):
        if ch == "[":
            if open_at >= 0:
                line, column = _where(text, open_at)
                raise TextError(
                    f"{input_name}: the tag '[' opened at line {line}, column {column} is not closed before "
                    f"another '['; close it with ']' (tags cannot be nested)."
                )
            open_at = i
        elif ch == "]":
            if open_at < 0:
                line, column = _where(text, i)
                raise TextError(
                    f"{input_name}: ']' at line {line}, column {column} has no matching '['; "
                    "add the '[' that opens the tag or delete the ']'."
                )
            content = text[open_at + 1 : i]
            line, column = _where(text, open_at)
            if not content.strip():
                raise TextError(
                    f"{input_name}: empty tag '[]' at line {line}, column {column}; write an instruction inside "
                    "it (e.g. [whisper]) or delete it."
                )
            tags.append(Tag(content.strip(), line, column))
            open_at = -1
        elif ch == "\n" and open_at >= 0:
            line, column = _where(text, open_at)
            raise TextError(
                f"{input_name}: the tag '[' opened at line {line}, column {column} is not closed on its line; "
                "add the closing ']' (a tag cannot span lines)."
            )
    if open_at >= 0:
        line, column = _where(text, open_at)
        raise TextError(
            f"{input_name}: the tag '[' opened at line {line}, column {column} is never closed; add the closing ']'."
        )
    return tags


def list_tags(text: str, input_name: str = "text") -> list[str]:
    """The distinct tag contents (without brackets) in order of first appearance; validates like `find_tags`."""
    seen: dict[str, None] = {}
    for tag in find_tags(text, input_name):
        seen.setdefault(tag.text, None)
    return list(seen)


_TAG_SPAN = re.compile(r"\[[^\[\]\n]*\]")


def strip_tags(text: str) -> str:
    """Text with `[tags]` removed and the spaces around them collapsed (for subtitles and emptiness checks)."""
    out = _TAG_SPAN.sub(" ", text)
    out = re.sub(r"[ \u00a0]{2,}", " ", out)
    out = re.sub(r" *\n *", "\n", out)
    out = re.sub(r" +([,.;:!?…。，！？])", r"\1", out)
    return out.strip()


def _require_words(text: str, input_name: str) -> None:
    if not text.strip():
        raise TextError(f"{input_name}: the text is empty; type the words to speak.")
    if not "".join(ch for ch in strip_tags(text) if unicodedata.category(ch) not in ("Cf", "Cc", "Cs")).strip():
        raise TextError(
            f"{input_name}: the text holds only [tags] (or invisible characters) and no words to speak; "
            "add the words the tags apply to "
            "(e.g. '[whisper] come closer')."
        )


def validate_tagged_text(text: str, input_name: str = "text") -> str:
    """Check one speaker's tagged text and return it normalised and escaped.

    Raises TextError (naming `input_name`) when it is empty or whitespace-only, holds only tags, has unbalanced or
    empty brackets, or contains control characters. `<|...|>` strings are escaped (see module doc).
    """
    text = normalize_text(text, input_name)
    _require_words(text, input_name)
    find_tags(text, input_name)
    return escape_special_tokens(text.strip())


def parse_tagged_text(text: str, input_name: str = "text") -> Script:
    """Single-speaker tagged text → a Script of one unlabelled turn (no speaker parsing at all)."""
    return Script(turns=(Turn(None, validate_tagged_text(text, input_name)),), speakers=(), lines=(1,))


def speaker_number(name: str) -> int | None:
    """The 0-based slot a numbered name addresses (`S2`, `Speaker 2`, `Voice2` → 1), else None."""
    m = _NUMBERED_NAME.match(name.strip())
    if not m:
        return None
    n = int(m.group(1))
    return n - 1 if n >= 1 else None


def _slot_name(slot: int) -> str:
    return f"Voice{slot + 1}"


def _canonical(name: str, input_name: str, line: int) -> str:
    name = " ".join(name.split())
    n = _NUMBERED_NAME.match(name)
    if n:
        number = int(n.group(1))
        if number < 1:
            raise TextError(
                f"{input_name}: speaker '{name}' on line {line}: numbered speakers start at 1 "
                "(S1, Voice1, Speaker 1); only the official <|speaker:N|> form counts from 0."
            )
        return _slot_name(_check_slot(number - 1, input_name, line))
    return name


def _check_slot(slot: int, input_name: str, line: int) -> int:
    if slot > MAX_SLOT:
        raise TextError(f"{input_name}: speaker number {slot} on line {line} is too large; use 0..{MAX_SLOT}.")
    return slot


def parse_script(text: str, input_name: str = "script") -> Script:
    """Parse a dialogue script in any of the label forms of the module doc into turns and speaker names.

    Raises TextError naming `input_name` (and the line) for empty text, text with only tags, a label with no
    words after it, bad brackets, control characters or a speaker number out of range.
    """
    text = normalize_text(text, input_name)
    _require_words(text, input_name)
    find_tags(_INLINE_MARKER.sub(lambda m: " " * len(m.group(0)), text), input_name)

    lines = text.split("\n")
    unambiguous = bool(_INLINE_MARKER.search(text)) or any(_AT_NAME.match(ln) for ln in lines)

    speakers: list[str] = []
    index: dict[str, int] = {}
    # Each open turn: [speaker_name | None, list of text pieces, start line]
    turns: list[list] = []

    def start(name: str | None, line: int) -> None:
        turns.append([name, [], line])

    def add(piece: str, line: int) -> None:
        piece = piece.strip()
        if not piece:
            return
        if not turns:
            start(None, line)
        turns[-1][1].append(piece)

    for lineno, raw in enumerate(lines, start=1):
        rest = raw
        label = _AT_NAME.match(rest) if unambiguous else _NAME_LABEL.match(rest)
        if label and not _INLINE_MARKER.match(rest.lstrip()):
            start(_canonical(label.group(1), input_name, lineno), lineno)
            rest = rest[label.end() :]
        # Inline markers split the (rest of the) line into pieces of different speakers.
        pos = 0
        for m in _INLINE_MARKER.finditer(rest):
            add(rest[pos : m.start()], lineno)
            if m.group(1) is not None:
                slot = _check_slot(int(m.group(1)), input_name, lineno)
            else:
                number = int(m.group(2) if m.group(2) is not None else m.group(3))
                if number < 1:
                    raise TextError(
                        f"{input_name}: '{m.group(0).strip()}' on line {lineno}: numbered speakers start at 1 "
                        "([S1], @Voice1); only the official <|speaker:N|> form counts from 0."
                    )
                slot = _check_slot(number - 1, input_name, lineno)
            start(_slot_name(slot), lineno)
            pos = m.end()
        add(rest[pos:], lineno)

    out_turns: list[Turn] = []
    out_lines: list[int] = []
    for name, pieces, line in turns:
        body = "\n".join(pieces)
        if not body.strip():
            raise TextError(
                f"{input_name}: speaker '{name}' on line {line} has no words; write the line after the label "
                "or delete the label."
            )
        if name is None:
            speaker = None
        else:  # one speaker however the script spells the name (`ALICE:` and `Alice:`); the first spelling names it
            key = fold_name(name)
            if key not in index:
                index[key] = len(speakers)
                speakers.append(name)
            speaker = index[key]
        out_turns.append(Turn(speaker, escape_special_tokens(body)))
        out_lines.append(line)
    return Script(turns=tuple(out_turns), speakers=tuple(speakers), lines=tuple(out_lines))


def labels_without_a_space(text: str) -> list[tuple[int, str]]:
    """(line, label) of lines that read like `Name:words`: a speaker label but for the space after the colon.
    `parse_script` keeps such a line as text of the current speaker; a node shows these as a hint."""
    found = []
    for lineno, line in enumerate(text.replace("\r\n", "\n").split("\n"), start=1):
        m = _LABEL_WITHOUT_SPACE.match(line)
        if m and not _NAME_LABEL.match(line):
            found.append((lineno, m.group(1)))
    return found


_LOOSE_SPEAKER_TOKEN = re.compile(r"<\|\s*speaker\s*:\s*(\d+)\s*\|>", re.IGNORECASE)


def loose_speaker_tokens(text: str) -> list[tuple[int, str, str]]:
    """(line, as written, the label meant) of `<|speaker:N|>` labels written with spaces or capitals
    (`<|speaker: 1|>`, `<|Speaker:0|>`): not labels, so they are spoken as text; a node shows these as a hint."""
    found = []
    for lineno, line in enumerate(text.replace("\r\n", "\n").split("\n"), start=1):
        for m in _LOOSE_SPEAKER_TOKEN.finditer(line):
            meant = f"<|speaker:{int(m.group(1))}|>"
            if m.group(0) != meant and not re.fullmatch(_SPEAKER_TOKEN, m.group(0)):
                found.append((lineno, m.group(0), meant))
    return found


def fold_name(name: str) -> str:
    """What two spellings of one name share: letters and digits, case-folded (`Mr. Brown`, `MR BROWN` and the
    voice library's file-safe `Mr_ Brown` are one name; so are `O'Neil` and `O_Neil`)."""
    folded = unicodedata.normalize("NFKC", name).casefold()
    kept = "".join(ch for ch in folded if unicodedata.category(ch)[0] in "LN")
    return kept or " ".join(folded.split())


def assign_slots(
    speakers: Sequence[str],
    voice_names: Sequence[str | None],
    *,
    connected: Sequence[bool] | None = None,
    input_name: str = "script",
    socket_name: str = "voice_{n}",
) -> list[int]:
    """Map each speaker name to a voice slot (0-based) and return the slots, one per speaker.

    `voice_names[i]` is the name of the voice in slot i (None or "" if unnamed); `connected[i]` says whether slot
    i has a voice at all (default: every slot in `voice_names` is connected). Rules, in order:

    1. numbered names (`Voice2`, `S2`, `Speaker 2`) take their slot;
    2. a name equal to a connected voice's name up to case, spaces and punctuation (`fold_name`) takes that
       voice's slot;
    3. the remaining names take the still-unclaimed connected slots in slot order, in order of first appearance.

    Raises TextError naming the speaker and the socket to connect when a numbered slot has no voice or when the
    names outnumber the connected voices.
    """
    if connected is None:
        connected = [True] * len(voice_names)
    n_slots = len(connected)
    slots: list[int | None] = [None] * len(speakers)
    claimed: set[int] = set()

    def no_voice(name: str, slot: int | None) -> TextError:
        if slot is not None:
            where = socket_name.format(n=slot + 1)
            return TextError(
                f"{input_name}: speaker '{name}' has no voice: connect a voice to {where}"
                + (f" (this node has {n_slots} voice inputs)" if slot >= n_slots else "")
                + " or change the speaker label."
            )
        free = [socket_name.format(n=i + 1) for i in range(n_slots) if not connected[i]]
        hint = f"connect another voice (free inputs: {', '.join(free)})" if free else "use fewer speakers"
        return TextError(f"{input_name}: speaker '{name}' has no voice: {hint} or rename the speaker.")

    for i, name in enumerate(speakers):
        slot = speaker_number(name)
        if slot is not None:
            if slot >= n_slots or not connected[slot]:
                raise no_voice(name, slot)
            slots[i] = slot
            claimed.add(slot)
    by_name = {}
    for slot, vname in enumerate(voice_names):
        if slot < n_slots and connected[slot] and vname and fold_name(vname) not in by_name:
            by_name[fold_name(vname)] = slot
    for i, name in enumerate(speakers):
        if slots[i] is None and fold_name(name) in by_name and by_name[fold_name(name)] not in claimed:
            slots[i] = by_name[fold_name(name)]
            claimed.add(slots[i])
    free_slots = iter(s for s in range(n_slots) if connected[s] and s not in claimed)
    for i, name in enumerate(speakers):
        if slots[i] is None:
            slot = next(free_slots, None)
            if slot is None:
                raise no_voice(name, None)
            slots[i] = slot
            claimed.add(slot)
    return [int(s) for s in slots]  # type: ignore[arg-type]


def turns_to_text(turns: Iterable[Turn]) -> str:
    """Turns → the official prompt text: `<|speaker:N|>text` per turn, joined by newlines.

    A turn with `speaker=None` is written without a tag. Turn text is escaped again (idempotent), so only the
    speaker tags written here can reach the tokenizer as control tokens.
    """
    parts = []
    for turn in turns:
        body = escape_special_tokens(turn.text.strip())
        if turn.speaker is None:
            parts.append(body)
        else:
            if not isinstance(turn.speaker, int) or isinstance(turn.speaker, bool) or turn.speaker < 0:
                raise TextError(f"turns: speaker must be a slot number >= 0 or None, got {turn.speaker!r}.")
            parts.append(f"<|speaker:{turn.speaker}|>{body}")
    return "\n".join(parts)
