"""The official sampling primitive and repetition-aware sampling (spec §6.2-§6.3).

top-p/top-k filter the *untempered* distribution, temperature is applied afterwards, and the draw is an
exponential race `argmax(p / -log(u))` with one uniform per vocabulary entry. Each sequence in a batch draws from
its own `torch.Generator`, so a batch of takes reproduces the single runs with the same seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .config import ModelConfig
from .errors import ParameterError

RAS_WINDOW = 10
RAS_TEMPERATURE = 1.0
RAS_TOP_P = 0.9
FP16_MIN_TEMPERATURE = 1e-3  # fp16 logits up to 65 stay below fp16's largest value (65504) once divided by it


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


def rank(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [B, V] sorted in descending order → (cumulative probabilities [B, V], their ids [B, V]): what the
    top-p and top-k cuts read. Draws from the same logits (a frame's main token and its RAS alternative) share it,
    which saves sorting the whole vocabulary twice."""
    sorted_logits, sorted_ids = torch.sort(logits, dim=-1, descending=True)
    return torch.cumsum(torch.softmax(sorted_logits, dim=-1), dim=-1), sorted_ids


def clamp_temperature(value: float | torch.Tensor, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """The temperature `sample` divides by: in `dtype`, at least 1e-5."""
    return torch.clamp(torch.as_tensor(value, dtype=dtype, device=device), min=1e-5)


def cut_thresholds(size: int, top_p: float | torch.Tensor, top_k: int | torch.Tensor, dtype: torch.dtype,
                   device: torch.device | str) -> torch.Tensor:
    """`sample`'s top-p/top-k cut as one threshold per rank [size] in `dtype`: the candidate at rank i is removed
    when its cumulative probability exceeds threshold i — +inf at rank 0 (always kept), top_p at ranks
    1 … top_k − 1, −inf from rank top_k on (always removed). `cumulative > thresholds` is then the whole mask
    (cumulative probabilities are finite), one comparison where the rule takes five kernels."""
    ranks = torch.arange(size, device=device)
    p = torch.as_tensor(top_p, dtype=dtype, device=device)
    return torch.where(ranks == 0, float("inf"), torch.where(ranks < top_k, p, float("-inf"))).to(dtype)


def sample(
    logits: torch.Tensor,
    temperature: float | torch.Tensor,
    cut: torch.Tensor,
    generators: list[torch.Generator] | None,
    uniforms: torch.Tensor | None = None,
    ranked: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """logits [B, V] (model dtype) → token ids [B]. `cut`: the top-p/top-k cut as `cut_thresholds(V, …)`.
    Consumes V uniforms from each row's generator, or reads them from `uniforms` [B, V] when they were drawn
    beforehand (`FrameUniforms`). `ranked`: `rank(logits)`, if the caller already has it.

    `temperature` may be a 0-dim tensor in the logits' dtype and device, already clamped (`clamp_temperature`,
    as `DeviceSampling` holds it), which keeps the function free of host → device copies and host reads.
    """
    dtype = logits.dtype
    if uniforms is None:
        uniforms = draw_uniforms(generators, logits.shape[-1], dtype, logits.device)
    if not isinstance(temperature, torch.Tensor):
        temperature = clamp_temperature(temperature, dtype, logits.device)
    cumulative, sorted_ids = rank(logits) if ranked is None else ranked
    remove = cumulative > cut  # by rank; then mapped back to vocabulary order
    remove = remove.scatter(-1, sorted_ids, remove)
    logits = logits.masked_fill(remove, float("-inf"))
    logits = logits / temperature
    probs = torch.softmax(logits, dim=-1)
    # argmax(p / −log u), the exponential race, written as argmin(p / log u): the quotients are exact negations and
    # both return the first index on ties, so the tokens are identical with one kernel fewer.
    return torch.argmin(probs / torch.log(uniforms), dim=-1)


def sample_main(logits: torch.Tensor, params: "DeviceSampling", uniforms: list[torch.Tensor],
                columns: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A frame's two slow-token draws from logits [B, V] (−inf at the ids a frame cannot take) and their uniforms
    (two [B, V]) → (main token, RAS alternative), ids [B] each: one ranking, then `sample` with the user's settings
    and with RAS's.

    `columns` [R]: the allowed ids, ascending, when every other logit is −inf. The other ids have probability 0, so
    the draws over these columns alone pick the same tokens, while the sort, the softmaxes and the race cost R
    entries instead of V (4097 instead of 155 776). The uniforms are still drawn full-width by the caller: the
    generators advance as the official draw advances them. Tokens can differ only among equal logits at the
    cut, where an unstable sort (the CPU's) may order the tie differently in a row of another width.
    """
    cut, ras_cut = params.cut, params.ras_cut
    if columns is not None:
        logits = logits.index_select(-1, columns)
        uniforms = [u.index_select(-1, columns) for u in uniforms]
        cut, ras_cut = cut[: columns.shape[0]], ras_cut[: columns.shape[0]]  # thresholds by rank: a prefix
    ranked = rank(logits)
    main = sample(logits, params.temperature, cut, None, uniforms[0], ranked)
    alternative = sample(logits, params.ras_temperature, ras_cut, None, uniforms[1], ranked)
    if columns is None:
        return main, alternative
    return columns[main], columns[alternative]


def draw_uniforms(generators: list[torch.Generator], size: int, dtype: torch.dtype,
                  device: torch.device | str) -> torch.Tensor:
    """`size` uniforms from each sequence's generator → [B, size]: one official draw's randomness."""
    return torch.stack([torch.rand(size, generator=g, dtype=dtype, device=device) for g in generators])


class FrameUniforms:
    """The uniforms one frame consumes, per sequence: main token and RAS alternative (`tokens` [B, 2, V]), then
    codebooks 1 … K−1 (`codes` [B, K−1, C]).

    `draw` fills them from each sequence's generator with the calls, sizes and order of the eager `sample_frame`,
    so a frame sampled from these buffers equals the eager one and leaves the generators in the same state. A step
    that reads its randomness from buffers draws nothing itself, which is what lets one captured CUDA graph serve
    any request's generators.
    """

    def __init__(self, batch: int, vocab: int, num_codebooks: int, codebook_size: int, dtype: torch.dtype,
                 device: torch.device):
        self.tokens = torch.full((batch, 2, vocab), 0.5, dtype=dtype, device=device)
        self.codes = torch.full((batch, num_codebooks - 1, codebook_size), 0.5, dtype=dtype, device=device)

    def draw(self, generators: list[torch.Generator]) -> None:
        for row, g in enumerate(generators):
            for buffer in (*self.tokens[row], *self.codes[row]):
                buffer.uniform_(generator=g)  # the kernel torch.rand runs: same numbers, same generator offset


@dataclass(frozen=True)
class DeviceSampling:
    """`SamplingParams` as tensors on the model's device, built once per request so that sampling makes no host →
    device copies: the temperatures of a frame's main token and RAS alternative (0-dim, clamped) and the top-p/top-k
    cuts (`cut_thresholds`) of the main token [vocab], the RAS alternative [vocab] and the codebooks [codebook]."""

    temperature: torch.Tensor
    ras_temperature: torch.Tensor
    cut: torch.Tensor
    ras_cut: torch.Tensor
    code_cut: torch.Tensor

    @classmethod
    def of(cls, params: SamplingParams, config: ModelConfig, dtype: torch.dtype,
           device: torch.device | str) -> "DeviceSampling":
        """For a model of `config` (its vocabulary and codebook sizes) computing in `dtype` on `device`."""
        check_temperature(params, dtype)
        return cls(
            clamp_temperature(params.temperature, dtype, device),
            clamp_temperature(RAS_TEMPERATURE, dtype, device),
            cut_thresholds(config.vocab_size, params.top_p, params.top_k, dtype, device),
            cut_thresholds(config.vocab_size, RAS_TOP_P, params.top_k, dtype, device),
            cut_thresholds(config.codebook_size, params.top_p, params.top_k, dtype, device),
        )

    def fill_(self, params: SamplingParams) -> None:
        """Write another request's settings into these tensors in place: a captured CUDA graph keeps reading the
        same addresses."""
        dtype, device = self.cut.dtype, self.cut.device
        check_temperature(params, dtype)
        self.temperature.copy_(clamp_temperature(params.temperature, dtype, device))
        for cut, top_p in ((self.cut, params.top_p), (self.ras_cut, RAS_TOP_P), (self.code_cut, params.top_p)):
            cut.copy_(cut_thresholds(cut.shape[-1], top_p, params.top_k, dtype, device))


def check_temperature(params: SamplingParams, dtype: torch.dtype) -> None:
    """Refuse a temperature that a model computing in `dtype` cannot divide its logits by: in fp16 a temperature
    below FP16_MIN_TEMPERATURE turns the best logits into inf, the softmax into NaN, and the draw into a meaningless
    token, silently. bf16 and fp32 have fp32's range."""
    if dtype == torch.float16 and params.temperature < FP16_MIN_TEMPERATURE:
        raise ParameterError(
            f"temperature={params.temperature!r} with fp16 weights: the logits divided by it overflow fp16 (largest "
            f"value 65504) and the draw would pick a meaningless token. Use a temperature ≥ {FP16_MIN_TEMPERATURE} "
            "or bf16/fp32 weights.")


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
