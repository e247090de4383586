"""Fit Audio to Video: sample rate (44.1 kHz native / 48 kHz), exact length (seconds, frame count at an fps, or the
length of an IMAGE batch) and loudness (LUFS), with the timeline kept in step. The engine (`fishs2.fit`) does the
work; torch loads inside `execute`."""

from __future__ import annotations

import logging

from comfy_api.latest import io

from ._engine import engine

from .takes import LENGTHS_KEY
from .timeline import FishS2TimelineType, check_timeline
from .types import CATEGORY

log = logging.getLogger("fishs2")

RATES = ["44100 (native)", "48000 (video)"]
LENGTHS = ["keep", "duration", "frame_count", "images"]


class FishS2FitAudio(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FishS2FitAudio",
            display_name="Fish S2 Fit Audio to Video",
            category=CATEGORY,
            description=(
                "Makes audio ready for a video: resamples to 48 kHz if asked, pads with silence or trims the end to "
                "an exact length (frame_count × sample_rate / fps samples, rounded half up), and normalises the "
                "loudness (ITU-R BS.1770). A connected timeline comes out matching the new audio."
            ),
            inputs=[
                io.Audio.Input("audio", tooltip="The audio to fit (the mix, or the stems batch)."),
                io.Combo.Input(
                    "sample_rate",
                    options=RATES,
                    default=RATES[0],
                    tooltip="44100 Hz is the model's native rate; 48000 Hz is the usual rate of video (torchaudio resampling).",
                ),
                io.Combo.Input(
                    "length",
                    options=LENGTHS,
                    default="keep",
                    tooltip=(
                        "keep: as it is. duration: duration_seconds. frame_count: frame_count frames at fps. images: as "
                        "many frames as the connected IMAGE batch, at fps. Longer audio is trimmed at the end, shorter "
                        "is padded with silence."
                    ),
                ),
                io.Float.Input("duration_seconds", default=10.0, min=0.0, max=86400.0, step=0.01,
                               tooltip="Target length in seconds (length = duration)."),
                io.Int.Input("frame_count", default=240, min=0, max=10_000_000,
                             tooltip="Target length in video frames (length = frame_count)."),
                io.Float.Input("fps", default=24.0, min=0.001, max=1000.0, step=0.001,
                               tooltip="Frame rate for frame_count and images, the same as Create Video's fps."),
                io.Boolean.Input("normalize_loudness", default=False,
                                 tooltip="Bring the integrated loudness (ITU-R BS.1770) to target_lufs."),
                io.Float.Input(
                    "target_lufs",
                    default=-16.0,
                    min=-70.0,
                    max=0.0,
                    step=0.5,
                    tooltip="Loudness target: -16 LUFS is common for online video and podcasts, -23 LUFS for broadcast (EBU R128), -14 for streaming.",
                ),
                io.Image.Input("images", optional=True,
                               tooltip="The video frames whose count sets the length (length = images)."),
                FishS2TimelineType.Input("timeline", optional=True,
                                         tooltip="The timeline of this audio (from Mix & Stems or Timeline); comes out fitted."),
                io.Audio.Input(
                    "loudness_reference",
                    optional=True,
                    tooltip=(
                        "Measure the loudness on this audio (e.g. the mix) and apply the same gain here (e.g. the "
                        "stems), so the stems still add up to the normalised mix."
                    ),
                ),
            ],
            outputs=[
                io.Audio.Output(display_name="audio", tooltip="The fitted audio (float32 CPU, same batch and channels)."),
                FishS2TimelineType.Output(display_name="timeline", tooltip="The connected timeline matching the fitted audio (None if none was connected)."),
            ],
        )

    @classmethod
    def execute(cls, audio, sample_rate, length, duration_seconds, frame_count, fps, normalize_loudness, target_lufs,
                images=None, timeline=None, loudness_reference=None) -> io.NodeOutput:
        ParameterError = engine("errors").ParameterError
        fit_audio = engine("fit").fit_audio

        waveform = _audio_batch(audio, "audio")
        rate_in = _rate(audio, "audio")
        if sample_rate not in RATES:
            raise ParameterError(f"sample_rate: {sample_rate!r} is not one of {', '.join(RATES)}.")
        output_rate = int(sample_rate.split()[0])
        options = {}
        if length == "duration":
            options["duration"] = duration_seconds
        elif length == "frame_count":
            options.update(frame_count=int(frame_count), fps=fps)
        elif length == "images":
            if images is None or not hasattr(images, "shape"):
                raise ParameterError("images: connect the IMAGE batch of the video (length = images), or pick another length.")
            options.update(frame_count=int(images.shape[0]), fps=fps)
        elif length != "keep":
            raise ParameterError(f"length: {length!r} is not one of {', '.join(LENGTHS)}.")
        reference = reference_rate = None
        if loudness_reference is not None:
            reference = _audio_batch(loudness_reference, "loudness_reference")
            reference_rate = _rate(loudness_reference, "loudness_reference")
        if timeline is not None:
            timeline = check_timeline(timeline)
        result = fit_audio(
            waveform,
            rate_in,
            output_rate=output_rate,
            target_lufs=target_lufs if normalize_loudness else None,
            reference=reference,
            reference_rate=reference_rate,
            timeline=timeline,
            **options,
        )
        for warning in result.warnings:
            log.warning("fishs2: Fit Audio: %s", warning)
        out = {"waveform": result.waveform.float().contiguous().cpu(), "sample_rate": result.sample_rate}
        lengths = audio.get(LENGTHS_KEY) if isinstance(audio, dict) else None
        if length == "keep" and isinstance(lengths, (list, tuple)) and len(lengths) == out["waveform"].shape[0]:
            # takes of different lengths stay marked through a resampling, for Pick Take to drop their padding
            total = out["waveform"].shape[-1]
            out[LENGTHS_KEY] = [min(total, round(int(n) * result.sample_rate / rate_in)) for n in lengths]
        seconds = result.waveform.shape[-1] / result.sample_rate
        ui = {"text": [f"{result.waveform.shape[-1]} samples at {result.sample_rate} Hz ({seconds:.3f} s)",
                       *result.warnings]}
        return io.NodeOutput(out, result.timeline, ui=ui)


def _audio_batch(audio, input_name: str):
    """AUDIO → its waveform [B, C, T] as is (a batch stays a batch, unlike the voice encoder's input)."""
    AudioError = engine("errors").AudioError

    if not isinstance(audio, dict) or "waveform" not in audio or "sample_rate" not in audio:
        raise AudioError(f"{input_name}: expected ComfyUI AUDIO ({{'waveform', 'sample_rate'}}).")
    waveform = audio["waveform"]
    if not hasattr(waveform, "dim") or waveform.dim() != 3:
        raise AudioError(f"{input_name}: waveform must be a tensor [batch, channels, samples].")
    _rate(audio, input_name)
    return waveform.detach().float().cpu()


def _rate(audio, input_name: str) -> int:
    AudioError = engine("errors").AudioError

    rate = audio["sample_rate"]
    try:
        ok = not isinstance(rate, bool) and float(rate) > 0 and float(rate).is_integer()
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise AudioError(f"{input_name}: sample_rate must be a positive whole number, got {rate!r}.")
    return int(rate)
