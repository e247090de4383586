"""Model configuration parsed from the official `config.json` (`model_type: fish_qwen3_omni`, spec §1.2-§1.3)."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import CheckpointError

SUPPORTED_MODEL_TYPE = "fish_qwen3_omni"


@dataclass(frozen=True)
class TransformerConfig:
    """Sizes of one transformer stack (the slow AR or the fast AR)."""

    dim: int
    n_layer: int
    n_head: int
    n_local_heads: int
    head_dim: int
    intermediate_size: int
    qk_norm: bool

    @property
    def q_size(self) -> int:
        return self.n_head * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.n_local_heads * self.head_dim


@dataclass(frozen=True)
class ModelConfig:
    """Everything the dual-AR model needs; field names follow the official flattening (spec §1.3)."""

    slow: TransformerConfig
    fast: TransformerConfig
    vocab_size: int
    num_codebooks: int
    codebook_size: int
    max_seq_len: int
    rope_base: float
    norm_eps: float
    tie_word_embeddings: bool
    semantic_begin_id: int
    semantic_end_id: int
    eos_token_id: int
    dtype: str

    @classmethod
    def from_dict(cls, raw: dict, source: str = "config.json") -> "ModelConfig":
        model_type = raw.get("model_type")
        if model_type != SUPPORTED_MODEL_TYPE:
            raise CheckpointError(
                f"{source}: model_type is {model_type!r}, expected {SUPPORTED_MODEL_TYPE!r} "
                "(an official fishaudio/s2-pro checkpoint)."
            )
        try:
            text = raw["text_config"]
            audio = raw["audio_decoder_config"]
            slow = TransformerConfig(
                dim=int(text["dim"]),
                n_layer=int(text["n_layer"]),
                n_head=int(text["n_head"]),
                n_local_heads=int(text.get("n_local_heads") or text["n_head"]),
                head_dim=int(text.get("head_dim") or text["dim"] // text["n_head"]),
                intermediate_size=int(text["intermediate_size"]),
                qk_norm=bool(text.get("attention_qk_norm", False)),
            )

            def fast_value(key: str, slow_value):
                value = audio.get(key)
                return slow_value if value is None else value

            fast = TransformerConfig(
                dim=int(fast_value("dim", slow.dim)),
                n_layer=int(audio["n_layer"]),
                n_head=int(fast_value("n_head", slow.n_head)),
                n_local_heads=int(fast_value("n_local_heads", slow.n_local_heads)),
                head_dim=int(fast_value("head_dim", slow.head_dim)),
                intermediate_size=int(fast_value("intermediate_size", slow.intermediate_size)),
                qk_norm=bool(fast_value("attention_qk_norm", False)),
            )
            config = cls(
                slow=slow,
                fast=fast,
                vocab_size=int(text["vocab_size"]),
                num_codebooks=int(audio["num_codebooks"]),
                codebook_size=int(audio["vocab_size"]),
                max_seq_len=int(text.get("max_seq_len", 2048)),
                # The official flattening takes rope_base/norm_eps for BOTH stacks from text_config.
                rope_base=float(text.get("rope_base", 10000)),
                norm_eps=float(text.get("norm_eps", 1e-5)),
                tie_word_embeddings=bool(text.get("tie_word_embeddings", True)),
                semantic_begin_id=int(raw["semantic_start_token_id"]),
                semantic_end_id=int(raw["semantic_end_token_id"]),
                eos_token_id=int(raw["eos_token_id"]),
                dtype=str(raw.get("dtype") or raw.get("torch_dtype") or "bfloat16"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{source}: missing or invalid field ({exc!r}).") from exc
        sizes = {f"{part}.{name}": getattr(stack, name) for part, stack in (("text_config", slow),
                                                                            ("audio_decoder_config", fast))
                 for name in ("dim", "n_layer", "n_head", "n_local_heads", "head_dim", "intermediate_size")}
        sizes.update({"text_config.vocab_size": config.vocab_size, "audio_decoder_config.vocab_size":
                      config.codebook_size, "audio_decoder_config.num_codebooks": config.num_codebooks})
        for name, value in sizes.items():
            if value < 1:
                raise CheckpointError(f"{source}: {name} is {value}; it must be at least 1.")
        for part, stack in (("text_config", slow), ("audio_decoder_config", fast)):
            if stack.n_head % stack.n_local_heads:
                raise CheckpointError(f"{source}: {part}.n_head ({stack.n_head}) must be a multiple of "
                                      f"n_local_heads ({stack.n_local_heads}).")
        if fast.dim != slow.dim:
            raise CheckpointError(
                f"{source}: audio_decoder_config.dim ({fast.dim}) differs from text_config.dim ({slow.dim}); "
                "checkpoints with a fast projection layer are not supported."
            )
        if config.semantic_end_id - config.semantic_begin_id + 1 != config.codebook_size:
            raise CheckpointError(
                f"{source}: semantic token range {config.semantic_begin_id}..{config.semantic_end_id} does not "
                f"hold codebook_size={config.codebook_size} tokens."
            )
        return config

    @classmethod
    def from_file(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: config.json not found; is this an S2 Pro checkpoint directory?")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path}: not valid JSON ({exc}).") from exc
        if not isinstance(raw, dict):
            raise CheckpointError(f"{path}: expected a JSON object.")
        return cls.from_dict(raw, source=str(path))

    def with_semantic_range(self, begin: int, end: int) -> "ModelConfig":
        """The official loader overwrites the semantic range with what the tokenizer holds."""
        return replace(self, semantic_begin_id=begin, semantic_end_id=end)
