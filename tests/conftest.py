"""Shared fixtures: tiny checkpoints in the official layout, read by the real loader."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .golden import SHIPPED

GOLDEN_MODEL = SHIPPED / "tiny_s2"
GOLDEN_CODEC = SHIPPED / "tiny_codec"


def copy_tiny_checkpoint(target: Path) -> Path:
    """The golden tiny dual-AR checkpoint and tiny codec together in one directory (the official layout)."""
    target.mkdir(parents=True, exist_ok=True)
    for source in (GOLDEN_MODEL, GOLDEN_CODEC):
        for f in source.iterdir():
            shutil.copy(f, target / f.name)
    return target


@pytest.fixture(scope="session")
def tiny_checkpoint_dir(tmp_path_factory) -> Path:
    return copy_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "s2-pro")


@pytest.fixture(scope="session")
def tiny_tts(tiny_checkpoint_dir):
    from fishs2 import FishS2

    return FishS2.from_pretrained(tiny_checkpoint_dir, device="cpu", dtype="fp32")
