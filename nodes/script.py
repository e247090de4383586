"""Tagged Text and Dialogue Assembler: typed text → FISH_S2_SCRIPT (turns + the voices they use)."""

from __future__ import annotations

import logging

from comfy_api.latest import io

from ._engine import engine
from .types import CATEGORY, FishS2Script, FishS2Voice, ScriptData

fscript = engine("script")

log = logging.getLogger("fishs2")

MAX_VOICES = 8

TAGGED_PLACEHOLDER = "Hello! [laughing] I can't believe it worked. [whisper] Don't tell anyone."
DIALOGUE_PLACEHOLDER = "Alice: Did you hear that? [whisper] Over there.\nBob: [laughing] It's just the wind."


class FishS2TaggedText(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FishS2TaggedText",
            display_name="Fish S2 Tagged Text",
            category=CATEGORY,
            description=(
                "Text for one voice with inline [tags] - free-form directions such as [whisper], [laughing], "
                "[excited], [pause] - that S2 Pro follows where they appear."
            ),
            inputs=[
                io.String.Input(
                    "text",
                    multiline=True,
                    default="",
                    dynamic_prompts=False,
                    placeholder=TAGGED_PLACEHOLDER,
                    tooltip=(
                        "What to say. [tags] change how the following words are spoken; brackets must be balanced "
                        "and a tag cannot span lines. Typed <|...|> tokens are read as text, never as control tokens."
                    ),
                ),
            ],
            outputs=[FishS2Script.Output(display_name="script", tooltip="The checked text, ready for Dual-AR Generate.")],
        )

    @classmethod
    def execute(cls, text) -> io.NodeOutput:
        parsed = fscript.parse_tagged_text(text, "text")
        return io.NodeOutput(ScriptData(turns=parsed.turns, source=text))


NARRATOR_NAME = "(text before the first speaker)"


def map_voices(parsed, voices: list, *, input_name: str = "script", source: str = "", warnings=()) -> ScriptData:
    """A parsed `fishs2.script.Script` + the voice inputs (None = socket not connected) → ScriptData.

    The rules of every node that maps a script onto voice_1 … voice_8: numbered speakers take their slot, names
    match voice names, the rest take free voices in order; text before the first label is spoken by the first
    connected voice; only the voices the script uses are kept (compacted, in slot order). `warnings` come first in
    the result's warnings, then one per connected voice the script never uses.
    """
    connected = [v is not None for v in voices]
    names = [getattr(v, "name", "") or None if v is not None else None for v in voices]
    if not any(connected):
        speakers = ", ".join(parsed.speakers) or "one voice"
        raise fscript.TextError(
            "voice_1: no voice is connected; connect a voice (Reference Voice Encoder or Load Voice) for each "
            f"speaker of the script ({speakers})."
        )
    slots = fscript.assign_slots(parsed.speakers, names, connected=connected, input_name=input_name)
    narrator = next(i for i, c in enumerate(connected) if c)
    needs_narrator = any(t.speaker is None for t in parsed.turns)
    used = sorted(set(slots) | ({narrator} if needs_narrator else set()))
    compact = {slot: i for i, slot in enumerate(used)}
    turns = tuple(
        fscript.Turn(compact[narrator] if t.speaker is None else compact[slots[t.speaker]], t.text)
        for t in parsed.turns
    )
    speaker_of_slot = {slot: parsed.speakers[i] for i, slot in enumerate(slots)}
    speaker_names = tuple(speaker_of_slot.get(slot, NARRATOR_NAME) for slot in used)
    notes = list(warnings)
    for slot, voice in enumerate(voices):
        if voice is not None and slot not in used:
            label = f" ({voice.name!r})" if getattr(voice, "name", "") else ""
            notes.append(f"voice_{slot + 1}{label} is connected but the script never uses it.")
    return ScriptData(
        turns=turns,
        voices=tuple(voices[s] for s in used),
        speaker_names=speaker_names,
        slots=tuple(used),
        source=source,
        warnings=tuple(notes),
    )


def assemble_dialogue(script: str, voices: list) -> ScriptData:
    """Parse `script` and map its speakers onto the connected `voices` (None = socket not connected)."""
    hints = [f"line {line}: '{name}:' reads like a speaker label without a space after the colon; write '{name}: …' "
             "to give the line to that speaker" for line, name in fscript.labels_without_a_space(script)]
    hints += [f"line {line}: {written} is not a speaker label (it is spoken as text); write {meant}"
              for line, written, meant in fscript.loose_speaker_tokens(script)]
    data = map_voices(fscript.parse_script(script, "script"), voices, input_name="script", source=script,
                      warnings=hints)
    for w in data.warnings:
        log.warning("fishs2: Dialogue Assembler: %s", w)
    return data


class FishS2DialogueAssembler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        voice_inputs = [
            FishS2Voice.Input(
                f"voice_{i}",
                optional=True,
                tooltip=(
                    f"Voice for speaker {i}: used by [S{i}], @Voice{i}, <|speaker:{i - 1}|>, by a named speaker whose "
                    f"name matches this voice's name, or by the named speakers in order of appearance."
                ),
            )
            for i in range(1, MAX_VOICES + 1)
        ]
        return io.Schema(
            node_id="FishS2DialogueAssembler",
            display_name="Fish S2 Dialogue Assembler",
            category=CATEGORY,
            description=(
                "A multi-speaker script → turns with a voice each. Lines start with 'Name: ', '[S1] ', '@Voice1 ' "
                "or '<|speaker:0|>'; [tags] work inside lines. Text before the first label is spoken by the first "
                "connected voice."
            ),
            inputs=[
                io.String.Input(
                    "script",
                    multiline=True,
                    default="",
                    dynamic_prompts=False,
                    placeholder=DIALOGUE_PLACEHOLDER,
                    tooltip=(
                        "One turn per label: 'Name: line', '[S1] line', '@Voice1 line' or '<|speaker:0|>line'. A turn "
                        "may continue on the next lines. Every speaker needs a connected voice."
                    ),
                ),
                *voice_inputs,
            ],
            outputs=[FishS2Script.Output(display_name="script", tooltip="Turns mapped to voices, for Dual-AR Generate.")],
        )

    @classmethod
    def execute(cls, script, **voices) -> io.NodeOutput:
        slots = [voices.get(f"voice_{i}") for i in range(1, MAX_VOICES + 1)]
        data = assemble_dialogue(script, slots)
        ui = {"fishs2_warnings": list(data.warnings)} if data.warnings else None
        return io.NodeOutput(data, ui=ui)
