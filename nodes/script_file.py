"""Load Script File: a long-form script (.txt / .srt / .json) from ComfyUI's input folder → FISH_S2_SCRIPT.

The engine (`fishs2.script_file`) reads and splits the file; this node lists the files, maps the script's
speakers onto the connected voices like the Dialogue Assembler does, and reports what the loader changed.
"""

from __future__ import annotations

import logging
import os

from comfy_api.latest import io

from ._engine import engine

from .script import map_voices
from .types import CATEGORY, FishS2Script, FishS2Voice, ScriptData

log = logging.getLogger("fishs2")

MAX_VOICES = 8
EXTENSIONS = (".txt", ".srt", ".json")


def list_script_files() -> list[str]:
    """Script files directly in ComfyUI's input folder, sorted."""
    import folder_paths

    folder = folder_paths.get_input_directory()
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(
        (n for n in names if n.lower().endswith(EXTENSIONS) and os.path.isfile(os.path.join(folder, n))),
        key=str.casefold,
    )


def script_path(name: str) -> str:
    """The path of a listed script file; refuses names that leave the input folder."""
    import folder_paths

    TextError = engine("errors").TextError

    if not isinstance(name, str) or not name.strip():
        raise TextError("file: pick a script file (.txt, .srt or .json) from ComfyUI's input folder.")
    base = os.path.realpath(folder_paths.get_input_directory())
    real = os.path.realpath(os.path.join(base, name))
    if os.path.commonpath([real, base]) != base or real == base:
        raise TextError(f"file: {name!r} is outside ComfyUI's input folder; put the script file there.")
    if not os.path.isfile(real):
        raise TextError(f"file: {name!r} was not found in ComfyUI's input folder ({base}).")
    if not real.lower().endswith(EXTENSIONS):
        raise TextError(f"file: {name!r} is not a .txt, .srt or .json script.")
    return real


def assign_voices(script, voices: list, source: str = "", warnings=()) -> ScriptData:
    """A parsed `fishs2.script.Script` + the voice inputs (None = not connected) → ScriptData, with the rules of
    the Dialogue Assembler (`nodes.script.map_voices`); errors name the `file` input."""
    return map_voices(script, voices, input_name="file", source=source, warnings=warnings)


class FishS2LoadScriptFile(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        files = list_script_files()
        voice_inputs = [
            FishS2Voice.Input(
                f"voice_{i}",
                optional=True,
                tooltip=(
                    f"Voice for speaker {i}: used by [S{i}] / @Voice{i} / <|speaker:{i - 1}|> / Speaker {i}, by a named "
                    "speaker whose name matches this voice's name, or by the named speakers in order of appearance."
                ),
            )
            for i in range(1, MAX_VOICES + 1)
        ]
        return io.Schema(
            node_id="FishS2LoadScriptFile",
            display_name="Fish S2 Load Script File",
            category=CATEGORY,
            description=(
                "Loads a script of any length from ComfyUI's input folder: .txt (dialogue labels or plain text), .srt "
                "subtitles (a cue starting with 'NAME:' changes the speaker) or .json ([{\"speaker\", \"text\"}]). "
                "Long turns are split at sentence ends; nothing is dropped without a note in 'info'."
            ),
            inputs=[
                io.Combo.Input(
                    "file",
                    options=files,
                    default=files[0] if files else None,
                    tooltip="A .txt, .srt or .json file in ComfyUI's input folder (refresh the page after adding one).",
                ),
                io.Int.Input(
                    "max_turn_bytes",
                    default=400,
                    min=16,
                    max=100_000,
                    tooltip=(
                        "Longer turns are split into several turns of the same speaker (UTF-8 bytes; 400 is about "
                        "25 s of speech), so no turn runs into max_frames."
                    ),
                ),
                *voice_inputs,
            ],
            outputs=[
                FishS2Script.Output(display_name="script", tooltip="Turns mapped to voices, for Dual-AR Generate."),
                io.String.Output(display_name="info", tooltip="Turns, speakers and every change the loader made."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, file, max_turn_bytes, **voices):
        """Reload when the file changes."""
        try:
            st = os.stat(script_path(file))
        except Exception:
            return file
        return f"{file}:{st.st_size}:{st.st_mtime_ns}"

    @classmethod
    def validate_inputs(cls, file):  # only `file`: ComfyUI marks every argument named here when it fails
        try:
            script_path(file)
        except Exception as exc:
            return str(exc)
        return True

    @classmethod
    def execute(cls, file, max_turn_bytes, **voices) -> io.NodeOutput:
        load_script_file = engine("script_file").load_script_file

        loaded = load_script_file(script_path(file), max_turn_bytes=max_turn_bytes)
        slots = [voices.get(f"voice_{i}") for i in range(1, MAX_VOICES + 1)]
        data = assign_voices(loaded.script, slots, source=file, warnings=loaded.warnings)
        for warning in data.warnings:
            log.warning("fishs2: Load Script File: %s: %s", file, warning)
        speakers = ", ".join(f"{name} → voice {slot + 1}" for name, slot in zip(data.speaker_names, data.slots))
        info = "\n".join([f"{file}: {len(data.turns)} turn(s) ({loaded.format}); {speakers}", *data.warnings])
        return io.NodeOutput(data, info, ui={"text": [info]})
