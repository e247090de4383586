"""Model folders of the pack: `models/fish_s2/` (checkpoints, one subfolder each) and `models/fish_s2/voices/`.

`folder_paths` is ComfyUI's module; it is imported inside the functions so this file stays importable anywhere.
Nothing here creates directories except `voices_save_dir()` and `download_dir()`, which run inside `execute`.
"""

from __future__ import annotations

import os

FOLDER_KEY = "fish_s2"
VOICES_SUBDIR = "voices"
HUB_ID = "fishaudio/s2-pro"
DOWNLOAD_CHOICE = "fishaudio/s2-pro (download)"
# A subfolder with a config.json is listed; loading it reports any other missing file by name.
CHECKPOINT_MARKERS = ("config.json",)


def register_model_folder() -> None:
    """Register `models/fish_s2` under the key `fish_s2` (idempotent; paths from extra_model_paths.yaml are kept)."""
    import folder_paths

    default = os.path.join(folder_paths.models_dir, FOLDER_KEY)
    known = folder_paths.folder_names_and_paths.get(FOLDER_KEY)
    if known is None or os.path.normcase(os.path.abspath(default)) not in {
        os.path.normcase(os.path.abspath(p)) for p in known[0]
    }:
        folder_paths.add_model_folder_path(FOLDER_KEY, default)


def model_roots() -> list[str]:
    import folder_paths

    try:
        return list(folder_paths.get_folder_paths(FOLDER_KEY))
    except KeyError:
        return []


def is_checkpoint_dir(path: str) -> bool:
    return all(os.path.isfile(os.path.join(path, f)) for f in CHECKPOINT_MARKERS)


def list_checkpoints() -> list[str]:
    """Names of checkpoint subfolders (official layout) found in every registered `fish_s2` folder, sorted."""
    names: dict[str, None] = {}
    for root in model_roots():
        try:
            entries = sorted(os.listdir(root))
        except OSError:
            continue
        for name in entries:
            if name != VOICES_SUBDIR and is_checkpoint_dir(os.path.join(root, name)):
                names.setdefault(name, None)
    return list(names)


def checkpoint_path(name: str) -> str:
    """The directory of a listed checkpoint; refuses names that are not a plain subfolder name."""
    if not name or name != os.path.basename(name) or name in (".", "..") or "/" in name or "\\" in name:
        raise ValueError(f"checkpoint: '{name}' is not a checkpoint folder name; pick one from the list.")
    for root in model_roots():
        path = os.path.join(root, name)
        if is_checkpoint_dir(path):
            return path
    roots = ", ".join(model_roots()) or "models/fish_s2"
    raise FileNotFoundError(
        f"checkpoint: '{name}' was not found in {roots}; put the checkpoint folder there (config.json, "
        f"model*.safetensors, tokenizer.json, codec.pth) or choose '{DOWNLOAD_CHOICE}'."
    )


def download_dir() -> str:
    """Where the hub download goes: `<ComfyUI>/models/fish_s2` (the engine adds the `s2-pro` subfolder)."""
    import folder_paths

    return os.path.join(folder_paths.models_dir, FOLDER_KEY)


def voice_dirs() -> list[str]:
    return [os.path.join(root, VOICES_SUBDIR) for root in model_roots()]


def voices_save_dir() -> str:
    import folder_paths

    path = os.path.join(folder_paths.models_dir, FOLDER_KEY, VOICES_SUBDIR)
    os.makedirs(path, exist_ok=True)
    return path
