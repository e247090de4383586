"""Where the engine lives as seen from the pack: `<pack>.fishs2`, or `fishs2` itself when the pack folder is named
`fishs2` (then the pack's `__init__` also serves the engine's modules; see there). Every node imports the engine
through `engine()`, so one process never holds two copies of an engine module (and two kinds of its errors)."""

from __future__ import annotations

import importlib

PACK = __package__.rpartition(".")[0]
ENGINE = PACK if PACK == "fishs2" else f"{PACK}.fishs2"


def engine(module: str):
    """The engine module `module` (e.g. "errors", "script", "voice", "pipeline")."""
    return importlib.import_module(f"{ENGINE}.{module}")
