"""Timeline, Subtitles and Save Subtitles: what was said when, as FISH_S2_TIMELINE, SRT / WebVTT / JSON text, and
files in ComfyUI's output folder. The engine (`fishs2.timeline`) does the work; torch loads inside `execute`."""

from __future__ import annotations

import logging
import os

from comfy_api.latest import io

from ._engine import engine

from .types import CATEGORY, CodesData, FishS2Codes, FishS2TimelineType

log = logging.getLogger("fishs2")

FPS_TOOLTIP = (
    "Video frame rate for the frame numbers in the JSON (start_frame = floor(start × fps), end_frame = "
    "ceil(end × fps), end exclusive). Use the fps of Create Video / Video Combine."
)


def check_codes(codes, input_name: str = "codes"):
    """The CodesData on a FISH_S2_CODES input, with at least one frame; CodesError naming the input otherwise."""
    CodesError = engine("errors").CodesError

    if not isinstance(codes, CodesData) and not hasattr(codes, "generation"):
        raise CodesError(f"{input_name}: connect the output of Fish S2 Dual-AR Generate.")
    segments = list(codes.generation.segments)
    if not segments or sum(int(s.codes.shape[-1]) for s in segments) == 0:
        raise CodesError(f"{input_name}: the generation holds no frames; generate again with another seed or text.")
    takes = getattr(codes, "takes", ()) or ()
    if len(takes) > 1:
        log.warning(
            "fishs2: %s holds %d takes; using the first (seed %s). Pick another with Fish S2 Pick Take (codes).",
            input_name, len(takes), getattr(codes, "seed", "?"),
        )
    return codes


def check_timeline(timeline, input_name: str = "timeline"):
    ParameterError = engine("errors").ParameterError
    Timeline = engine("timeline").Timeline

    if timeline is None:  # Fit Audio to Video passes None on when its own timeline input is empty
        raise ParameterError(
            f"{input_name}: received no timeline; if it comes from Fish S2 Fit Audio to Video, connect a timeline "
            "(from Fish S2 Timeline or Mix & Stems) to that node's timeline input."
        )
    if not isinstance(timeline, Timeline):
        raise ParameterError(
            f"{input_name}: connect the timeline output of Fish S2 Timeline, Fish S2 Mix & Stems or Fish S2 Fit "
            "Audio to Video."
        )
    return timeline


def codes_timeline(codes, gap: float = 0.0, crossfade: float = 0.0, lead_in: float = 0.0):
    """The timeline of a CodesData (script turns and speaker names included when the codes carry them)."""
    build_timeline = engine("timeline").build_timeline

    turns = list(codes.turns) if getattr(codes, "turns", None) else None
    return build_timeline(codes.generation.segments, turns, tuple(getattr(codes, "speaker_names", ()) or ()),
                          gap=gap, crossfade=crossfade, lead_in=lead_in)


def summary(timeline) -> str:
    """A short text for the UI: lines, duration, warnings."""
    text = f"{len(timeline.lines)} line(s), {float(timeline.duration):.2f} s at {timeline.sample_rate} Hz"
    return "\n".join([text, *timeline.warnings])


class FishS2Timeline(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FishS2Timeline",
            display_name="Fish S2 Timeline",
            category=CATEGORY,
            description=(
                "When each line is spoken in the audio of Fish S2 Codec Decode, from the exact frame counts of the "
                "generated codes (2048 samples per frame at 44.1 kHz). For one entry per script turn, set "
                "chunk_length to 1 on Dual-AR Generate. For audio with gaps between lines use the timeline output "
                "of Fish S2 Mix & Stems instead."
            ),
            inputs=[FishS2Codes.Input("codes", tooltip="From Fish S2 Dual-AR Generate (or Pick Take).")],
            outputs=[
                FishS2TimelineType.Output(
                    display_name="timeline",
                    tooltip="Per line: speaker, text (with and without tags), start and end. For Fish S2 Subtitles.",
                )
            ],
        )

    @classmethod
    def execute(cls, codes) -> io.NodeOutput:
        timeline = codes_timeline(check_codes(codes))
        for warning in timeline.warnings:
            log.warning("fishs2: Timeline: %s", warning)
        return io.NodeOutput(timeline)


