"""Dual-AR Generate: model + script (+ default voice) + sampling settings → FISH_S2_CODES."""

from __future__ import annotations

import logging

from comfy_api.latest import io

from ._engine import engine
from .types import CATEGORY, CodesData, FishS2Codes, FishS2Model, FishS2Script, FishS2Voice, ScriptData

log = logging.getLogger("fishs2")

SEED_MAX = 0xFFFFFFFFFFFFFFFF


def prompt_length_estimate(script: ScriptData, voices) -> int:
    """Prompt positions a request needs, roughly: reference frames + text bytes + the fixed template."""
    return sum(int(v.codes.shape[-1]) + len(v.text.encode("utf-8")) for v in voices) + len(
        script.text.encode("utf-8")
    ) + 64


class FishS2Generate(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FishS2Generate",
            display_name="Fish S2 Dual-AR Generate",
            category=CATEGORY,
            description=(
                "Generates speech codes for a script. The same inputs and seed give the same codes, so ComfyUI "
                "reuses the result until something here changes. Cancel stops within one frame."
            ),
            inputs=[
                FishS2Model.Input("model", tooltip="The model from Fish S2 Load Model."),
                FishS2Script.Input("script", tooltip="From Fish S2 Tagged Text or Fish S2 Dialogue Assembler."),
                FishS2Voice.Input(
                    "voice",
                    optional=True,
                    tooltip=(
                        "Default voice for a script that carries no voices (Tagged Text). Without any voice the "
                        "model picks a random voice."
                    ),
                ),
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=SEED_MAX,
                    control_after_generate=True,
                    tooltip="Random seed. The same seed and inputs give the same speech; change it for another take.",
                ),
                io.Float.Input(
                    "temperature",
                    default=0.8,
                    min=0.01,
                    max=2.0,
                    step=0.01,
                    tooltip="Sampling temperature: lower is steadier, higher is more expressive (0.7-1.0 is typical).",
                ),
                io.Float.Input(
                    "top_p",
                    default=0.8,
                    min=0.01,
                    max=1.0,
                    step=0.01,
                    tooltip="Nucleus sampling: only the most likely tokens whose probabilities sum to top_p are kept.",
                ),
                io.Int.Input(
                    "top_k",
                    default=30,
                    min=1,
                    max=4096,
                    tooltip="Only the top_k most likely tokens are sampled from.",
                ),
                io.Int.Input(
                    "max_frames",
                    default=1024,
                    min=1,
                    max=32767,
                    tooltip=(
                        "Most frames per generated segment (21.5 frames = 1 s). A segment that reaches it is cut "
                        "there; the KV cache memory grows with it."
                    ),
                ),
                io.Int.Input(
                    "chunk_length",
                    default=200,
                    min=1,
                    max=100000,
                    tooltip=(
                        "Dialogue turns are generated in batches of up to this many UTF-8 bytes (and 5 turns); "
                        "each batch continues from the previous one's audio."
                    ),
                ),
            ],
            outputs=[
                FishS2Codes.Output(display_name="codes", tooltip="Generated codes per segment, for Fish S2 Codec Decode."),
            ],
        )

    @classmethod
    def execute(cls, model, script, seed, temperature, top_p, top_k, max_frames, chunk_length, voice=None) -> io.NodeOutput:
        import comfy.model_management as mm
        import comfy.utils

        TextError = engine("errors").TextError

        if not isinstance(script, ScriptData):
            raise TextError("script: connect a Fish S2 Tagged Text or Fish S2 Dialogue Assembler node.")
        if script.voices:
            voices = list(script.voices)
            if voice is not None:
                log.warning("fishs2: Generate: the script brings its own voices; the 'voice' input is not used.")
        else:
            voices = [voice] if voice is not None else []
        tts = model.tts
        batches, _ = tts.plan(list(script.turns), voices, chunk_length)
        total = max_frames * len(batches)
        bar = comfy.utils.ProgressBar(total)
        frames = [0]

        def on_frame(done: int) -> None:
            frames[0] = done
            bar.update_absolute(min(done, total), total)
            mm.throw_exception_if_processing_interrupted()

        model.use_llm(max_frames, prompt_length_estimate(script, voices))
        generation = tts.generate(
            list(script.turns),
            voices,
            seed=seed,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            max_frames=max_frames,
            chunk_length=chunk_length,
            on_frame=on_frame,
            mode=model.attention_mode,
        )
        bar.update_absolute(total, total)
        cut = [i for i, s in enumerate(generation.segments) if s.hit_frame_limit]
        if cut:
            log.warning(
                "fishs2: Generate: segment(s) %s reached max_frames=%d and were cut; raise max_frames or lower "
                "chunk_length.", ", ".join(str(i + 1) for i in cut), max_frames,
            )
        log.info("fishs2: generated %d frames in %d segment(s), seed %d", frames[0], len(generation.segments), seed)
        return io.NodeOutput(
            CodesData(
                generation=generation,
                turns=script.turns,
                speaker_names=script.speaker_names,
                voice_names=tuple(getattr(v, "name", "") for v in voices),
                seed=seed,
                settings={
                    "temperature": temperature,
                    "top_p": top_p,
                    "top_k": top_k,
                    "max_frames": max_frames,
                    "chunk_length": chunk_length,
                },
            )
        )
