"""Where checkpoints come from: a local directory, or a Hugging Face hub id downloaded once into a models folder.

A download goes to `<models_dir>/<name>.partial/` and is renamed to `<models_dir>/<name>/` only after every file
the checkpoint needs is present, so an interrupted download never leaves a directory that loads as if complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from .errors import CheckpointError

DEFAULT_REPO = "fishaudio/s2-pro"
REQUIRED_FILES = ("config.json", "tokenizer.json", "codec.pth")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def default_models_dir() -> Path:
    return Path(os.environ.get("FISHS2_MODELS_DIR", Path.home() / ".cache" / "fishs2"))


def missing_files(directory: Path) -> list[str]:
    """Files a complete checkpoint directory lacks (config, tokenizer, codec, every weight shard)."""
    missing = [name for name in REQUIRED_FILES if not (directory / name).is_file()]
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
            return missing + [index.name + " (unreadable)"]
        missing += sorted(s for s in shards if not (directory / s).is_file())
    elif not (directory / "model.safetensors").is_file():
        missing.append("model.safetensors or model.safetensors.index.json")
    return missing


def is_hub_id(source: str) -> bool:
    return bool(_HUB_ID.match(source)) and not Path(source).exists()


def resolve(
    source: str | Path,
    models_dir: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """A checkpoint directory for `source` (a directory or a hub id), downloading a hub id when absent."""
    path = Path(source).expanduser()
    if path.is_dir():
        missing = missing_files(path)
        if missing:
            raise CheckpointError(f"{path}: incomplete checkpoint, missing {', '.join(missing)}.")
        return path
    if not is_hub_id(str(source)):
        raise CheckpointError(f"{source}: no such checkpoint directory, and not a hub id like {DEFAULT_REPO!r}.")
    target = Path(models_dir or default_models_dir()).expanduser() / str(source).split("/")[-1]
    if target.is_dir() and not missing_files(target):
        return target
    return download(str(source), target, progress)


def download(repo_id: str, target: Path, progress: Callable[[int, int], None] | None = None) -> Path:
    """snapshot_download into `<target>.partial`, check completeness, then rename to `target`."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise CheckpointError(f"{repo_id}: downloading needs huggingface_hub (pip install huggingface_hub).") from exc
    partial = target.with_name(target.name + ".partial")
    partial.parent.mkdir(parents=True, exist_ok=True)
    try:
        snapshot_download(repo_id, local_dir=partial, tqdm_class=_progress_class(progress))
    except Exception as exc:  # network, auth, disk: all end the same way for the user
        raise CheckpointError(
            f"{repo_id}: the model is not at {target} and could not be downloaded ({type(exc).__name__}: {exc}). "
            f"Check the network or download it elsewhere and copy the files into {target}."
        ) from exc
    missing = missing_files(partial)
    if missing:
        raise CheckpointError(f"{repo_id}: download finished without {', '.join(missing)}; nothing was installed.")
    if target.exists():
        shutil.rmtree(target)
    partial.rename(target)
    return target


def _progress_class(progress: Callable[[int, int], None] | None):
    """A tqdm class that shows the usual bar and also reports (done, total) bytes to `progress`."""
    from tqdm.auto import tqdm

    if progress is None:
        return tqdm

    class Reporting(tqdm):
        def update(self, n=1):
            result = super().update(n)
            if self.total:
                progress(int(self.n), int(self.total))
            return result

    return Reporting