class FishS2Subtitles(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FishS2Subtitles",
            display_name="Fish S2 Subtitles",
            category=CATEGORY,
            description=(
                "A timeline as SRT, WebVTT and JSON text (times to the millisecond; JSON also has samples and video "
                "frames). Lines cut off by a trimmed end are left out of SRT/WebVTT and flagged in the JSON, as are "
                "lines that reached max_frames."
            ),
            inputs=[
                FishS2TimelineType.Input("timeline", tooltip="From Fish S2 Timeline, Mix & Stems or Fit Audio to Video."),
                io.Float.Input("fps", default=24.0, min=0.001, max=1000.0, step=0.001, tooltip=FPS_TOOLTIP),
                io.Boolean.Input(
                    "speaker_labels",
                    default=True,
                    tooltip="Put the speaker's name in front of each subtitle ('Alice: ...' in SRT, a <v Alice> voice in WebVTT).",
                ),
                io.Boolean.Input(
                    "keep_tags",
                    default=False,
                    tooltip="Keep inline [tags] such as [whisper] in the subtitle text (the JSON always has both forms).",
                ),
            ],
            outputs=[
                io.String.Output(display_name="srt", tooltip="SubRip (.srt) subtitles."),
                io.String.Output(display_name="vtt", tooltip="WebVTT (.vtt) subtitles."),
                io.String.Output(display_name="json", tooltip="The timeline as JSON (seconds, samples, video frames, flags)."),
            ],
        )

    @classmethod
    def execute(cls, timeline, fps, speaker_labels, keep_tags) -> io.NodeOutput:
        parse_fps = engine("timeline").parse_fps

        timeline = check_timeline(timeline)
        rate = parse_fps(fps, "fps")
        srt = timeline.to_srt(tags=keep_tags, speaker_labels=speaker_labels)
        vtt = timeline.to_vtt(tags=keep_tags, speaker_labels=speaker_labels)
        return io.NodeOutput(srt, vtt, timeline.to_json(rate), ui={"text": [summary(timeline)]})


SUBTITLE_FORMATS = ("srt", "vtt", "json")


MAX_FILE_NAME_BYTES = 240  # most file systems allow 255; the counter and the extension come on top of the prefix


def save_outputs(filename_prefix: str, timeline, fps, audio=None, speaker_labels=True, keep_tags=False,
                 video=None, warnings: list[str] | None = None) -> list[dict]:
    """Write `<prefix>_<counter>_.{flac,mp4,srt,vtt,json}` into ComfyUI's output folder (one counter for all, so
    the subtitles sit next to their audio / video with the same name: players load such side-car subtitles
    automatically). → [{filename, subfolder, type}] of the written files. What the creator should know about the
    inputs (audio or video that do not match the timeline) is logged and appended to `warnings`."""
    warnings = [] if warnings is None else warnings
    import folder_paths
    import soundfile

    errors = engine("errors")
    parse_fps = engine("timeline").parse_fps

    rate = parse_fps(fps, "fps")
    if not isinstance(filename_prefix, str) or not filename_prefix.strip():
        raise errors.ParameterError("filename_prefix: is empty; type a name such as 'audio/fishs2'.")
    output_dir = folder_paths.get_output_directory()
    folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix.strip(), output_dir)
    os.makedirs(folder, exist_ok=True)
    # One counter free for every extension we write.
    exts = [*SUBTITLE_FORMATS, *(["flac"] if audio is not None else []), *([VIDEO_EXT] if video is not None else [])]
    while any(os.path.exists(os.path.join(folder, f"{filename}_{counter:05}_.{ext}")) for ext in exts):
        counter += 1
    base = f"{filename}_{counter:05}_"
    if len(f"{base}.flac".encode("utf-8")) > MAX_FILE_NAME_BYTES:
        raise errors.ParameterError(f"filename_prefix: the file name would be {len(base.encode('utf-8'))} bytes long; "
                                    "file systems allow about 250 — use a shorter name.")
    written = []
    if audio is not None:
        from .voice import check_audio_input

        waveform, sample_rate = check_audio_input(audio, join_batch=False)
        if waveform.shape[0] != 1:
            raise errors.AudioError(f"audio: holds {waveform.shape[0]} clips (takes, or Mix & Stems' stems); save "
                                    "one clip — the mix, or one take picked with Fish S2 Pick Take.")
        if sample_rate != timeline.sample_rate or waveform.shape[-1] != timeline.total_samples:
            warnings.append(
                f"the audio ({waveform.shape[-1]} samples at {sample_rate} Hz) is not the audio this timeline "
                f"describes ({timeline.total_samples} samples at {timeline.sample_rate} Hz): connect the audio and "
                "the timeline of the same node"
            )
            log.warning("fishs2: Save Subtitles: %s.", warnings[-1])
        path = os.path.join(folder, base + ".flac")
        data = waveform[0].float().clamp(-1, 1).transpose(0, 1).contiguous().numpy()
        soundfile.write(path, data, int(sample_rate), format="FLAC", subtype="PCM_24")
        written.append(base + ".flac")
    if video is not None:
        written.append(save_video(video, os.path.join(folder, f"{base}.{VIDEO_EXT}"), timeline, warnings))
    texts = {
        "srt": timeline.to_srt(tags=keep_tags, speaker_labels=speaker_labels),
        "vtt": timeline.to_vtt(tags=keep_tags, speaker_labels=speaker_labels),
        "json": timeline.to_json(rate),
    }
    for ext in SUBTITLE_FORMATS:
        path = os.path.join(folder, f"{base}.{ext}")
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write(texts[ext])
        os.replace(tmp, path)
        written.append(f"{base}.{ext}")
    return [{"filename": name, "subfolder": subfolder, "type": "output"} for name in written]


