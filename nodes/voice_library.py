"""The voice library: `models/fish_s2/voices/<name>.safetensors` (+ `<name>.json`), written by the engine's
`Voice.save` (atomic, data only). This module only names, lists and locates files; it never imports torch."""

from __future__ import annotations

import os
import re
import unicodedata

from . import paths
from ._engine import engine

VoiceError = engine("errors").VoiceError

MAX_NAME = 64
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}
_UNSAFE = re.compile(r"[^\w\- ]+")


def sanitize_voice_name(name: str, input_name: str = "name") -> str:
    """A file-safe voice name: letters, digits, `_`, `-` and spaces (any script); everything else becomes `_`.

    Path separators, `..`, dots, control characters and Windows device names (CON, NUL, COM1, ...) can never
    reach the file system. Raises VoiceError naming the input when nothing usable is left.
    """
    if not isinstance(name, str):
        raise VoiceError(f"{input_name}: expected a voice name (text), got {type(name).__name__}.")
    cleaned = unicodedata.normalize("NFKC", name)
    cleaned = "".join(ch for ch in cleaned if unicodedata.category(ch)[0] != "C")
    cleaned = _UNSAFE.sub("_", cleaned)
    cleaned = re.sub(r"\s+", " ", cleaned).strip(" _-")
    cleaned = re.sub(r"_{2,}", "_", cleaned)[:MAX_NAME].strip(" _-")
    if not cleaned:
        raise VoiceError(
            f"{input_name}: {name!r} leaves no usable characters for a file name; use letters, digits, '-' or '_'."
        )
    if cleaned.casefold() in _RESERVED:
        cleaned = f"{cleaned}_voice"
    return cleaned


def list_voices() -> list[str]:
    """Voice names found in every `fish_s2/voices` folder (first folder wins on duplicates), sorted."""
    names: dict[str, None] = {}
    for folder in paths.voice_dirs():
        try:
            entries = sorted(os.listdir(folder))
        except OSError:
            continue
        for entry in entries:
            stem, ext = os.path.splitext(entry)
            if ext == ".safetensors" and not entry.startswith(".") and os.path.isfile(os.path.join(folder, entry)):
                names.setdefault(stem, None)
    return sorted(names, key=str.casefold)


def voice_path(name: str, input_name: str = "voice") -> str:
    """The file of a listed voice. Accepted: names `sanitize_voice_name` leaves unchanged (what Save Voice writes)
    and names `list_voices` lists (a file copied in as `my.voice.safetensors`, or named in decomposed unicode by
    macOS) — both without path separators or `..`; the resolved file must lie inside a voices folder (a symlink
    pointing elsewhere is refused)."""
    plain = (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name
             and "\0" not in name)
    if not plain or (sanitize_voice_name(name, input_name) != name and name not in list_voices()):
        raise VoiceError(f"{input_name}: {name!r} is not a voice library name; pick a voice from the list.")
    for folder in paths.voice_dirs():
        path = os.path.join(folder, f"{name}.safetensors")
        if os.path.isfile(path):
            real_folder = os.path.realpath(folder)
            if os.path.commonpath([os.path.realpath(path), real_folder]) != real_folder:
                raise VoiceError(
                    f"{input_name}: {path} points outside the voices folder; copy the voice file into {folder}."
                )
            return path
    where = ", ".join(paths.voice_dirs()) or "models/fish_s2/voices"
    raise VoiceError(f"{input_name}: no voice named {name!r} in {where}; save it with Fish S2 Save Voice first.")


def save_path(name: str) -> str:
    """Where Save Voice writes `name` (already sanitised)."""
    return os.path.join(paths.voices_save_dir(), f"{name}.safetensors")
