"""Access to the creator-feature nodes (timeline, mix, fit, takes, script file) through the pack as ComfyUI loads it.

The pack is imported the way ComfyUI's loader does (`harness.import_pack`) under a module name of its own, so these
tests neither depend on nor disturb the pack that tests/test_nodes.py loads (its import-cost and model-folder
checks stay exact). The node classes are taken from the pack's modules directly, so these tests run whether or
not the extension lists them yet. `folders` points ComfyUI's input/output folders somewhere for a while and puts
them back; no model folder is registered (the model handle is loaded from a path).
"""

from __future__ import annotations

import importlib
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import harness

MODULE = "fishs2_creator_pack"
NODE_MODULES = ("timeline", "mix", "fit", "takes", "script_file")


@dataclass
class CreatorPack:
    nodes: dict  # node_id → class

    def module(self, name: str):
        """A pack module, e.g. module('nodes.types') or module('fishs2.timeline')."""
        return importlib.import_module(f"{MODULE}.{name}")


def load() -> CreatorPack:
    harness.install_comfy()
    if MODULE not in sys.modules:
        harness.import_pack(MODULE)
    nodes = {}
    for name in NODE_MODULES:
        module = importlib.import_module(f"{MODULE}.nodes.{name}")
        for value in vars(module).values():
            if isinstance(value, type) and value.__module__ == module.__name__ and hasattr(value, "define_schema"):
                nodes[value.GET_SCHEMA().node_id] = value
    return CreatorPack(nodes)


@contextmanager
def folders(base: Path):
    """ComfyUI's input and output folders set to base/input and base/output, restored afterwards."""
    harness.install_comfy()
    import folder_paths

    old = folder_paths.get_input_directory(), folder_paths.get_output_directory()
    (base / "input").mkdir(parents=True, exist_ok=True)
    (base / "output").mkdir(parents=True, exist_ok=True)
    folder_paths.set_input_directory(str(base / "input"))
    folder_paths.set_output_directory(str(base / "output"))
    try:
        yield base
    finally:
        folder_paths.set_input_directory(old[0])
        folder_paths.set_output_directory(old[1])


def model_handle(pack: CreatorPack, base: Path):
    """FISH_S2_MODEL (the pack's handle with its ModelPatchers) for the tiny checkpoint written under `base`."""
    checkpoint = harness.make_checkpoint(base / "s2-pro")
    return pack.module("nodes.model_management").load_handle(str(checkpoint), "auto")
