"""Socket types of the pack and the plain-Python values that travel on them.

Type names are permanent (saved workflows refer to them) and distinct from core's `FISHAUDIO_*` types.
Nothing here imports torch; the engine objects inside the payloads are created in `execute`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from comfy_api.latest import io

from ._engine import engine

Turn = engine("script").Turn
turns_to_text = engine("script").turns_to_text


CATEGORY = "audio/Fish S2 Pro"
SAMPLE_RATE = 44100
FRAME_SAMPLES = 2048  # codec hop: one generated frame = 2048 samples at 44.1 kHz

FishS2Model = io.Custom("FISH_S2_MODEL")
FishS2Voice = io.Custom("FISH_S2_VOICE")
FishS2Script = io.Custom("FISH_S2_SCRIPT")
FishS2Codes = io.Custom("FISH_S2_CODES")
# A `fishs2.timeline.Timeline` (sample positions of each line at its sample_rate).
FishS2TimelineType = io.Custom("FISH_S2_TIMELINE")


@dataclass(frozen=True)
class ScriptData:
    """What FISH_S2_SCRIPT carries.

    `turns[i].speaker` indexes `voices` (only the voices the script uses, in slot order) or is None: text that no
    voice was assigned to (single-speaker tagged text; it uses Generate's default voice). `speaker_names[j]` is
    the script's name for `voices[j]`; `slots[j]` the Dialogue Assembler input it came from (0-based).
    """

    turns: tuple[Turn, ...]
    voices: tuple[Any, ...] = ()
    speaker_names: tuple[str, ...] = ()
    slots: tuple[int, ...] = ()
    source: str = ""
    warnings: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        """The script in the official `<|speaker:N|>text` form, as the engine receives it."""
        return turns_to_text(self.turns)


@dataclass(frozen=True)
class CodesData:
    """What FISH_S2_CODES carries: the engine's `Generation` plus who spoke.

    `takes` holds every take's `Generation` in seed order (take i has seed `seed + i`) when Dual-AR Generate made
    several; `generation` is always take 0 (`takes[0]`), so nodes that take one generation need no change.
    `turns` are the script's turns (speaker = index into `speaker_names`/`voice_names`, or None);
    `generation.segments[k]` holds `turn_indices` (into `turns`), `codes` ([10, n] int64 CPU) and
    `hit_frame_limit`. One frame is `FRAME_SAMPLES` samples at `SAMPLE_RATE`.
    """

    generation: Any
    turns: tuple[Turn, ...] = ()
    speaker_names: tuple[str, ...] = ()
    voice_names: tuple[str, ...] = ()
    seed: int = 0
    settings: dict = field(default_factory=dict)
    takes: tuple = field(default=())

    @property
    def all_takes(self) -> tuple:
        """Every take's Generation (seed order); `(generation,)` for codes made without takes."""
        return tuple(self.takes) or (self.generation,)

    @property
    def segments(self) -> list:
        return list(self.generation.segments)

    @property
    def frames(self) -> list[int]:
        """Frames per segment."""
        return [int(s.codes.shape[-1]) for s in self.generation.segments]

    @property
    def total_frames(self) -> int:
        return sum(self.frames)

    @property
    def seconds(self) -> float:
        return self.total_frames * FRAME_SAMPLES / SAMPLE_RATE
