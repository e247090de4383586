"""The official sampling primitive and repetition-aware sampling (spec §6.2-§6.3).

top-p/top-k filter the *untempered* distribution, temperature is applied afterwards, and the draw is an
exponential race `argmax(p / -log(u))` with one uniform per vocabulary entry. Each sequence in a batch draws from
its own `torch.Generator`, so a batch of takes reproduces the single runs with the same seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import ParameterError

RAS_WINDOW = 10
RAS_TEMPERATURE = 1.0
RAS_TOP_P = 0.9


@dataclass(frozen=True)
class SamplingParams:
    """User-facing sampling settings, validated on construction."""

    temperature: float = 0.8
    top_p: float = 0.8
    top_k: int = 30

    def __post_init__(self):
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)) or not (
            0 < self.temperature <= 2
        ):
            raise ParameterError(f"temperature={self.temperature!r}: must be in (0, 2]; 0.7–1.0 is typical.")
        if not (isinstance(self.top_p, (int, float)) and math.isfinite(self.top_p)) or not (0 < self.top_p <= 1):
            raise ParameterError(f"top_p={self.top_p!r}: must be in (0, 1]; 0.7–0.9 is typical.")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise ParameterError(f"top_k={self.top_k!r}: must be an integer ≥ 1; 30 is the official default.")


def sample(
    logits: torch.Tensor,
    temperature: float | torch.Tensor,
    top_p: float | torch.Tensor,
    top_k: int,
    generators: list[torch.Generator],
) -> torch.Tensor:
    """logits [B, V] (model dtype) → token ids [B]. Consumes V uniforms from each row's generator.

    `temperature` and `top_p` may be 0-dim tensors in the logits' dtype and device (see `DeviceSampling`), which
    keeps the function free of host → device copies.
    """
    dtype = logits.dtype
    sorted_logits, sorted_ids = torch.sort(logits, dim=-1, descending=True)
    cumulative = torch.cumsum(torch.softmax(sorted_logits, dim=-1), dim=-1)
    remove = cumulative > torch.as_tensor(top_p, dtype=dtype, device=logits.device)
    remove[:, top_k:] = True
    remove[:, 0] = False
    remove = remove.scatter(-1, sorted_ids, remove)
    logits = logits.masked_fill(remove, float("-inf"))
    logits = logits / torch.clamp(torch.as_tensor(temperature, dtype=dtype, device=logits.device), min=1e-5)
    probs = torch.softmax(logits, dim=-1)
    uniforms = torch.stack(
        [torch.rand(probs.shape[-1], generator=g, dtype=dtype, device=probs.device) for g in generators]
    )
    return torch.argmax(probs / -torch.log(uniforms), dim=-1)


@dataclass(frozen=True)
class DeviceSampling:
    """`SamplingParams` with the temperatures and top-p thresholds of a frame (main token, RAS alternative) as
    0-dim tensors on the model's device, built once per request so that sampling makes no host → device copies."""

    top_k: int
    temperature: torch.Tensor
    top_p: torch.Tensor
    ras_temperature: torch.Tensor
    ras_top_p: torch.Tensor

    @classmethod
    def of(cls, params: SamplingParams, dtype: torch.dtype, device: torch.device) -> "DeviceSampling":
        def tensor(value: float) -> torch.Tensor:
            return torch.tensor(value, dtype=dtype, device=device)

        return cls(params.top_k, tensor(params.temperature), tensor(params.top_p), tensor(RAS_TEMPERATURE),
                   tensor(RAS_TOP_P))


def make_generators(seeds: list[int], device: torch.device | str) -> list[torch.Generator]:
    """One generator per sequence, seeded like `torch.manual_seed(seed)` seeds the default one."""
    generators = []
    for seed in seeds:
        g = torch.Generator(device=device)
        g.manual_seed(seed)
        generators.append(g)
    return generators


def normalize_seed(seed: int | None) -> int:
    """Seeds are integers; negative values use their absolute value and everything is folded into [0, 2⁶³)."""
    if seed is None:
        return int(torch.randint(0, 2**31 - 1, (1,)).item())
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ParameterError(f"seed={seed!r}: must be an integer.")
    return abs(seed) % (2**63)
