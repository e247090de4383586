"""Strict loading of the official LLM weights (spec §1.1, §2.7, §3.3).

The official loader ignores missing and unexpected keys; this one consumes and shape-checks every tensor and
names the offending keys. Weights are read lazily from the safetensors files (mmap) straight into the target
dtype and device, into a model built on the meta device, so RAM never holds a second full copy.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .config import ModelConfig
from .errors import CheckpointError
from .model import DualAR

INDEX_FILE = "model.safetensors.index.json"
FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}  # safetensors dtype names of weights we can cast to the model dtype
SINGLE_FILE = "model.safetensors"


def checkpoint_key_to_module_key(key: str, tie_word_embeddings: bool = True) -> str | None:
    """Official checkpoint key → our parameter name (None if the key has no place in the model)."""
    if key.startswith("text_model.model."):
        return "slow." + key[len("text_model.model.") :]
    if key == "text_model.lm_head.weight" and not tie_word_embeddings:
        return "slow.output.weight"
    if key.startswith("audio_decoder.codebook_embeddings."):
        return "slow." + key[len("audio_decoder.") :]
    if key.startswith("audio_decoder."):
        return "fast." + key[len("audio_decoder.") :]
    return None


def shard_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint: every shard named by the index, or the single file."""
    index = directory / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index}: unreadable shard index ({exc!r}).") from exc
        files = [directory / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(
                f"{directory}: shard file(s) {', '.join(missing)} listed in {INDEX_FILE} are missing; "
                "the download is incomplete — download the model again."
            )
        return files
    single = directory / SINGLE_FILE
    if single.is_file():
        return [single]
    raise CheckpointError(f"{directory}: no {INDEX_FILE} or {SINGLE_FILE}; not an S2 Pro checkpoint directory.")


def _describe(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(sorted(keys)[:limit])
    return f"{shown}{' …' if len(keys) > limit else ''} ({len(keys)} in all)"


def load_weights(model: DualAR, directory: Path, dtype: torch.dtype, device: torch.device | str) -> None:
    """Fill `model` (built on the meta device) from the checkpoint's safetensors files."""
    from safetensors import safe_open
    from safetensors import SafetensorError

    expected = {name: tuple(p.shape) for name, p in model.named_parameters()}
    state: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    mismatched: list[str] = []
    not_float: list[str] = []
    for path in shard_files(directory):
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                for key in f.keys():
                    name = checkpoint_key_to_module_key(key, model.config.tie_word_embeddings)
                    if name is None or name not in expected:
                        unexpected.append(key)
                        continue
                    tensor = f.get_slice(key)
                    shape = tuple(tensor.get_shape())
                    if tensor.get_dtype() not in FLOAT_DTYPES:
                        not_float.append(f"{key} ({tensor.get_dtype()})")
                        continue
                    if shape != expected[name]:
                        mismatched.append(f"{key} {list(shape)} (expected {list(expected[name])})")
                        continue
                    state[name] = f.get_tensor(key).to(device=device, dtype=dtype)
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(
                f"{path}: cannot read safetensors file ({exc}); it is truncated or corrupt — download it again."
            ) from exc
    missing = [name for name in expected if name not in state]
    if not_float:
        raise CheckpointError(
            f"{directory}: tensors that are not floating point: {_describe(not_float)}. fishs2 loads the official "
            "bf16 weights (quantized or converted checkpoints are not supported); download the original model."
        )
    problems = []
    if mismatched:
        problems.append("tensors with the wrong shape: " + _describe(mismatched))
    if unexpected:
        problems.append("unexpected tensors: " + _describe(unexpected))
    if missing:
        problems.append("missing tensors: " + _describe(missing))
    if problems:
        raise CheckpointError(
            f"{directory}: the weights do not match config.json — " + "; ".join(problems)
            + ". Is this shard from another model? Download the checkpoint again into an empty folder."
        )
    model.load_state_dict(state, strict=True, assign=True)


def load_model(directory: str | Path, config: ModelConfig, dtype: torch.dtype, device: torch.device | str) -> DualAR:
    """Build the dual-AR model for `config` and load its weights from `directory`."""
    with torch.device("meta"):
        model = DualAR(config)
    load_weights(model, Path(directory), dtype, device)
    return model.eval().requires_grad_(False)
