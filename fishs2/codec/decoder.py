"""Decoder (spec §7.6): latent [B, latent_dim, T'] → audio [B, 1, T' · hop_length] in [−1, 1]."""

from __future__ import annotations

from torch import Tensor, nn

from .config import CodecConfig
from .layers import CausalConv1d, CausalConvTranspose1d, ResidualUnit, Snake1d


class DecoderBlock(nn.Module):
    """Snake → transposed conv (time × stride, width in → out) → three dilated residual units."""

    def __init__(self, in_dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            Snake1d(in_dim),
            CausalConvTranspose1d(in_dim, out_dim, kernel_size=2 * stride, stride=stride),
            ResidualUnit(out_dim, dilation=1),
            ResidualUnit(out_dim, dilation=3),
            ResidualUnit(out_dim, dilation=9),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class Decoder(nn.Module):
    """conv7 → DecoderBlocks (width halves, time grows by each rate) → Snake → conv7 → tanh.

    The official config lists decoder transformer layers, but they are never inserted into the
    network (no weights, never run), so there are none here.
    """

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        dim = cfg.decoder_dim
        layers: list[nn.Module] = [CausalConv1d(cfg.latent_dim, dim, kernel_size=7)]
        for stride in cfg.decoder_rates:
            layers.append(DecoderBlock(dim, dim // 2, stride))
            dim //= 2
        layers += [Snake1d(dim), CausalConv1d(dim, 1, kernel_size=7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        # [B, latent_dim, T'] -> [B, 1, T' * hop_length]
        return self.model(z)
