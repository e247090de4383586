"""Fish S2 Pro for ComfyUI: text-to-speech, voice cloning and dialogue with Fish Audio S2 Pro, as a node graph.

One registration form (V3 `comfy_entrypoint`); no NODE_CLASS_MAPPINGS. Importing this file loads neither torch
nor the engine: the node modules are imported when ComfyUI asks for the node list, and the engine (`fishs2/`,
imported relatively as `<pack>.fishs2`) inside `execute`.
"""

import os as _os

WEB_DIRECTORY = "./web"

__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]

if __name__ == "fishs2":
    # The repository folder is usually named like the engine package inside it, so ComfyUI's loader (and pytest's
    # package discovery) may import this file as `fishs2`. Let `fishs2.<module>` then resolve to the engine's
    # modules as well, so `import fishs2.pipeline` means the same thing whichever way the folder was entered.
    __path__.append(_os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "fishs2"))

    def __getattr__(name):
        if name == "FishS2":
            from .pipeline import FishS2

            return FishS2
        if name == "Voice":
            from .voice import Voice

            return Voice
        raise AttributeError(f"module 'fishs2' has no attribute {name!r}")


async def comfy_entrypoint():
    from .nodes.extension import entrypoint

    return entrypoint()
