"""Encoder (spec §7.3): audio [B, 1, L] → latent [B, latent_dim, L / hop_length]."""

from __future__ import annotations

from torch import Tensor, nn

from .config import CodecConfig, TransformerConfig
from .layers import CausalConv1d, ResidualUnit, Snake1d
from .transformer import WindowLimitedTransformer


class EncoderBlock(nn.Module):
    """Three dilated residual units at dim/2, then a strided conv to dim (and optionally a transformer)."""

    def __init__(self, dim: int, stride: int, transformer: TransformerConfig | None) -> None:
        super().__init__()
        half = dim // 2
        self.block = nn.Sequential(
            ResidualUnit(half, dilation=1),
            ResidualUnit(half, dilation=3),
            ResidualUnit(half, dilation=9),
            Snake1d(half),
            CausalConv1d(half, dim, kernel_size=2 * stride, stride=stride),
            WindowLimitedTransformer(transformer) if transformer else nn.Identity(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class Encoder(nn.Module):
    """conv7 → EncoderBlocks (width doubles, time shrinks by each rate) → Snake → conv3."""

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        dim = cfg.encoder_dim
        layers: list[nn.Module] = [CausalConv1d(1, dim, kernel_size=7)]
        for stride, n_layer in zip(cfg.encoder_rates, cfg.encoder_transformer_layers):
            dim *= 2
            transformer = cfg.encoder_transformer(n_layer, dim) if n_layer else None
            layers.append(EncoderBlock(dim, stride, transformer))
        layers += [Snake1d(dim), CausalConv1d(dim, dim, kernel_size=3)]
        self.block = nn.Sequential(*layers)

    def forward(self, audio: Tensor) -> Tensor:
        # [B, 1, L] -> [B, latent_dim, L / hop_length]
        return self.block(audio)
