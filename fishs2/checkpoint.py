"""Strict loading of the official LLM weights (spec §1.1, §2.7, §3.3).

The official loader ignores missing and unexpected keys; this one consumes and shape-checks every tensor and
names the offending keys. Weights are read one tensor at a time straight into the target dtype and device, into a
model built on the meta device, so host RAM holds the loaded weights plus at most one tensor in transit.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from .config import ModelConfig
from .errors import CheckpointError
from .model import DualAR

INDEX_FILE = "model.safetensors.index.json"
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


# Our parameter → the checkpoint tensors stacked along its rows, in order: the checkpoint's two SwiGLU input
# projections become one matrix, so a decode step runs one matrix-vector product where it would run two.
FUSED_ROWS = {"feed_forward.w13.weight": ("feed_forward.w1.weight", "feed_forward.w3.weight")}


def parameter_sources(model: DualAR) -> dict[str, tuple[str, slice, tuple[int, ...]]]:
    """What the checkpoint must hold for `model`: tensor name (as `checkpoint_key_to_module_key` names it) →
    (our parameter, its rows that the tensor fills, the tensor's shape)."""
    sources = {}
    for name, param in model.named_parameters():
        fused = next((parts for suffix, parts in FUSED_ROWS.items() if name.endswith(suffix)), None)
        if fused is None:
            sources[name] = (name, slice(None), tuple(param.shape))
            continue
        rows, prefix = param.shape[0] // len(fused), name[: name.rindex("feed_forward.")]
        for i, part in enumerate(fused):
            sources[prefix + part] = (name, slice(i * rows, (i + 1) * rows), (rows, *param.shape[1:]))
    return sources


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


MAX_HEADER_BYTES = 100 * 2**20  # the safetensors format's own limit; a larger claim is a corrupt or hostile file


class TensorFile:
    """One safetensors file, read tensor by tensor with plain file reads.

    Not memory-mapped on purpose: a mapped file's touched pages count as the process's memory until the file is
    closed, so converting a mapped shard (bf16 → fp32) would hold the shard and its converted copy at once. Here
    each tensor's bytes live only until they are converted, so loading needs the loaded weights plus one tensor.
    Format: 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}}, the data.
    """

    DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}

    def __init__(self, path: Path):
        self.path = path
        self._file = open(path, "rb")
        size = path.stat().st_size
        try:
            length = int.from_bytes(self._file.read(8), "little")
            if not 2 <= length <= min(size - 8, MAX_HEADER_BYTES):
                raise ValueError(f"header length {length} does not fit a {size}-byte file")
            header = json.loads(self._file.read(length))
            self._start = 8 + length
            self.entries = {k: v for k, v in header.items() if k != "__metadata__"}
            for key, entry in self.entries.items():
                begin, end = entry["data_offsets"]
                if entry["dtype"] not in self.DTYPES:
                    raise ValueError(f"{key}: unknown dtype {entry['dtype']!r}")
                itemsize = torch.empty(0, dtype=self.DTYPES[entry["dtype"]]).element_size()
                if end - begin != math.prod(entry["shape"]) * itemsize or self._start + end > size:
                    raise ValueError(f"{key}: data runs past the end of the file or does not match its shape")
        except (ValueError, KeyError, TypeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            self._file.close()
            raise CheckpointError(
                f"{path}: cannot read safetensors file ({exc}); it is truncated or corrupt — download it again."
            ) from exc

    def __enter__(self) -> "TensorFile":
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.entries[key]["shape"])

    def dtype(self, key: str) -> torch.dtype:
        return self.DTYPES[self.entries[key]["dtype"]]

    def read(self, key: str) -> torch.Tensor:
        begin, end = self.entries[key]["data_offsets"]
        buffer = bytearray(end - begin)
        self._file.seek(self._start + begin)
        if self._file.readinto(buffer) != len(buffer):
            raise CheckpointError(f"{self.path}: {key} is cut short; the file is truncated — download it again.")
        if not buffer:
            return torch.empty(self.shape(key), dtype=self.dtype(key))
        return torch.frombuffer(buffer, dtype=self.dtype(key)).reshape(self.shape(key))


def load_weights(model: DualAR, directory: Path, dtype: torch.dtype, device: torch.device | str) -> None:
    """Fill `model` (built on the meta device) from the checkpoint's safetensors files, one tensor at a time."""
    sources = parameter_sources(model)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    state: dict[str, torch.Tensor] = {}
    loaded: set[str] = set()
    unexpected: list[str] = []
    mismatched: list[str] = []
    not_float: list[str] = []
    for path in shard_files(directory):
        try:
            with TensorFile(path) as f:
                for key in f.entries:
                    name = checkpoint_key_to_module_key(key, model.config.tie_word_embeddings)
                    if name is None or name not in sources:
                        unexpected.append(key)
                        continue
                    if not f.dtype(key).is_floating_point:
                        not_float.append(f"{key} ({f.entries[key]['dtype']})")
                        continue
                    target, rows, shape = sources[name]
                    if f.shape(key) != shape:
                        mismatched.append(f"{key} {list(f.shape(key))} (expected {list(shape)})")
                        continue
                    if shape == shapes[target]:
                        state[target] = f.read(key).to(device=device, dtype=dtype)
                    else:  # a part of a stacked parameter, converted straight into its rows (no whole-size copy)
                        if target not in state:
                            state[target] = torch.empty(shapes[target], dtype=dtype, device=device)
                        state[target][rows].copy_(f.read(key))
                    loaded.add(name)
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot read the file ({exc}); download it again.") from exc
    missing = [name for name in sources if name not in loaded]
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