VIDEO_EXT = "mp4"


def save_video(video, path: str, timeline, warnings: list[str]) -> str:
    """Save a VIDEO (e.g. from core Create Video) as MP4 / H.264 at `path`, like core Save Video does with
    format and codec 'auto'. → the file name; a length that differs from the timeline's goes to `warnings`."""
    errors = engine("errors")

    if not hasattr(video, "save_to"):
        raise errors.ParameterError("video: connect a VIDEO, e.g. the output of Create Video.")
    try:
        seconds = float(video.get_duration())
    except Exception:  # the duration is only for the warning below
        seconds = None
    if seconds is not None and abs(seconds - float(timeline.duration)) > 0.5:
        warnings.append(
            f"the video lasts {seconds:.2f} s but the timeline {float(timeline.duration):.2f} s: fit the audio to the "
            "video (Fish S2 Fit Audio to Video, length = images, with the video's own fps) and connect its timeline"
        )
        log.warning("fishs2: Save Subtitles: %s.", warnings[-1])
    from comfy_api.latest import Types

    # 'auto' as core Save Video chooses it (ComfyUI ≥ 0.3.30); MP4 / H.264 where a runtime has no 'auto'.
    container = getattr(Types.VideoContainer, "AUTO", None) or Types.VideoContainer("mp4")
    codec = getattr(Types.VideoCodec, "AUTO", None) or Types.VideoCodec("h264")
    video.save_to(path, format=container, codec=codec)
    return os.path.basename(path)


class FishS2SaveSubtitles(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FishS2SaveSubtitles",
            display_name="Fish S2 Save Subtitles",
            category=CATEGORY,
            description=(
                "Saves the subtitles (.srt, .vtt) and the timeline (.json) into ComfyUI's output folder, and the "
                "audio (.flac) and the video (.mp4) with the same name when connected, so the files of one take sit "
                "side by side (video players load same-named .srt files as side-car subtitles)."
            ),
            is_output_node=True,
            inputs=[
                FishS2TimelineType.Input("timeline", tooltip="The timeline of the audio (from Mix & Stems, Timeline or Fit Audio to Video)."),
                io.String.Input(
                    "filename_prefix",
                    default="audio/fishs2",
                    tooltip="File name prefix inside the output folder; a counter is added (like Save Audio).",
                ),
                io.Float.Input("fps", default=24.0, min=0.001, max=1000.0, step=0.001, tooltip=FPS_TOOLTIP),
                io.Boolean.Input("speaker_labels", default=True, tooltip="Put the speaker's name in front of each subtitle."),
                io.Boolean.Input("keep_tags", default=False, tooltip="Keep inline [tags] in the subtitle text."),
                io.Audio.Input(
                    "audio",
                    optional=True,
                    tooltip="The audio this timeline describes; saved as FLAC next to the subtitles when connected.",
                ),
                io.Video.Input(
                    "video",
                    optional=True,
                    tooltip=(
                        "A video with this audio (e.g. from Create Video); saved as MP4 with the same name as the "
                        "subtitles, so players show them. Use it instead of Save Video."
                    ),
                ),
            ],
            outputs=[],
        )

    @classmethod
    def execute(cls, timeline, filename_prefix, fps, speaker_labels, keep_tags, audio=None, video=None) -> io.NodeOutput:
        timeline = check_timeline(timeline)
        warnings: list[str] = []
        files = save_outputs(filename_prefix, timeline, fps, audio, speaker_labels, keep_tags, video=video,
                             warnings=warnings)
        log.info("fishs2: saved %s", ", ".join(f["filename"] for f in files))
        ui = {"text": [f"saved {', '.join(f['filename'] for f in files)}", *timeline.warnings,
                       *(f"warning: {w}" for w in warnings)]}
        audio_files = [f for f in files if f["filename"].endswith(".flac")]
        video_files = [f for f in files if f["filename"].endswith(f".{VIDEO_EXT}")]
        if video_files:
            ui["images"] = video_files  # shown as a video on the node, like core Save Video
            ui["animated"] = [True]
        elif audio_files:
            ui["audio"] = audio_files
        return io.NodeOutput(ui=ui)
