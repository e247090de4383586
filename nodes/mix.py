"""Mix & Stems: FISH_S2_CODES → the mixed AUDIO with gaps / crossfades, one stem per speaker (an AUDIO batch) and
the timeline. The engine (`fishs2.mix`) does the work; torch loads inside `execute`."""

from __future__ import annotations

import logging

from comfy_api.latest import io

from ._engine import engine

from .timeline import FishS2TimelineType, check_codes, summary
from .types import CATEGORY, FishS2Codes, FishS2Model

log = logging.getLogger("fishs2")


class FishS2MixStems(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FishS2MixStems",
            display_name="Fish S2 Mix & Stems",
            category=CATEGORY,
            description=(
                "Decodes the codes and lays the lines out with a gap (and optional crossfade) between them: the mix, "
                "one track per speaker (silence where others speak, same length, they add up to the mix) and the "
                "timeline of where each line is. Set chunk_length to 1 on Dual-AR Generate so that every turn is "
                "its own line."
            ),
            inputs=[
                FishS2Model.Input("model", tooltip="The model from Fish S2 Load Model (its codec decodes)."),
                FishS2Codes.Input("codes", tooltip="From Fish S2 Dual-AR Generate (or Pick Take)."),
                io.Float.Input(
                    "gap_seconds",
                    default=0.25,
                    min=0.0,
                    max=10.0,
                    step=0.05,
                    tooltip="Silence between consecutive lines, in seconds (0 = back to back, like Codec Decode).",
                ),
                io.Float.Input(
                    "crossfade_seconds",
                    default=0.0,
                    min=0.0,
                    max=2.0,
                    step=0.005,
                    tooltip=(
                        "Fade length at each boundary between lines. With gap 0 the lines overlap by this much while "
                        "one fades out and the next fades in; with a gap each line fades out/in into the silence "
                        "(removes clicks). Never more than half a line."
                    ),
                ),
                io.Float.Input(
                    "lead_in_seconds",
                    default=0.0,
                    min=0.0,
                    max=3600.0,
                    step=0.1,
                    tooltip="Silence before the first line, e.g. to start speaking a moment into the video.",
                ),
            ],
            outputs=[
                io.Audio.Output(display_name="mix", tooltip="All lines mixed: mono float32 at 44.1 kHz, batch 1."),
                io.Audio.Output(
                    display_name="stems",
                    tooltip=(
                        "One track per speaker as an AUDIO batch (item i = speaker i of 'speakers'), all as long as "
                        "the mix. Save Audio writes one file per item; Pick Take picks one."
                    ),
                ),
                io.String.Output(display_name="speakers", tooltip="The stems' speaker names, one per line, in batch order."),
                FishS2TimelineType.Output(display_name="timeline", tooltip="Where each line is in the mix, for Fish S2 Subtitles."),
            ],
        )

    @classmethod
    def execute(cls, model, codes, gap_seconds, crossfade_seconds, lead_in_seconds) -> io.NodeOutput:
        mix_generation = engine("mix").mix_generation

        codes = check_codes(codes)
        model.use_codec(frames=sum(int(s.codes.shape[-1]) for s in codes.generation.segments))
        turns = list(codes.turns) if getattr(codes, "turns", None) else None
        result = mix_generation(
            model.tts,
            codes.generation,
            turns,
            tuple(getattr(codes, "speaker_names", ()) or ()),
            gap=gap_seconds,
            crossfade=crossfade_seconds,
            lead_in=lead_in_seconds,
        )
        for warning in result.warnings:
            log.warning("fishs2: Mix & Stems: %s", warning)
        rate = int(result.sample_rate)
        mix = {"waveform": result.mix.reshape(1, 1, -1).contiguous().cpu(), "sample_rate": rate}
        stems = {"waveform": result.stems[:, None, :].contiguous().cpu(), "sample_rate": rate}
        speakers = "\n".join(result.stem_names)
        ui = {"text": [summary(result.timeline), *[w for w in result.warnings if w not in result.timeline.warnings]]}
        return io.NodeOutput(mix, stems, speakers, result.timeline, ui=ui)
