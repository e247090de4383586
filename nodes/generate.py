"""Dual-AR Generate: model + script (+ default voice) + sampling settings → FISH_S2_CODES."""

from __future__ import annotations

import logging

from comfy_api.latest import io

from ._engine import engine
from .types import CATEGORY, CodesData, FishS2Codes, FishS2Model, FishS2Script, FishS2Voice, ScriptData

log = logging.getLogger("fishs2")

SEED_MAX = 0xFFFFFFFFFFFFFFFF
MAX_TAKES = 16
# Live preview: a chunk of take 0 every this many frames (about 2 s of audio; 21.5 frames = 1 s) and at the end of
# each line, so even a single long line is heard while it is generated. The first chunks are shorter (8, 16, 32
# frames: the first audio after 0.37 s of it is generated, not 2 s).
PREVIEW_EVERY_FRAMES = 43
PREVIEW_FIRST_FRAMES = 8


def prompt_length_estimate(script: ScriptData, voices) -> int:
    """Prompt positions a request needs, roughly: reference frames + text bytes + the fixed template."""
    return sum(int(v.codes.shape[-1]) + len(v.text.encode("utf-8")) for v in voices) + len(
        script.text.encode("utf-8")
    ) + 64


def in_graph_words(exc, errors):
    """The engine's TextError about text too long for the context, with the input and the fix as a graph has them:
    Generate's input is `script`, and labels typed into Tagged Text are escaped, so the way to split is more lines."""
    pipeline = engine("pipeline")
    message = str(exc)
    if pipeline.SPLIT_TEXT_ADVICE not in message:
        return exc
    message = message.replace(pipeline.SPLIT_TEXT_ADVICE, (
        "give it several lines — the Fish S2 Dialogue Assembler takes `Name: line` lines (one speaker is fine), and "
        "Fish S2 Load Script File splits long turns at sentence ends — each line is generated after the other"))
    return errors.TextError("script: " + message.removeprefix("text: "))


class FishS2Generate(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FishS2Generate",
            display_name="Fish S2 Dual-AR Generate",
            category=CATEGORY,
            description=(
                "Generates speech codes for a script. The same inputs and seed give the same codes, so ComfyUI "
                "reuses the result until something here changes. Cancel stops within one frame. With takes > 1 it "
                "generates several takes at once (seeds seed, seed+1, ...); with live_preview the node plays the "
                "audio while it is generated."
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
                        "each batch continues from the previous one's audio. Set it to 1 for one segment per turn "
                        "(per-line timing, subtitles and stems)."
                    ),
                ),
                io.Int.Input(
                    "takes",
                    default=1,
                    min=1,
                    max=MAX_TAKES,
                    tooltip=(
                        "How many takes to generate in one run, with seeds seed, seed+1, ... (take i = seed + i). "
                        "They are generated as one batch (faster than separate runs; memory grows with each take). "
                        "Codec Decode outputs them as an AUDIO batch; pick one with Fish S2 Pick Take."
                    ),
                ),
                io.Boolean.Input(
                    "live_preview",
                    default=True,
                    tooltip=(
                        "Play the first take on this node while it is generated (about every 2 s of audio and at the "
                        "end of each line). The generated codes are the same either way; off saves the decoding work."
                    ),
                ),
            ],
            outputs=[
                FishS2Codes.Output(
                    display_name="codes",
                    tooltip="Generated codes per segment (all takes), for Fish S2 Codec Decode, Timeline or Mix & Stems.",
                ),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, script, seed, temperature, top_p, top_k, max_frames, chunk_length, takes=1,
                live_preview=True, voice=None) -> io.NodeOutput:
        import comfy.model_management as mm
        import comfy.utils

        errors = engine("errors")

        if not isinstance(script, ScriptData):
            raise errors.TextError("script: connect a Fish S2 Tagged Text or Fish S2 Dialogue Assembler node.")
        if isinstance(takes, bool) or not isinstance(takes, int) or not 1 <= takes <= MAX_TAKES:
            raise errors.ParameterError(f"takes: {takes!r} must be a whole number from 1 to {MAX_TAKES}.")
        if script.voices:
            voices = list(script.voices)
            if voice is not None:
                log.warning("fishs2: Generate: the script brings its own voices; the 'voice' input is not used.")
        else:
            voices = [voice] if voice is not None else []
        tts = model.tts
        batches, _ = tts.plan(list(script.turns), voices, chunk_length)
        total = max_frames * len(batches) * takes
        bar = comfy.utils.ProgressBar(total)
        frames = [0]

        def on_frame(done: int) -> None:
            frames[0] = done
            bar.update_absolute(min(done, total), total)
            mm.throw_exception_if_processing_interrupted()

        options = dict(temperature=temperature, top_p=top_p, top_k=top_k, max_frames=max_frames,
                       chunk_length=chunk_length, mode=model.attention_mode)
        preview = live_preview and cls.hidden is not None and cls.hidden.unique_id is not None
        model.use_llm(max_frames, prompt_length_estimate(script, voices), takes=takes,
                      preview_frames=4 * PREVIEW_EVERY_FRAMES if preview else 0)
        try:
            if preview:
                from .live_preview import current_prompt_id, make_sender

                results = engine("preview").generate_with_preview(
                    tts, list(script.turns), voices,
                    on_chunk=make_sender(cls.hidden.unique_id, prompt_id=current_prompt_id()),
                    seed=seed, takes=takes, every_frames=PREVIEW_EVERY_FRAMES, first_frames=PREVIEW_FIRST_FRAMES,
                    on_frame=on_frame, **options,
                )
            else:
                results = tts.generate_takes(list(script.turns), voices, seed=seed, takes=takes, on_frame=on_frame,
                                             **options)
        except errors.TextError as exc:
            raise in_graph_words(exc, errors) from None
        bar.update_absolute(total, total)
        for t, generation in enumerate(results):
            cut = [i for i, s in enumerate(generation.segments) if s.hit_frame_limit]
            if cut:
                log.warning(
                    "fishs2: Generate: %ssegment(s) %s reached max_frames=%d and were cut; raise max_frames or lower "
                    "chunk_length.", f"take {t} (seed {generation.seed}): " if takes > 1 else "",
                    ", ".join(str(i + 1) for i in cut), max_frames,
                )
        log.info("fishs2: generated %d frames in %d segment(s) x %d take(s), seed %d%s", frames[0],
                 len(results[0].segments), takes, seed, " (live preview)" if preview else "")
        return io.NodeOutput(
            CodesData(
                generation=results[0],
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
                    "takes": takes,
                },
                takes=tuple(results),
            )
        )
