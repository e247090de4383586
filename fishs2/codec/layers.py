"""Convolution building blocks of the codec (spec §7.2): causal convs, weight norm, Snake, ConvNeXt."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class WNConv1d(nn.Module):
    """Conv1d with weight normalisation: W = g · V / ‖V‖, the norm over every axis but 0.

    W is computed from (g, V) on every call, in the module dtype, as the official `weight_norm`
    parametrization does, until `fold_weight_norm` swaps the layer for a plain conv holding W.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.stride = stride
        self.dilation = dilation
        self.groups = groups
        fan_in = in_channels // groups * kernel_size
        self.weight_g = nn.Parameter(torch.ones(out_channels, 1, 1))
        self.weight_v = nn.Parameter(
            torch.randn(out_channels, in_channels // groups, kernel_size) / math.sqrt(fan_in)
        )
        self.bias = nn.Parameter(torch.zeros(out_channels))

    @property
    def weight(self) -> Tensor:
        # torch._weight_norm is the kernel behind both weight-norm APIs: same numerics.
        return torch._weight_norm(self.weight_v, self.weight_g, 0)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv1d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)

    def folded(self) -> nn.Conv1d:
        """The same layer as a plain Conv1d holding W (the same values this layer computes on each call)."""
        out_channels, in_per_group, kernel_size = self.weight_v.shape
        with torch.device("meta"):  # no random init: both tensors are assigned below
            conv = nn.Conv1d(in_per_group * self.groups, out_channels, kernel_size, stride=self.stride,
                             dilation=self.dilation, groups=self.groups)
        conv.weight = nn.Parameter(self.weight.detach(), requires_grad=False)
        conv.bias = nn.Parameter(self.bias.detach(), requires_grad=False)
        return conv


class WNConvTranspose1d(nn.Module):
    """ConvTranspose1d with weight normalisation over axis 0, which is the *input* channel axis here."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.weight_g = nn.Parameter(torch.ones(in_channels, 1, 1))
        self.weight_v = nn.Parameter(
            torch.randn(in_channels, out_channels, kernel_size) / math.sqrt(in_channels * kernel_size)
        )
        self.bias = nn.Parameter(torch.zeros(out_channels))

    @property
    def weight(self) -> Tensor:
        return torch._weight_norm(self.weight_v, self.weight_g, 0)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv_transpose1d(x, self.weight, self.bias, self.stride)

    def folded(self) -> nn.ConvTranspose1d:
        """The same layer as a plain ConvTranspose1d holding W."""
        in_channels, out_channels, kernel_size = self.weight_v.shape
        with torch.device("meta"):
            conv = nn.ConvTranspose1d(in_channels, out_channels, kernel_size, stride=self.stride)
        conv.weight = nn.Parameter(self.weight.detach(), requires_grad=False)
        conv.bias = nn.Parameter(self.bias.detach(), requires_grad=False)
        return conv


def fold_weight_norm(module: nn.Module) -> None:
    """Replace every weight-normed conv under `module` by a plain conv holding its W, for inference.

    The official layer recomputes W = g · V / ‖V‖ at every call. That is one extra pass over the decoder's
    weights per decoded chunk (about 48 ms on one CPU thread) and two extra kernels per conv. Folding computes
    W once, with the same kernel on the same tensors, so outputs stay bit-identical. The folded module no longer
    has (g, V) parameters: load weights before folding.
    """
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, (WNConv1d, WNConvTranspose1d)):
                setattr(parent, name, child.folded())


class CausalConv1d(nn.Module):
    """Conv1d that only looks at the past: zero left padding of (effective kernel − stride).

    The right is padded just enough to complete the last stride, so the output has
    ceil(L / stride) steps.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        weight_norm: bool = True,
    ) -> None:
        super().__init__()
        conv_cls = WNConv1d if weight_norm else nn.Conv1d
        self.conv = conv_cls(
            in_channels, out_channels, kernel_size, stride=stride, dilation=dilation, groups=groups
        )
        self.stride = stride
        self.left_pad = (kernel_size - 1) * dilation + 1 - stride

    def forward(self, x: Tensor) -> Tensor:
        # [B, C, L] -> [B, C', ceil(L / stride)]
        right_pad = -x.shape[-1] % self.stride
        return self.conv(F.pad(x, (self.left_pad, right_pad)))


class CausalConvTranspose1d(nn.Module):
    """ConvTranspose1d whose extra (kernel − stride) output samples are dropped on the right."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, weight_norm: bool = True
    ) -> None:
        super().__init__()
        if weight_norm:
            self.conv = WNConvTranspose1d(in_channels, out_channels, kernel_size, stride)
        else:
            self.conv = nn.ConvTranspose1d(in_channels, out_channels, kernel_size, stride)
        self.trim = kernel_size - stride

    def forward(self, x: Tensor) -> Tensor:
        # [B, C, L] -> [B, C', L * stride]
        y = self.conv(x)
        return y[..., : y.shape[-1] - self.trim]


class Snake1d(nn.Module):
    """Snake activation y = x + sin²(αx) / (α + 1e-9), one α per channel.

    The op order is that of descript-audio-codec's scripted `snake` (unfused), so fp32 results
    match bit for bit.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x + (self.alpha + 1e-9).reciprocal() * torch.sin(self.alpha * x).pow(2)


class ResidualUnit(nn.Module):
    """x + conv1(snake(conv7_dilated(snake(x)))); causal, so no cropping is needed."""

    def __init__(self, dim: int, dilation: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            Snake1d(dim),
            CausalConv1d(dim, dim, kernel_size=7, dilation=dilation),
            Snake1d(dim),
            CausalConv1d(dim, dim, kernel_size=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


class ConvNeXtBlock(nn.Module):
    """Causal ConvNeXt block: depthwise conv7 → LayerNorm → MLP ×4 (GELU) → ·γ, plus the input."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = CausalConv1d(dim, dim, kernel_size=7, groups=dim, weight_norm=False)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x: Tensor) -> Tensor:
        # [B, C, T] -> [B, C, T]
        y = self.dwconv(x).transpose(1, 2)  # channels last for LayerNorm / Linear
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        y = self.gamma * y
        return x + y.transpose(1, 2)
