"""Where checkpoints come from: a local directory, or a Hugging Face hub id downloaded once into a models folder.

A download goes to `<models_dir>/<folder>.partial/` and is renamed to `<models_dir>/<folder>/` only after every file
the checkpoint needs is present, so an interrupted download never leaves a directory that loads as if complete.
The folder is the repository's name for the official owner (`fishaudio/s2-pro` → `s2-pro`, where users put a
manual download too) and `<owner>--<name>` for any other, so two owners' models of one name never share a folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Sequence
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


def hub_folder(repo_id: str) -> str:
    """The folder a hub id downloads into, inside the models folder (see the module's docstring)."""
    owner, name = repo_id.split("/")
    return name if owner == DEFAULT_REPO.split("/")[0] else f"{owner}--{name}"


def resolve(
    source: str | Path,
    models_dir: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    *,
    models_root: str | Path | Sequence[str | Path] | None = None,
) -> Path:
    """A checkpoint directory for `source` (a directory or a hub id), downloading a hub id when absent.

    `models_root` (a folder or several) confines the result: a directory whose real path — after following
    symlinks — lies outside every root is refused, so a name or link handed in by a client can never make a server
    read files elsewhere. Without it (the CLI and Python API) any directory the caller names is used.
    """
    if not isinstance(source, (str, Path)) or not str(source).strip():
        raise CheckpointError(f"checkpoint: expected a directory or a hub id like {DEFAULT_REPO!r}, got {source!r}.")
    roots = _roots(models_root)
    path = Path(source).expanduser()
    if path.is_dir():
        _check_inside(path, roots)
        missing = missing_files(path)
        if missing:
            raise CheckpointError(
                f"{path}: incomplete checkpoint, missing {', '.join(missing)}; copy the missing files from the "
                f"model's download (or delete the folder and download {DEFAULT_REPO} again)."
            )
        return path
    if path.exists():
        raise CheckpointError(f"{source}: is a file; give the checkpoint directory that holds config.json.")
    if not is_hub_id(str(source)):
        raise CheckpointError(
            f"{source}: no such checkpoint directory, and not a hub id like {DEFAULT_REPO!r}; check the path."
        )
    target = Path(models_dir or default_models_dir()).expanduser() / hub_folder(str(source))
    if roots:
        _check_inside(target if target.exists() else target.parent, roots)
    if target.is_dir() and not missing_files(target):
        return target
    return download(str(source), target, progress)


def _roots(models_root) -> list[Path]:
    if models_root is None:
        return []
    items = [models_root] if isinstance(models_root, (str, Path)) else list(models_root)
    return [Path(os.path.realpath(Path(r).expanduser())) for r in items]


def _check_inside(path: Path, roots: list[Path]) -> None:
    """CheckpointError unless the real path of `path` lies inside one of `roots` (no check without roots)."""
    if not roots:
        return
    real = Path(os.path.realpath(path))
    if any(real == root or root in real.parents for root in roots):
        return
    shown = ", ".join(str(r) for r in roots)
    via = f" (it leads to {real})" if real != Path(os.path.abspath(path)) else ""
    raise CheckpointError(
        f"{path}: is outside the models folder {shown}{via}; move or copy the checkpoint folder into the models "
        "folder (a symlink pointing elsewhere is not followed), or register its real folder as a model folder."
    )


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
