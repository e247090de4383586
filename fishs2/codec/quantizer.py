"""Quantizer (spec §7.5): downsample ×4, semantic + residual VQ, and the way back up."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import CodecConfig
from .layers import CausalConv1d, CausalConvTranspose1d, ConvNeXtBlock, WNConv1d
from .transformer import WindowLimitedTransformer


class VectorQuantize(nn.Module):
    """One codebook: project to codebook_dim, pick the nearest code by cosine similarity, project back."""

    def __init__(self, input_dim: int, codebook_size: int, codebook_dim: int) -> None:
        super().__init__()
        self.in_proj = WNConv1d(input_dim, codebook_dim, kernel_size=1)
        self.out_proj = WNConv1d(codebook_dim, input_dim, kernel_size=1)
        self.codebook = nn.Embedding(codebook_size, codebook_dim)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """z [B, D, T] → (quantised z [B, D, T], indices [B, T])."""
        z_e = self.in_proj(z)  # [B, d, T]
        indices = self.nearest(z_e)
        z_q = self.codebook(indices).transpose(1, 2)
        # The official straight-through expression, kept literally: z_e + (z_q − z_e) is not always
        # bit-identical to z_q.
        z_q = z_e + (z_q - z_e)
        return self.out_proj(z_q), indices

    def nearest(self, z_e: Tensor) -> Tensor:
        """Index of the most cosine-similar codebook row for every step of z_e [B, d, T] → [B, T]."""
        batch = z_e.shape[0]
        enc = F.normalize(z_e.transpose(1, 2).reshape(-1, z_e.shape[1]))  # [B*T, d]
        book = F.normalize(self.codebook.weight)  # [N, d]
        dist = enc.pow(2).sum(1, keepdim=True) - 2 * enc @ book.t() + book.pow(2).sum(1, keepdim=True).t()
        return (-dist).max(1).indices.view(batch, -1)

    def decode(self, indices: Tensor) -> Tensor:
        """indices [B, T] → z [B, D, T] (the un-normalised codebook rows, projected back)."""
        return self.out_proj(self.codebook(indices).transpose(1, 2))


class ResidualVectorQuantize(nn.Module):
    """A chain of VQs, each quantising what the previous ones left over."""

    def __init__(self, input_dim: int, n_codebooks: int, codebook_size: int, codebook_dim: int) -> None:
        super().__init__()
        self.quantizers = nn.ModuleList(
            VectorQuantize(input_dim, codebook_size, codebook_dim) for _ in range(n_codebooks)
        )

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """z [B, D, T] → (sum of quantised stages [B, D, T], codes [B, n, T])."""
        residual = z
        outputs, codes = [], []
        for quantizer in self.quantizers:
            z_q, indices = quantizer(residual)
            residual = residual - z_q
            outputs.append(z_q)
            codes.append(indices)
        return _sum_in_order(outputs), torch.stack(codes, dim=1)

    def decode(self, codes: Tensor) -> Tensor:
        """codes [B, n, T] → z [B, D, T], summed left to right."""
        return _sum_in_order([q.decode(codes[:, i]) for i, q in enumerate(self.quantizers)])


def _sum_in_order(tensors: list[Tensor]) -> Tensor:
    """t0 + t1 + … accumulated left to right, the official order (float addition is not associative)."""
    total = tensors[0]
    for t in tensors[1:]:
        total = total + t
    return total


class DownsampleResidualVectorQuantize(nn.Module):
    """Latent [B, D, 4T] ↔ codes [B, 1 + n_codebooks, T]; row 0 is the semantic codebook."""

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        dim = cfg.latent_dim
        self.factor = math.prod(cfg.downsample_factor)
        self.semantic_quantizer = ResidualVectorQuantize(
            dim, 1, cfg.semantic_codebook_size, cfg.codebook_dim
        )
        self.quantizer = ResidualVectorQuantize(dim, cfg.n_codebooks, cfg.codebook_size, cfg.codebook_dim)
        self.downsample = nn.Sequential(
            *(
                nn.Sequential(
                    CausalConv1d(dim, dim, kernel_size=f, stride=f, weight_norm=False), ConvNeXtBlock(dim)
                )
                for f in cfg.downsample_factor
            )
        )
        self.upsample = nn.Sequential(
            *(
                nn.Sequential(
                    CausalConvTranspose1d(dim, dim, kernel_size=f, stride=f, weight_norm=False),
                    ConvNeXtBlock(dim),
                )
                for f in reversed(cfg.downsample_factor)
            )
        )
        self.pre_module = WindowLimitedTransformer(cfg.pre_module)
        self.post_module = WindowLimitedTransformer(cfg.post_module)

    def quantize(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Encoder latent [B, D, 4T] → (quantised latent [B, D, T], codes [B, 1 + n, T])."""
        if z.shape[-1] % self.factor:
            raise ValueError(f"latent length {z.shape[-1]} is not a multiple of {self.factor}")
        z = self.pre_module(self.downsample(z))
        semantic, semantic_codes = self.semantic_quantizer(z)
        residual, residual_codes = self.quantizer(z - semantic)
        return semantic + residual, torch.cat([semantic_codes, residual_codes], dim=1)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """The official training-style pass: (re-upsampled quantised latent [B, D, 4T], codes)."""
        z_q, codes = self.quantize(z)
        return self.upsample(self.post_module(z_q)), codes

    def embed(self, codes: Tensor) -> Tensor:
        """Codes [B, 1 + n, T] (in range) → quantised latent [B, D, T], before post_module."""
        return self.semantic_quantizer.decode(codes[:, :1]) + self.quantizer.decode(codes[:, 1:])

    def decode(self, codes: Tensor) -> Tensor:
        """Codes [B, 1 + n, T] (in range) → decoder input [B, D, 4T]."""
        return self.upsample(self.post_module(self.embed(codes)))
