"""Access to a golden fixture directory (official reference tensors); `FISHS2_GOLDEN_DIR` overrides the shipped one."""

from __future__ import annotations

import json
import os
from functools import cached_property
from pathlib import Path

SHIPPED = Path(__file__).parent / "fixtures" / "golden"


def golden_dir() -> Path:
    return Path(os.environ.get("FISHS2_GOLDEN_DIR", SHIPPED))


class Golden:
    def __init__(self, directory: Path, prefix: str):
        self.directory = directory
        self.prefix = prefix

    @cached_property
    def meta(self) -> dict:
        return json.loads((self.directory / f"{self.prefix}_cases.json").read_text())

    @cached_property
    def tensors(self) -> dict:
        from safetensors.torch import load_file

        return load_file(str(self.directory / f"{self.prefix}_cases.safetensors"))

    def has(self, key: str) -> bool:
        return key in self.tensors

    def __getitem__(self, key: str):
        return self.tensors[key]
