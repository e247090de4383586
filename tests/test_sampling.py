"""The sampling primitive against the official rule written out (spec §6.2): the same tokens for random logits,
settings and uniforms, with the top-p/top-k cut as one threshold comparison and the ranking shared by two draws."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from fishs2.sampling import DeviceSampling, SamplingParams, clamp_temperature, cut_thresholds, make_generators, rank, sample

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.sampling import official_sample  # noqa: E402


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("top_p, top_k", [(0.8, 30), (0.95, 1), (1.0, 500), (0.05, 4), (0.9, 10_000)])
def test_sample_draws_the_official_tokens(dtype, top_p, top_k):
    """Ties included: bf16 logits rounded to a few values make many equal candidates at the cut."""
    vocab = 700
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        logits = (torch.randn(3, vocab, generator=g) * 3).to(dtype)
        if seed % 2:
            logits = logits.round()  # many exact ties
        logits[:, torch.randperm(vocab, generator=g)[:200]] = float("-inf")  # ids a frame cannot take
        temperature = 0.3 + seed / 20
        ours = sample(logits, temperature, cut_thresholds(vocab, top_p, top_k, dtype, "cpu"),
                      make_generators([seed, seed + 1, seed + 2], "cpu"))
        official = official_sample(logits, temperature, top_p, top_k, make_generators([seed, seed + 1, seed + 2], "cpu"))
        assert torch.equal(ours, official), (seed, top_p, top_k)
        ranked = rank(logits)  # shared by a frame's two draws: the same ranking either way
        shared = sample(logits, clamp_temperature(temperature, dtype, "cpu"),
                        cut_thresholds(vocab, top_p, top_k, dtype, "cpu"), make_generators([seed, seed + 1, seed + 2], "cpu"),
                        ranked=ranked)
        assert torch.equal(shared, official)


def test_cut_thresholds_encode_the_rule():
    cut = cut_thresholds(6, 0.5, 3, torch.float32, "cpu")
    assert cut.tolist() == [float("inf"), 0.5, 0.5, float("-inf"), float("-inf"), float("-inf")]
    assert cut_thresholds(3, 0.5, 10, torch.bfloat16, "cpu").tolist() == [float("inf"), 0.5, 0.5]
    assert cut_thresholds(4, 0.7, 1, torch.bfloat16, "cpu")[1:].isneginf().all()  # top_k = 1: only the best


def test_device_sampling_refills_in_place():
    """A static decoder's settings are rewritten in place for each request (its CUDA graph reads their addresses)."""
    config = type("Config", (), {"vocab_size": 50, "codebook_size": 8})()
    held = DeviceSampling.of(SamplingParams(0.9, 0.7, 5), config, torch.bfloat16, "cpu")
    addresses = [t.data_ptr() for t in (held.temperature, held.cut, held.ras_cut, held.code_cut)]
    held.fill_(SamplingParams(0.5, 0.6, 2))
    fresh = DeviceSampling.of(SamplingParams(0.5, 0.6, 2), config, torch.bfloat16, "cpu")
    assert [t.data_ptr() for t in (held.temperature, held.cut, held.ras_cut, held.code_cut)] == addresses
    for name in ("temperature", "ras_temperature", "cut", "ras_cut", "code_cut"):
        assert torch.equal(getattr(held, name), getattr(fresh, name)), name
