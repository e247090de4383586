"""Reference Voice Encoder, Save Voice and Load Voice: AUDIO + transcript → FISH_S2_VOICE, and a voice library."""

from __future__ import annotations

import logging
import os

from comfy_api.latest import io

from ._engine import engine
from . import voice_library
from .types import CATEGORY, FishS2Model, FishS2Voice

log = logging.getLogger("fishs2")


def check_audio_input(audio, input_name: str = "audio", join_batch: bool = True) -> tuple:
    """An AUDIO value → (waveform [B, C, T] float tensor, sample_rate). Raises AudioError naming the input.
    `join_batch`: a batch of clips becomes one clip, its items end to end (a reference voice); without it the
    batch is returned as it is, for the caller to refuse or handle."""
    AudioError = engine("errors").AudioError

    if not isinstance(audio, dict) or "waveform" not in audio or "sample_rate" not in audio:
        raise AudioError(f"{input_name}: expected ComfyUI AUDIO ({{'waveform', 'sample_rate'}}); connect a Load Audio node.")
    waveform, sample_rate = audio["waveform"], audio["sample_rate"]
    if not hasattr(waveform, "dim") or waveform.dim() not in (1, 2, 3):
        raise AudioError(f"{input_name}: waveform must be a tensor [batch, channels, samples].")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, float)) or sample_rate <= 0:
        raise AudioError(f"{input_name}: sample_rate must be a positive number, got {sample_rate!r}.")
    while waveform.dim() < 3:
        waveform = waveform.unsqueeze(0)
    if join_batch and waveform.shape[0] > 1:
        # A batch of clips is one reference: the items are joined end to end.
        waveform = waveform.movedim(0, 1).reshape(1, waveform.shape[1], -1)
    return waveform, int(sample_rate)


class FishS2EncodeVoice(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FishS2EncodeVoice",
            display_name="Fish S2 Reference Voice Encoder",
            category=CATEGORY,
            description=(
                "Encodes a reference clip and its transcript into a reusable voice (codec codes + text). "
                "ComfyUI caches the result, so the clip is encoded once; save it with Fish S2 Save Voice to reuse it "
                "across workflows."
            ),
            inputs=[
                FishS2Model.Input("model", tooltip="The model from Fish S2 Load Model (its codec encodes the clip)."),
                io.Audio.Input(
                    "audio",
                    tooltip=(
                        "The reference clip (any sample rate and channel count; stereo is mixed to mono, a batch is "
                        "joined end to end). 3-30 s of clean speech works best; under 1 s is refused."
                    ),
                ),
                io.String.Input(
                    "transcript",
                    multiline=True,
                    default="",
                    dynamic_prompts=False,
                    placeholder="Exactly what is said in the reference clip",
                    tooltip="The words spoken in the reference clip, as exactly as you can; the model aligns voice and text with it.",
                ),
                io.String.Input(
                    "name",
                    default="",
                    tooltip="A name for the voice. The Dialogue Assembler matches speaker names in scripts against it.",
                ),
            ],
            outputs=[FishS2Voice.Output(display_name="voice", tooltip="Codes + transcript of the reference voice.")],
        )

    @classmethod
    def execute(cls, model, audio, transcript, name) -> io.NodeOutput:
        AudioError = engine("errors").AudioError
        TextError = engine("errors").TextError

        waveform, sample_rate = check_audio_input(audio)
        if not isinstance(transcript, str) or not transcript.strip():
            raise TextError(
                "transcript: is empty; type the words spoken in the reference clip (the model needs them to "
                "clone the voice)."
            )
        seconds = waveform.shape[-1] / sample_rate
        log.info("fishs2: encoding reference audio (%.2f s at %d Hz)", seconds, sample_rate)
        model.use_codec(frames=int(seconds * 44100 / 2048) + 1)
        try:
            # The engine mixes to mono, resamples, rejects silent/DC/clipped/short clips and warns above 30 s.
            voice = model.tts.encode_voice(waveform[0], transcript, sample_rate=sample_rate, name=name.strip())
        except AudioError as exc:  # the engine says "reference audio: …"; the node's input is `audio`
            message = str(exc)
            raise AudioError("audio: " + message.removeprefix("reference audio: ")) from exc
        return io.NodeOutput(voice)


class FishS2SaveVoice(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FishS2SaveVoice",
            display_name="Fish S2 Save Voice",
            category=CATEGORY,
            description="Saves a voice to the library (models/fish_s2/voices/<name>.safetensors + .json) for Fish S2 Load Voice.",
            is_output_node=True,
            inputs=[
                FishS2Voice.Input("voice", tooltip="The voice to save (from the Reference Voice Encoder)."),
                io.String.Input(
                    "name",
                    default="my_voice",
                    tooltip="Library name. Letters, digits, spaces, '-' and '_'; anything else becomes '_'.",
                ),
                io.Boolean.Input(
                    "overwrite",
                    default=False,
                    tooltip="Replace a different voice already saved under this name. Saving the same voice again is always allowed.",
                ),
            ],
            outputs=[FishS2Voice.Output(display_name="voice", tooltip="The same voice, named as saved.")],
        )

    @classmethod
    def execute(cls, voice, name, overwrite) -> io.NodeOutput:
        import torch

        VoiceError = engine("errors").VoiceError
        Voice = engine("voice").Voice

        clean = voice_library.sanitize_voice_name(name, "name")
        path = voice_library.save_path(clean)
        if os.path.exists(path) and not overwrite:
            try:
                old = Voice.load(path)
                same = old.text == voice.text and torch.equal(old.codes, voice.codes.to(torch.int64))
            except VoiceError:
                same = False
            if not same:
                raise VoiceError(
                    f"name: a different voice named {clean!r} is already saved ({path}); choose another name or "
                    "turn on overwrite."
                )
        saved = Voice(codes=voice.codes, text=voice.text, name=clean, metadata=dict(voice.metadata))
        saved.save(path)
        log.info("fishs2: saved voice %r to %s", clean, path)
        return io.NodeOutput(saved, ui={"text": [f"saved voice '{clean}'"]})


class FishS2LoadVoice(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        voices = voice_library.list_voices()
        return io.Schema(
            node_id="FishS2LoadVoice",
            display_name="Fish S2 Load Voice",
            category=CATEGORY,
            description="Loads a saved voice from the library (no audio, no encoding). Refresh the page to see newly saved voices.",
            inputs=[
                io.Combo.Input(
                    "voice",
                    options=voices,
                    default=voices[0] if voices else None,
                    tooltip="A voice in models/fish_s2/voices/ saved with Fish S2 Save Voice.",
                ),
            ],
            outputs=[FishS2Voice.Output(display_name="voice", tooltip="The saved voice (codes + transcript).")],
        )

    @classmethod
    def fingerprint_inputs(cls, voice):
        """Reload when the file changes."""
        try:
            st = os.stat(voice_library.voice_path(voice))
        except Exception:
            return voice
        return f"{voice}:{st.st_size}:{st.st_mtime_ns}"

    @classmethod
    def validate_inputs(cls, voice):
        try:
            voice_library.voice_path(voice)
        except Exception as exc:
            return str(exc)
        return True

    @classmethod
    def execute(cls, voice) -> io.NodeOutput:
        Voice = engine("voice").Voice

        loaded = Voice.load(voice_library.voice_path(voice))
        if not loaded.name:
            loaded.name = voice
        return io.NodeOutput(loaded)
