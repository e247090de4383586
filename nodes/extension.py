"""The ComfyExtension of the pack: registers the model folder and lists the nodes."""

from __future__ import annotations

import logging
import os
import shutil

from comfy_api.latest import ComfyExtension, io

from . import paths

log = logging.getLogger("fishs2")

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE_MEDIA_DIR = os.path.join(PACK_DIR, "workflows", "media")


def install_example_media() -> list[str]:
    """Copy the example workflows' input media (synthesised, CC0) into ComfyUI's input folder, never overwriting."""
    import folder_paths

    copied = []
    try:
        names = sorted(os.listdir(EXAMPLE_MEDIA_DIR))
    except OSError:
        return copied
    target_dir = folder_paths.get_input_directory()
    for name in names:
        src = os.path.join(EXAMPLE_MEDIA_DIR, name)
        dst = os.path.join(target_dir, name)
        if name.startswith("fishs2_") and os.path.isfile(src) and not os.path.exists(dst):
            try:
                os.makedirs(target_dir, exist_ok=True)
                shutil.copyfile(src, dst)
                copied.append(dst)
            except OSError as exc:
                log.warning("fishs2: could not copy example media %s to %s: %s", name, target_dir, exc)
    return copied


class FishS2Extension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        from .decode import FishS2Decode
        from .fit import FishS2FitAudio
        from .generate import FishS2Generate
        from .mix import FishS2MixStems
        from .model_loader import FishS2LoadModel
        from .script import FishS2DialogueAssembler, FishS2TaggedText
        from .script_file import FishS2LoadScriptFile
        from .takes import FishS2PickTake, FishS2PickTakeCodes
        from .timeline import FishS2SaveSubtitles, FishS2Subtitles, FishS2Timeline
        from .voice import FishS2EncodeVoice, FishS2LoadVoice, FishS2SaveVoice

        return [
            FishS2LoadModel,
            FishS2EncodeVoice,
            FishS2SaveVoice,
            FishS2LoadVoice,
            FishS2TaggedText,
            FishS2DialogueAssembler,
            FishS2LoadScriptFile,
            FishS2Generate,
            FishS2PickTakeCodes,
            FishS2Decode,
            FishS2PickTake,
            FishS2Timeline,
            FishS2MixStems,
            FishS2FitAudio,
            FishS2Subtitles,
            FishS2SaveSubtitles,
        ]


def entrypoint() -> FishS2Extension:
    """Runs when ComfyUI loads the pack (ComfyUI 0.8 does not call `on_load`, so the setup happens here)."""
    paths.register_model_folder()
    copied = install_example_media()
    if copied:
        log.info("fishs2: copied example media for the Fish S2 workflows: %s", ", ".join(copied))
    return FishS2Extension()
