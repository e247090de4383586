"""Sizes of the modded DAC codec (spec §7). Defaults are the official S2 Pro codec."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CheckpointError


@dataclass(frozen=True)
class TransformerConfig:
    """One WindowLimitedTransformer: causal attention limited to the last `window_size` steps."""

    n_layer: int = 8
    dim: int = 1024
    n_head: int = 16
    head_dim: int = 64
    intermediate_size: int = 3072
    window_size: int = 128
    rope_base: float = 10000.0
    norm_eps: float = 1e-5


@dataclass(frozen=True)
class CodecConfig:
    """Hyper-parameters of the codec; `from_json` reads the official `modded_dac_vq` hydra config."""

    sample_rate: int = 44100
    encoder_dim: int = 64
    encoder_rates: tuple[int, ...] = (2, 4, 8, 8)
    decoder_dim: int = 1536
    decoder_rates: tuple[int, ...] = (8, 8, 4, 2)
    # Transformer layers appended to each encoder block (0 = none). Their window is not set by the
    # official YAML, so the official code falls back to 512.
    encoder_transformer_layers: tuple[int, ...] = (0, 0, 0, 4)
    encoder_transformer_window: int = 512
    # `transformer_general_config`: the encoder transformers use n_head = dim / head_dim and an FFN
    # width of 3 * dim.
    head_dim: int = 64
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    # Quantizer (`DownsampleResidualVectorQuantize`).
    latent_dim: int = 1024
    n_codebooks: int = 9  # residual codebooks; the semantic codebook comes on top
    codebook_size: int = 1024
    semantic_codebook_size: int = 4096
    codebook_dim: int = 8
    downsample_factor: tuple[int, ...] = (2, 2)
    pre_module: TransformerConfig = field(default_factory=TransformerConfig)
    post_module: TransformerConfig = field(default_factory=TransformerConfig)

    def __post_init__(self) -> None:
        if len(self.encoder_transformer_layers) != len(self.encoder_rates):
            raise CheckpointError(
                f"encoder_transformer_layers {list(self.encoder_transformer_layers)} needs one entry "
                f"per encoder rate {list(self.encoder_rates)}"
            )
        encoder_out = self.encoder_dim * 2 ** len(self.encoder_rates)
        if encoder_out != self.latent_dim:
            raise CheckpointError(
                f"encoder output width {encoder_out} (encoder_dim * 2^{len(self.encoder_rates)}) "
                f"differs from the quantizer input_dim {self.latent_dim}"
            )
        if math.prod(self.decoder_rates) != self.hop_length:
            raise CheckpointError(
                f"decoder rates {list(self.decoder_rates)} must multiply to the hop length "
                f"{self.hop_length} so that decoding gives one frame of audio per code frame"
            )
        for name, module in (("pre_module", self.pre_module), ("post_module", self.post_module)):
            # The official module would add input/output projections here; no released codec has them.
            if module.dim != self.latent_dim:
                raise CheckpointError(
                    f"quantizer {name} dim {module.dim} differs from input_dim {self.latent_dim}"
                )

    @property
    def hop_length(self) -> int:
        """Audio samples per encoder latent step (512)."""
        return math.prod(self.encoder_rates)

    @property
    def frame_length(self) -> int:
        """Audio samples per code frame (2048)."""
        return self.hop_length * math.prod(self.downsample_factor)

    @property
    def num_codebooks(self) -> int:
        """Rows of a code matrix: 1 semantic + the residual codebooks (10)."""
        return 1 + self.n_codebooks

    def encoder_transformer(self, n_layer: int, dim: int) -> TransformerConfig:
        """Config of the transformer closing an encoder block of width `dim`."""
        return TransformerConfig(
            n_layer=n_layer,
            dim=dim,
            n_head=dim // self.head_dim,
            head_dim=self.head_dim,
            intermediate_size=3 * dim,
            window_size=self.encoder_transformer_window,
            rope_base=self.rope_base,
            norm_eps=self.norm_eps,
        )

    @classmethod
    def from_json(cls, path: str | Path) -> CodecConfig:
        """Read a `modded_dac_vq.json` (hydra structure of `modded_dac_vq.yaml`); absent keys keep defaults."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"cannot read codec config {path}: {e}") from e
        try:
            return cls._from_dict(raw)
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise CheckpointError(f"codec config {path} is malformed: {e}") from e

    @classmethod
    def _from_dict(cls, raw: dict[str, Any]) -> CodecConfig:
        default = cls()
        general = raw.get("transformer_general_config") or {}
        quant = raw.get("quantizer") or {}
        kwargs: dict[str, Any] = {}
        for key in ("sample_rate", "encoder_dim", "decoder_dim"):
            if key in raw:
                kwargs[key] = int(raw[key])
        for key in ("encoder_rates", "decoder_rates", "encoder_transformer_layers"):
            if key in raw:
                kwargs[key] = tuple(int(v) for v in raw[key])
        if "head_dim" in general:
            kwargs["head_dim"] = int(general["head_dim"])
        if "rope_base" in general:
            kwargs["rope_base"] = float(general["rope_base"])
        if "norm_eps" in general:
            kwargs["norm_eps"] = float(general["norm_eps"])
        quant_keys = {
            "input_dim": "latent_dim",
            "n_codebooks": "n_codebooks",
            "codebook_size": "codebook_size",
            "semantic_codebook_size": "semantic_codebook_size",
            "codebook_dim": "codebook_dim",
        }
        for src, dst in quant_keys.items():
            if src in quant:
                kwargs[dst] = int(quant[src])
        if "downsample_factor" in quant:
            kwargs["downsample_factor"] = tuple(int(v) for v in quant["downsample_factor"])
        for name in ("pre_module", "post_module"):
            if name in quant:
                kwargs[name] = _transformer_from_dict(quant[name], getattr(default, name))
        return cls(**kwargs)


def _transformer_from_dict(raw: dict[str, Any], default: TransformerConfig) -> TransformerConfig:
    cfg = raw.get("config") or {}
    n_local_heads = int(cfg.get("n_local_heads", -1))
    if n_local_heads > 0 and n_local_heads != int(cfg.get("n_head", n_local_heads)):
        raise ValueError("grouped-query attention (n_local_heads != n_head) is not used by any codec")
    dim = int(cfg.get("dim", default.dim))
    head_dim = int(cfg.get("head_dim", default.head_dim))
    return TransformerConfig(
        n_layer=int(cfg.get("n_layer", default.n_layer)),
        dim=dim,
        n_head=int(cfg.get("n_head", dim // head_dim)),
        head_dim=head_dim,
        intermediate_size=int(cfg.get("intermediate_size", default.intermediate_size)),
        window_size=int(raw.get("window_size", default.window_size)),
        rope_base=float(cfg.get("rope_base", default.rope_base)),
        norm_eps=float(cfg.get("norm_eps", default.norm_eps)),
    )
