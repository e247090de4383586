"""The sampling primitive against the official rule written out (spec §6.2): the same tokens for random logits,
settings and uniforms, with the top-p/top-k cut as one threshold comparison and the ranking shared by two draws."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from fishs2.sampling import (
    DeviceSampling, SamplingParams, clamp_temperature, cut_thresholds, make_generators, rank, sample, sample_main,
)

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


def test_fp16_refuses_a_temperature_its_logits_cannot_be_divided_by():
    """In fp16 a temperature below FP16_MIN_TEMPERATURE overflows the best logits to inf and the draw returns a
    meaningless id; the floor itself keeps logits up to 65 finite, so the draw stays the argmax.
    bf16 has fp32's range. A static decoder's held settings are refused the same way and left as they were."""
    from fishs2.errors import ParameterError
    from fishs2.sampling import FP16_MIN_TEMPERATURE

    logits = torch.full((1, 4096), -60.0, dtype=torch.float16)
    logits[0, 393] = 60.0
    cut = cut_thresholds(4096, 0.8, 30, torch.float16, "cpu")
    overflowed = sample(logits, clamp_temperature(1e-4, torch.float16, "cpu"), cut, make_generators([1], "cpu"))
    assert overflowed.item() != 393  # what the refusal prevents: not the only token the cut keeps
    at_floor = sample(logits, clamp_temperature(FP16_MIN_TEMPERATURE, torch.float16, "cpu"), cut,
                      make_generators([1], "cpu"))
    assert at_floor.item() == 393

    config = type("Config", (), {"vocab_size": 50, "codebook_size": 8})()
    with pytest.raises(ParameterError, match=r"temperature=0\.0001 with fp16 weights"):
        DeviceSampling.of(SamplingParams(1e-4), config, torch.float16, "cpu")
    DeviceSampling.of(SamplingParams(FP16_MIN_TEMPERATURE), config, torch.float16, "cpu")
    DeviceSampling.of(SamplingParams(1e-4), config, torch.bfloat16, "cpu")
    held = DeviceSampling.of(SamplingParams(0.9, 0.7, 5), config, torch.float16, "cpu")
    before = {name: getattr(held, name).clone() for name in ("temperature", "cut", "ras_cut", "code_cut")}
    with pytest.raises(ParameterError, match="fp16"):
        held.fill_(SamplingParams(1e-4, 0.5, 2))
    assert all(torch.equal(getattr(held, name), value) for name, value in before.items())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_draw_over_the_allowed_ids_picks_the_full_vocabulary_token(dtype):
    """The decode step's slow draws over the allowed ids only (`columns`) against the same draws over the whole
    vocabulary, −inf elsewhere: the real layout's shape (a semantic block and `<|im_end|>` below it), settings
    from greedy to wide. fp32: the same tokens. bf16: where they differ, only the order of a tie did."""
    vocab, begin, codes, eos = 3000, 2100, 512, 1900
    columns = torch.cat([torch.tensor([eos]), torch.arange(begin, begin + codes)])
    config = type("Config", (), {"vocab_size": vocab, "codebook_size": codes})()
    differ = 0
    for seed in range(40):
        g = torch.Generator().manual_seed(seed)
        params = DeviceSampling.of(SamplingParams(0.2 + seed / 25, (0.5, 0.8, 0.95, 1.0)[seed % 4],
                                                  (1, 30, 200, 5000)[seed // 10]), config, dtype, "cpu")
        logits = torch.full((3, vocab), float("-inf"))
        logits[:, columns] = torch.randn(3, columns.numel(), generator=g) * (1, 3, 8)[seed % 3]
        logits = logits.to(dtype)
        uniforms = [torch.rand(3, vocab, generator=g, dtype=dtype) for _ in range(2)]
        full = sample_main(logits, params, uniforms)
        allowed = sample_main(logits, params, uniforms, columns)
        for a, b in zip(full, allowed):
            assert torch.isin(b, columns).all()
            if dtype == torch.float32:
                assert torch.equal(a, b), seed
            else:
                changed = a != b
                differ += int(changed.sum())
                assert torch.equal(logits[changed, a[changed]], logits[changed, b[changed]]), seed
    assert differ < 0.05 * 40 * 3 * 2


def test_draw_over_the_allowed_ids_never_picks_a_token_outside_them():
    """A mapping bug (ranks taken for ids, a cut of the wrong width) shows as an id that is not allowed, or as a
    different token where the allowed logits are all distinct."""
    vocab, columns = 64, torch.tensor([3, 10, 11, 12, 40])
    config = type("Config", (), {"vocab_size": vocab, "codebook_size": 8})()
    params = DeviceSampling.of(SamplingParams(1.0, 1.0, 100), config, torch.float32, "cpu")
    logits = torch.full((1, vocab), float("-inf"))
    logits[0, columns] = torch.tensor([0.0, 5.0, 1.0, 2.0, 9.0])
    hits = torch.zeros(vocab)
    for seed in range(300):
        g = torch.Generator().manual_seed(seed)
        uniforms = [torch.rand(1, vocab, generator=g) for _ in range(2)]
        main, alternative = sample_main(logits, params, uniforms, columns)
        assert torch.equal(main, sample_main(logits, params, uniforms)[0])
        hits[main] += 1
    assert hits[columns].sum() == 300 and hits[40] > hits[10] > hits[12]  # e^9 ≫ e^5 ≫ e^2
