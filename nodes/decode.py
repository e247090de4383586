"""Codec Decode: FISH_S2_CODES → AUDIO (float32 CPU [1, 1, T] at 44.1 kHz, the contract of core audio/video nodes)."""

from __future__ import annotations

import logging

from comfy_api.latest import io

from ._engine import engine
from .types import CATEGORY, CodesData, FishS2Codes, FishS2Model

log = logging.getLogger("fishs2")

PEAK_TARGET_DB = -1.0


CLIPPED = "the audio clipped (samples beyond full scale were cut); lower gain_db or turn on peak_normalize"


def finish_waveform(waveform, gain_db: float, peak_normalize: bool, notes: list[str] | None = None):
    """[1, T] float32 → gain / peak normalisation applied, clamped to [-1, 1], as AUDIO's [1, 1, T]. Clipping is
    logged and noted in `notes` (once), for the node to show."""
    import torch

    out = waveform.float()
    if peak_normalize:
        peak = float(out.abs().max()) if out.numel() else 0.0
        if peak > 0:
            out = out * (10 ** (PEAK_TARGET_DB / 20) / peak)
    if gain_db:
        out = out * (10 ** (gain_db / 20))
    if out.numel() and float(out.abs().max()) > 1.0:
        log.warning("fishs2: Decode: %s.", CLIPPED)
        if notes is not None and CLIPPED not in notes:
            notes.append(CLIPPED)
    out = torch.clamp(out, -1.0, 1.0)
    return out.reshape(1, 1, -1).contiguous().cpu()


class FishS2Decode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FishS2Decode",
            display_name="Fish S2 Codec Decode",
            category=CATEGORY,
            description=(
                "Turns generated codes into audio (mono, 44.1 kHz) for Save Audio, Preview Audio or Create Video. "
                "Changing only the options here does not re-run generation. Codes with several takes give an "
                "AUDIO batch (one item per take, shorter takes padded with silence); Fish S2 Pick Take picks one."
            ),
            inputs=[
                FishS2Model.Input("model", tooltip="The model from Fish S2 Load Model (its codec decodes)."),
                FishS2Codes.Input("codes", tooltip="From Fish S2 Dual-AR Generate."),
                io.Float.Input(
                    "gain_db",
                    default=0.0,
                    min=-24.0,
                    max=24.0,
                    step=0.5,
                    tooltip="Volume change in dB, applied after peak normalisation. The result is clamped to [-1, 1].",
                ),
                io.Boolean.Input(
                    "peak_normalize",
                    default=False,
                    tooltip=f"Scale the audio so its loudest sample is at {PEAK_TARGET_DB:g} dBFS.",
                ),
            ],
            outputs=[
                io.Audio.Output(
                    display_name="audio",
                    tooltip="Mono float32 audio at 44.1 kHz; a batch with one item per take when the codes hold several.",
                )
            ],
        )

    @classmethod
    def execute(cls, model, codes, gain_db, peak_normalize) -> io.NodeOutput:
        CodesError = engine("errors").CodesError

        if not isinstance(codes, CodesData):
            raise CodesError("codes: connect the output of Fish S2 Dual-AR Generate.")
        if not codes.generation.segments or codes.total_frames == 0:
            raise CodesError("codes: the generation holds no frames; generate again with another seed or text.")
        takes = tuple(getattr(codes, "takes", ()) or ()) or (codes.generation,)
        notes: list[str] = []
        if len(takes) == 1:
            model.use_codec(frames=codes.total_frames)
            waveform = model.tts.decode(takes[0].codes)
            audio = {"waveform": finish_waveform(waveform, gain_db, peak_normalize, notes),
                     "sample_rate": model.sample_rate}
            return io.NodeOutput(audio, ui={"text": [f"warning: {n}" for n in notes]} if notes else None)
        from .takes import audio_batch

        empty = [i for i, t in enumerate(takes) if not t.segments or int(t.codes.shape[-1]) == 0]
        if empty:
            raise CodesError(f"codes: take(s) {', '.join(map(str, empty))} hold no frames; generate again with another seed.")
        model.use_codec(frames=max(int(t.codes.shape[-1]) for t in takes))
        # Each take on its own (gain / peak normalisation per take), then padded to the longest in one batch.
        clips = [finish_waveform(model.tts.decode(t.codes), gain_db, peak_normalize, notes)[0] for t in takes]
        log.info("fishs2: decoded %d takes (%s frames)", len(takes), ", ".join(str(int(t.codes.shape[-1])) for t in takes))
        return io.NodeOutput(audio_batch(clips, model.sample_rate),
                             ui={"text": [f"warning: {n}" for n in notes]} if notes else None)
