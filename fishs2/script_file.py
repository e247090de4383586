"""Long-form scripts from files: .txt, .srt and .json → speaker turns, with nothing silently dropped.

Formats
-------
* **txt** — a dialogue script in any label form `fishs2.script.parse_script` reads (`Name: line`, `[S1] line`,
  `@Voice1 line`, `<|speaker:0|>line`) or plain prose without labels.
* **srt** — SubRip subtitles. Each cue is read like a script line: a cue that starts with a label
  (`ALICE: Hi`, `[S2] Hi`) changes the speaker; a cue without one keeps the previous cue's speaker. The cue times
  are kept (`ScriptFile.times`). Markup (`<i>`, `<b>`, `<u>`, `<font …>`, `{\\an8}`) is removed and reported. A cue
  holding only `[tags]` and no words (a sound description such as `[MUSIC]`) is skipped and reported.
* **json** — a list, or an object with a `lines` / `turns` / `script` / `dialogue` list (so a timeline written by
  `fishs2.timeline.to_json` loads back). Each item is an object `{"speaker": "Alice", "text": "..."}` (`speaker`
  may also be an int — the 0-based slot of `<|speaker:N|>` — or missing/null to keep the previous speaker;
  `start` / `end` in seconds are kept as times), a `[speaker, text]` pair, or a string read like a script line.
  Keys the loader does not use are reported once each.

Long-form rules
---------------
* A turn's line breaks become spaces, then a turn longer than `max_turn_bytes` UTF-8 bytes (default 400, about
  25 s of speech) is split into several turns of the same speaker: at sentence ends, else at clause punctuation,
  else at spaces, else between characters — never inside a `[tag]`; a piece left without words (only tags)
  joins its neighbour. Every word of the file is in exactly one turn, in order. So a script of any length is
  generated turn by turn (the engine carries the conversation and trims it to the context window) instead of
  running into `max_frames`.
* Text before the first speaker label is kept as a turn with `speaker=None` (the official splitter drops it);
  the node pack gives it to the first connected voice.
* Speaker names that spell a slot (`S2`, `Speaker 2`, `Voice2`) become `Voice2`, as in `fishs2.script`.
* Every problem is an error naming the file and the line / cue / item, except the reported cases above
  (`ScriptFile.warnings`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import TextError
from .script import (Script, Turn, fold_name, normalize_text, parse_script, speaker_number, strip_tags,
                     validate_tagged_text)

FORMATS = ("txt", "srt", "json")
SUFFIXES = {".txt": "txt", ".text": "txt", ".md": "txt", ".srt": "srt", ".json": "json"}
DEFAULT_MAX_TURN_BYTES = 400
MAX_FILE_BYTES = 20 * 1024 * 1024

__all__ = [
    "ScriptFile",
    "load_script_file",
    "parse_script_source",
    "split_text",
    "FORMATS",
    "SUFFIXES",
    "DEFAULT_MAX_TURN_BYTES",
]


@dataclass(frozen=True)
class ScriptFile:
    """A loaded script: `script.turns` (speaker = index into `script.speakers`, or None before the first label),
    `script.lines` (1-based source line of each turn; for json the 1-based item number), `sources` (a readable
    place per turn: "line 3", "cue 7", "item 2"), `times` (the (start, end) seconds an srt cue or json item gave,
    else None), and `warnings` (everything changed or skipped)."""

    script: Script
    format: str
    name: str
    sources: tuple[str, ...]
    times: tuple[tuple[float, float] | None, ...]
    warnings: tuple[str, ...] = ()

    @property
    def turns(self) -> tuple[Turn, ...]:
        return self.script.turns

    @property
    def speakers(self) -> tuple[str, ...]:
        return self.script.speakers


# ── splitting long turns ────────────────────────────────────────────────────────────────────────────────────

_TAG = re.compile(r"\[[^\[\]\n]*\]")
_LEVELS = (
    re.compile(r"[.!?…]+[\"'”’)\]]*\s+|[。！？]+[”’」』）]*\s*"),  # sentence ends
    re.compile(r"[,;:—–]\s+|[，、；：]\s*"),  # clause punctuation
    re.compile(r"\s+"),  # spaces
)


def _nbytes(text: str) -> int:
    return len(text.encode("utf-8"))


def _in_tag(spans: list[tuple[int, int]], pos: int) -> bool:
    return any(a < pos < b for a, b in spans)


def _has_words(text: str) -> bool:
    return bool(strip_tags(text).strip())


def _cut(text: str, pattern: re.Pattern) -> list[str]:
    spans = [m.span() for m in _TAG.finditer(text)]
    points = [m.end() for m in pattern.finditer(text) if 0 < m.end() < len(text) and not _in_tag(spans, m.end())]
    bounds = [0, *sorted(set(points)), len(text)]
    return [text[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if a < b]


def _hard_cut(text: str, max_bytes: int) -> list[str]:
    spans = [m.span() for m in _TAG.finditer(text)]
    pieces, start, size = [], 0, 0
    for i, ch in enumerate(text):
        n = _nbytes(ch)
        if size + n > max_bytes and i > start and not _in_tag(spans, i):
            pieces.append(text[start:i])
            start, size = i, 0
        size += n
    pieces.append(text[start:])
    return pieces


def _pieces(text: str, max_bytes: int, level: int) -> list[str]:
    if _nbytes(text.strip()) <= max_bytes:
        return [text]
    if level == len(_LEVELS):
        return _hard_cut(text, max_bytes)
    units = _cut(text, _LEVELS[level])
    if len(units) == 1:
        return _pieces(text, max_bytes, level + 1)
    out = []
    for unit in units:
        out += _pieces(unit, max_bytes, level + 1)
    return out


def split_text(text: str, max_bytes: int = DEFAULT_MAX_TURN_BYTES) -> list[str]:
    """One turn's text → pieces of at most `max_bytes` UTF-8 bytes each (see the module doc), in order.

    Joining the pieces with single spaces gives the text with its whitespace collapsed (CJK text, which has no
    spaces, gains one at each cut). A piece exceeds `max_bytes` only when a lone `[tag]` has to join a neighbour.
    """
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 16:
        raise TextError(f"max_turn_bytes: must be an integer ≥ 16, got {max_bytes!r}.")
    text = " ".join(text.split())
    if not text:
        return []
    chunks: list[str] = []
    current = ""
    for piece in _pieces(text, max_bytes, 0):
        if current and _nbytes((current + piece).strip()) > max_bytes:
            chunks.append(current.strip())
            current = piece
        else:
            current += piece
    if current.strip():
        chunks.append(current.strip())
    # A piece without words (only [tags]) cannot be spoken alone: join it to the next piece (or the previous).
    merged: list[str] = []
    carry = ""
    for chunk in chunks:
        chunk = f"{carry} {chunk}".strip() if carry else chunk
        carry = ""
        if _has_words(chunk):
            merged.append(chunk)
        else:
            carry = chunk
    if carry:
        if merged:
            merged[-1] = f"{merged[-1]} {carry}"
        else:
            merged.append(carry)
    return merged


# ── building a Script ───────────────────────────────────────────────────────────────────────────────────────


class _Builder:
    """Collects turns with named speakers, splits long ones, validates each."""

    def __init__(self, name: str, max_bytes: int) -> None:
        self.name = name
        self.max_bytes = max_bytes
        self.speakers: list[str] = []
        self.index: dict[str, int] = {}
        self.turns: list[Turn] = []
        self.lines: list[int] = []
        self.sources: list[str] = []
        self.times: list[tuple[float, float] | None] = []
        self.warnings: list[str] = []
        self.split_count = 0

    def add(self, speaker: str | None, text: str, line: int, where: str, time=None) -> None:
        pieces = split_text(normalize_text(text, f"{self.name}, {where}"), self.max_bytes)
        if not pieces:
            raise TextError(f"{self.name}, {where}: has no words; write the line or delete it.")
        if len(pieces) > 1:
            self.split_count += 1
        slot = None
        if speaker is not None:  # one speaker however the file spells the name, as in `parse_script`
            key = fold_name(speaker)
            if key not in self.index:
                self.index[key] = len(self.speakers)
                self.speakers.append(speaker)
            slot = self.index[key]
        for piece in pieces:
            self.turns.append(Turn(slot, validate_tagged_text(piece, f"{self.name}, {where}")))
            self.lines.append(line)
            self.sources.append(where)
            self.times.append(time)

    def result(self, fmt: str) -> ScriptFile:
        if not self.turns:
            raise TextError(f"{self.name}: holds no lines to speak.")
        if self.split_count:
            self.warnings.append(
                f"{self.split_count} long turn(s) were split into turns of at most {self.max_bytes} bytes "
                "(at sentence ends where possible)."
            )
        return ScriptFile(
            script=Script(turns=tuple(self.turns), speakers=tuple(self.speakers), lines=tuple(self.lines)),
            format=fmt,
            name=self.name,
            sources=tuple(self.sources),
            times=tuple(self.times),
            warnings=tuple(self.warnings),
        )


def _canonical_name(name: str) -> str:
    name = " ".join(name.split())
    slot = speaker_number(name)
    return f"Voice{slot + 1}" if slot is not None else name


def _add_parsed(builder: _Builder, text: str, line: int, where: str, current: str | None, time=None):
    """Parse `text` as script lines (labels allowed); unlabelled text continues `current`. → the last speaker."""
    parsed = parse_script(text, f"{builder.name}, {where}")
    for turn in parsed.turns:
        speaker = current if turn.speaker is None else parsed.speakers[turn.speaker]
        current = speaker
        builder.add(speaker, turn.text, line, where, time)
    return current


# ── txt ─────────────────────────────────────────────────────────────────────────────────────────────────────


def _parse_txt(text: str, builder: _Builder) -> None:
    parsed = parse_script(text, builder.name)
    for turn, line in zip(parsed.turns, parsed.lines):
        speaker = None if turn.speaker is None else parsed.speakers[turn.speaker]
        builder.add(speaker, turn.text, line, f"line {line}")


# ── srt ─────────────────────────────────────────────────────────────────────────────────────────────────────

_SRT_TIME = re.compile(
    r"^\s*(\d+):([0-5]?\d):([0-5]?\d)[,.](\d{1,3})\s*-->\s*(\d+):([0-5]?\d):([0-5]?\d)[,.](\d{1,3})(?:\s+.*)?$"
)
_MARKUP = re.compile(r"</?(?:i|b|u|s)>|</?font(?:\s[^>]*)?>|\{\\[^}]*\}", re.IGNORECASE)


def _srt_seconds(h, m, s, ms) -> float:
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms.ljust(3, "0")) / 1000


def _parse_srt(text: str, builder: _Builder) -> None:
    lines = text.split("\n")
    i, cue, current, markup = 0, 0, None, 0
    skipped: list[str] = []
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        start_line = i + 1
        number = None
        if lines[i].strip().isdigit() and i + 1 < len(lines) and lines[i + 1].strip():
            number = int(lines[i].strip())  # the cue number; the time line must follow
            i += 1
        match = _SRT_TIME.match(lines[i])
        if not match:
            raise TextError(
                f"{builder.name}, line {i + 1}: expected a cue time line 'HH:MM:SS,mmm --> HH:MM:SS,mmm', got "
                f"{lines[i].strip()[:60]!r}; is this an .srt file?"
            )
        g = match.groups()
        start, end = _srt_seconds(*g[:4]), _srt_seconds(*g[4:])
        if end < start:
            raise TextError(f"{builder.name}, line {i + 1}: the cue ends ({end:.3f} s) before it starts ({start:.3f} s).")
        i += 1
        body_line = i + 1
        body = []
        while i < len(lines) and lines[i].strip():
            body.append(lines[i])
            i += 1
        cue += 1
        label = f"cue {number if number is not None else cue}"
        joined = " ".join(part.strip() for part in body)
        cleaned, n = _MARKUP.subn("", joined)
        markup += n
        if not cleaned.strip():
            skipped.append(f"{label} (line {start_line}) is empty")
            continue
        if not _has_words(cleaned):
            skipped.append(f"{label} (line {start_line}) holds only {cleaned.strip()[:40]!r}")
            continue
        current = _add_parsed(builder, cleaned, body_line, f"{label} (line {body_line})", current, (start, end))
    if markup:
        builder.warnings.append(f"{markup} subtitle formatting mark(s) (<i>, <b>, <font>, {{\\an8}} …) were removed.")
    for item in skipped:
        builder.warnings.append(f"{item}: no words to speak; skipped.")


# ── json ────────────────────────────────────────────────────────────────────────────────────────────────────

_LIST_KEYS = ("lines", "turns", "script", "dialogue")
_SPEAKER_KEYS = ("speaker", "character", "name", "voice")
# Keys of the timeline JSON (fishs2.timeline.to_json) and common metadata: known, not used.
_KNOWN_KEYS = {
    "text", "start", "end", "id", "index", "segment", "turns", "speaker_index", "speakers", "text_plain",
    "start_sample", "end_sample", "frames", "hit_frame_limit", "cut", "start_frame", "end_frame", *_SPEAKER_KEYS,
}


def _json_speaker(value: Any, where: str, builder: _Builder) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TextError(f"{builder.name}, {where}: 'speaker' must be a name or a slot number, got {value!r}.")
    if isinstance(value, int):
        if value < 0:
            raise TextError(f"{builder.name}, {where}: speaker slot {value} is negative; slots count from 0.")
        return f"Voice{value + 1}"
    return _canonical_name(value)


def _json_time(item: dict, where: str, builder: _Builder):
    if "start" not in item and "end" not in item:
        return None
    try:
        start, end = float(item["start"]), float(item["end"])
    except (KeyError, TypeError, ValueError):
        raise TextError(f"{builder.name}, {where}: 'start' and 'end' must both be numbers of seconds.") from None
    return (start, end)


def _parse_json(text: str, builder: _Builder) -> None:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TextError(f"{builder.name}: is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}).") from None
    if isinstance(data, dict):
        key = next((k for k in _LIST_KEYS if k in data), None)
        if key is None or not isinstance(data[key], list):
            raise TextError(
                f"{builder.name}: expected a list of lines, or an object with a 'lines' list; found keys "
                f"{sorted(data)[:8]}."
            )
        data = data[key]
    if not isinstance(data, list):
        raise TextError(f"{builder.name}: expected a list of lines, got {type(data).__name__}.")
    current: str | None = None
    unused: dict[str, int] = {}
    for number, item in enumerate(data, start=1):
        where = f"item {number}"
        if isinstance(item, str):
            current = _add_parsed(builder, item, number, where, current)
            continue
        if isinstance(item, list):
            if len(item) != 2 or not isinstance(item[1], str):
                raise TextError(f"{builder.name}, {where}: a list item must be [speaker, text].")
            speaker = _json_speaker(item[0], where, builder)
            current = speaker if speaker is not None else current
            builder.add(current, item[1], number, where)
            continue
        if not isinstance(item, dict):
            raise TextError(f"{builder.name}, {where}: expected an object with 'text', got {type(item).__name__}.")
        if not isinstance(item.get("text"), str):
            raise TextError(f"{builder.name}, {where}: has no 'text' string.")
        for key in item:
            if key not in _KNOWN_KEYS:
                unused[key] = unused.get(key, 0) + 1
        speaker_key = next((k for k in _SPEAKER_KEYS if k in item), None)
        speaker = _json_speaker(item.get(speaker_key), where, builder) if speaker_key else None
        current = speaker if speaker is not None else current
        builder.add(current, item["text"], number, where, _json_time(item, where, builder))
    if unused:
        listing = ", ".join(f"'{k}' ({n}×)" for k, n in unused.items())
        builder.warnings.append(f"keys not used by the script loader: {listing}.")


# ── entry points ────────────────────────────────────────────────────────────────────────────────────────────


def parse_script_source(
    text: str, fmt: str, name: str = "script", max_turn_bytes: int = DEFAULT_MAX_TURN_BYTES
) -> ScriptFile:
    """Parse script text of format `fmt` ("txt", "srt" or "json"); `name` is used in messages."""
    if fmt not in FORMATS:
        raise TextError(f"{name}: unknown script format {fmt!r}; use one of {', '.join(FORMATS)}.")
    if not isinstance(text, str):
        raise TextError(f"{name}: expected text, got {type(text).__name__}.")
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise TextError(f"{name}: is empty.")
    builder = _Builder(name, max_turn_bytes)
    {"txt": _parse_txt, "srt": _parse_srt, "json": _parse_json}[fmt](text, builder)
    return builder.result(fmt)


def load_script_file(path: str | Path, max_turn_bytes: int = DEFAULT_MAX_TURN_BYTES, fmt: str | None = None) -> ScriptFile:
    """Read a .txt / .srt / .json script (UTF-8, a BOM is allowed) → `ScriptFile`. The format comes from the
    suffix unless `fmt` is given. Errors name the file."""
    path = Path(path)
    name = path.name
    if fmt is None:
        fmt = SUFFIXES.get(path.suffix.lower())
        if fmt is None:
            raise TextError(f"{name}: unknown script type {path.suffix!r}; use .txt, .srt or .json.")
    if not path.is_file():
        raise TextError(f"{name}: file not found ({path}).")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise TextError(f"{name}: is {size / 1e6:.1f} MB; scripts up to {MAX_FILE_BYTES // (1024 * 1024)} MB are read.")
    raw = path.read_bytes()
    try:
        if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
            text = raw.decode("utf-16")
        else:
            text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TextError(
            f"{name}: is not UTF-8 text (byte {exc.start}); save it as UTF-8 and load it again."
        ) from None
    return parse_script_source(text, fmt, name, max_turn_bytes)
