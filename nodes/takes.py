"""Pick Take: one item of an AUDIO batch (a take, or a stem), or one take of FISH_S2_CODES holding several.

Takes are generated with seeds seed … seed+N−1 (`FishS2.generate_takes`, one batched forward); take i has seed
seed+i. An AUDIO batch pads shorter takes with silence to the longest; `audio_batch` records each take's real
length under `LENGTHS_KEY` so Pick Take returns it without the padding.
"""

from __future__ import annotations

import dataclasses
import logging

from comfy_api.latest import io

from ._engine import engine

from .types import CATEGORY, FishS2Codes

log = logging.getLogger("fishs2")

# Extra key of an AUDIO dict made by `audio_batch`: the valid samples of each batch item (core nodes ignore it).
LENGTHS_KEY = "fishs2_lengths"


def audio_batch(waveforms, sample_rate: int) -> dict:
    """Clips [C, T_i] (same channels) → AUDIO {"waveform": [N, C, max T_i] zero-padded, "sample_rate",
    LENGTHS_KEY: [T_i]} (float32, CPU)."""
    import torch

    waveforms = [w.float().cpu() for w in waveforms]
    longest = max(int(w.shape[-1]) for w in waveforms)
    batch = torch.stack([torch.nn.functional.pad(w, (0, longest - int(w.shape[-1]))) for w in waveforms])
    return {"waveform": batch.contiguous(), "sample_rate": int(sample_rate),
            LENGTHS_KEY: [int(w.shape[-1]) for w in waveforms]}


def pick_audio(audio, index: int, trim_padding: bool = True) -> dict:
    """Item `index` of an AUDIO batch → AUDIO with batch 1 (its padding removed, see the module doc)."""
    AudioError = engine("errors").AudioError
    ParameterError = engine("errors").ParameterError

    if not isinstance(audio, dict) or "waveform" not in audio or "sample_rate" not in audio:
        raise AudioError("audio: expected ComfyUI AUDIO ({'waveform', 'sample_rate'}).")
    waveform = audio["waveform"]
    if not hasattr(waveform, "dim") or waveform.dim() != 3:
        raise AudioError("audio: waveform must be a tensor [batch, channels, samples].")
    count = int(waveform.shape[0])
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
        raise ParameterError(f"index: {index!r} is out of range; the batch holds {count} item(s) (0 … {count - 1}).")
    item = waveform[index : index + 1]
    lengths = audio.get(LENGTHS_KEY)
    if trim_padding and isinstance(lengths, (list, tuple)) and len(lengths) == count:
        item = item[..., : int(lengths[index])]
    return {"waveform": item.float().contiguous().cpu(), "sample_rate": audio["sample_rate"]}


def pick_codes(codes, index: int):
    """Take `index` of a CodesData carrying `takes` (all takes' Generations, seed order) → a CodesData of that
    take alone (seed + index). A CodesData without takes is one take (index 0)."""
    CodesError = engine("errors").CodesError
    ParameterError = engine("errors").ParameterError

    if not hasattr(codes, "generation"):
        raise CodesError("codes: connect the output of Fish S2 Dual-AR Generate.")
    takes = tuple(getattr(codes, "takes", ()) or ()) or (codes.generation,)
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(takes):
        raise ParameterError(
            f"index: {index!r} is out of range; the codes hold {len(takes)} take(s) (0 … {len(takes) - 1}); "
            "set takes on Dual-AR Generate for more."
        )
    chosen = takes[index]
    seed = getattr(chosen, "seed", None)
    changes = {"generation": chosen}
    if seed is not None and hasattr(codes, "seed"):
        changes["seed"] = int(seed)
    if hasattr(codes, "takes"):
        changes["takes"] = (chosen,)
    return dataclasses.replace(codes, **changes)


class FishS2PickTake(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FishS2PickTake",
            display_name="Fish S2 Pick Take",
            category=CATEGORY,
            description=(
                "Picks one item of an AUDIO batch: a take (take i was generated with seed + i) or a speaker's stem "
                "from Mix & Stems."
            ),
            inputs=[
                io.Audio.Input("audio", tooltip="An AUDIO batch: the takes of one generation, or the stems of Mix & Stems."),
                io.Int.Input("index", default=0, min=0, max=4095,
                             tooltip="Which item, counting from 0 (take 0 = the seed, take 1 = seed + 1, …)."),
                io.Boolean.Input(
                    "trim_padding",
                    default=True,
                    tooltip="Remove the silence a batch adds to shorter takes (when the batch records the lengths).",
                ),
            ],
            outputs=[io.Audio.Output(display_name="audio", tooltip="The picked item as AUDIO with batch 1.")],
        )

    @classmethod
    def execute(cls, audio, index, trim_padding) -> io.NodeOutput:
        return io.NodeOutput(pick_audio(audio, index, trim_padding))


class FishS2PickTakeCodes(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FishS2PickTakeCodes",
            display_name="Fish S2 Pick Take (codes)",
            category=CATEGORY,
            description=(
                "Picks one take of the codes of a multi-take generation, for Codec Decode, Timeline or Mix & Stems. "
                "Take i was generated with seed + i, so the same seed and index give it again."
            ),
            inputs=[
                FishS2Codes.Input("codes", tooltip="From Fish S2 Dual-AR Generate with takes > 1."),
                io.Int.Input("index", default=0, min=0, max=4095,
                             tooltip="Which take, counting from 0 (take 0 = the seed, take 1 = seed + 1, …)."),
            ],
            outputs=[FishS2Codes.Output(display_name="codes", tooltip="The codes of the picked take alone.")],
        )

    @classmethod
    def execute(cls, codes, index) -> io.NodeOutput:
        return io.NodeOutput(pick_codes(codes, index))
