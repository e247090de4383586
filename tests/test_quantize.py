"""Weight quantisation, int8 (weight-only) and fp8 (weights and activations): exact kernels, bounded rounding error,
and a quality check on the tiny golden model (logit error bounded, teacher-forced greedy tokens mostly unchanged)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fishs2.checkpoint import load_model
from fishs2.config import ModelConfig
from fishs2.generate import generate_frames, new_state
from fishs2.prompt import PromptBuilder
from fishs2.quantize import (
    FP8, FP8_MAX, Fp8Linear, Int8Embedding, Int8Linear, fp8_supported, quantize_fp8_model, quantize_int8,
    quantize_rows, quantize_rows_fp8,
)
from fishs2.sampling import SamplingParams, make_generators
from fishs2.tokenizer import Tokenizer

from .golden import Golden, golden_dir

GOLDEN = Golden(golden_dir(), "dual_ar")
TEXT = "Hello world, this is a test of int8 weights with a few more words to make the prompt longer."


QUANTIZE = {"int8": quantize_int8, "fp8": quantize_fp8_model}
# Bounds on the tiny golden model: (slow logits relative error, greedy agreement), measured int8 0.020–0.022 / 0.96
# and fp8 0.078–0.081 / 0.85–0.88 (e4m3 keeps 3 mantissa bits, and fp8 also rounds every matmul's input).
BOUNDS = {"int8": (0.04, 0.9), "fp8": (0.12, 0.8)}


def load(dtype: torch.dtype, int8: bool | str):
    """The tiny golden model; `int8`: True / "int8" or "fp8" quantises it."""
    directory = GOLDEN.directory / "tiny_s2"
    tokenizer = Tokenizer(directory / "tokenizer.json")
    config = ModelConfig.from_file(directory / "config.json")
    config = config.with_semantic_range(tokenizer.semantic_begin_id, tokenizer.semantic_end_id)
    model = load_model(directory, config, dtype, "cpu")
    scheme = "int8" if int8 is True else int8
    return (QUANTIZE[scheme](model) if scheme else model), tokenizer


def relative_error(reference: torch.Tensor, other: torch.Tensor) -> float:
    return ((reference.float() - other.float()).norm() / reference.float().norm()).item()


def test_rounding_error_is_at_most_half_a_step():
    weight = torch.randn(64, 96) * torch.rand(64, 1) * 3
    q, scales = quantize_rows(weight)
    assert q.dtype == torch.int8 and q.abs().max() <= 127
    assert ((q.float() * scales[:, None] - weight).abs() <= scales[:, None] / 2 + 1e-6).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_linear_is_the_dequantised_matmul(dtype):
    linear = torch.nn.Linear(96, 64, bias=False).to(dtype)
    layer = Int8Linear.from_float(linear)
    x = torch.randn(2, 3, 96, dtype=dtype)
    expected = F.linear(x.float(), layer.weight.float() * layer.scales.float()[:, None])
    out = layer(x)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), expected, atol=2e-2, rtol=2e-2)  # bf16 activations on the CPU


def test_int8_embedding_looks_up_dequantised_rows():
    table = torch.nn.Embedding(50, 16)
    embedding = Int8Embedding.from_float(table)
    ids = torch.tensor([[0, 7, 49]])
    expected = embedding.weight[ids].float() * embedding.scales[ids, None]
    torch.testing.assert_close(embedding(ids), expected)
    assert ((embedding(ids) - table(ids)).abs() <= embedding.scales[ids, None] / 2 + 1e-6).all()


def test_fp8_rounding_error_is_within_e4m3_precision():
    torch.manual_seed(0)
    weight = torch.randn(64, 96) * torch.rand(64, 1) * 3
    q, scales = quantize_rows_fp8(weight)
    assert q.dtype == FP8 and scales.shape == (64, 1)
    assert torch.equal(q.float().abs().amax(dim=1), torch.full((64,), FP8_MAX))  # each row's peak maps to 448
    restored = q.float() * scales
    normal = q.float().abs() >= 2 ** -6  # e4m3's normal range: 3 mantissa bits, half a step ≤ 2⁻⁴ relative
    assert ((restored - weight).abs() <= weight.abs() * 2 ** -4 + 1e-7)[normal].all()
    assert ((restored - weight).abs() <= scales * 2 ** -10)[~normal].all()  # subnormal steps are 2⁻⁹


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_linear_is_the_matmul_of_the_rounded_operands(dtype):
    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 64, bias=False).to(dtype)
    layer = Fp8Linear.from_float(linear)
    x = torch.randn(2, 3, 96, dtype=dtype) * torch.tensor([1.0, 50.0, 0.01])[None, :, None].to(dtype)  # per-token scale
    tokens, token_scales = quantize_rows_fp8(x.reshape(6, 96))
    expected = (tokens.float() * token_scales) @ (layer.weight.float() * layer.scales.T).T
    out = layer(x)
    assert out.dtype == dtype and out.shape == (2, 3, 64)
    # fp32: only the summation order differs; bf16: the output is rounded to bf16
    torch.testing.assert_close(out.float().reshape(6, 64), expected, atol=1e-4,
                               rtol=1e-2 if dtype == torch.bfloat16 else 1e-4)
    assert relative_error(linear(x).reshape(6, 64), out.reshape(6, 64)) < 0.06  # measured 0.036


def test_fp8_is_refused_where_it_would_not_run_at_speed():
    assert not fp8_supported(torch.device("cpu"))
    if torch.cuda.is_available():
        assert fp8_supported(torch.device("cuda")) == (torch.cuda.get_device_capability() >= (8, 9))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("scheme", ["int8", "fp8"])
def test_slow_logits_close_and_greedy_tokens_mostly_unchanged(dtype, scheme):
    outputs = []
    for int8 in (False, scheme):
        model, tokenizer = load(dtype, int8)
        prompt = PromptBuilder(tokenizer, model.config.num_codebooks).build(TEXT, [])[None]
        state = new_state(model, 1, prompt.shape[-1], tokenizer.im_end_id)
        with torch.inference_mode():
            logits, _ = model.slow(prompt, 0, state.slow_caches, state.slow_rope, state.mode, last_only=False)
        outputs.append(logits.float())
    reference, quantized = outputs
    cfg = model.config
    semantic = slice(cfg.semantic_begin_id, cfg.semantic_end_id + 1)
    agreement = (reference[..., semantic].argmax(-1) == quantized[..., semantic].argmax(-1)).float().mean().item()
    error_bound, agreement_bound = BOUNDS[scheme]
    assert relative_error(reference, quantized) < error_bound
    assert agreement >= agreement_bound


@pytest.mark.parametrize("scheme", ["int8", "fp8"])
def test_fast_logits_close(scheme):
    name = sorted(GOLDEN.meta["cases"])[0]
    outputs = []
    for int8 in (False, scheme):
        model, tokenizer = load(torch.float32, int8)
        state = new_state(model, 1, 1, tokenizer.im_end_id)
        fast = model.fast
        with torch.inference_mode():
            rows = [fast(GOLDEN[f"{name}/slow.hidden_last"].view(1, 1, -1), 0, state.fast_caches, state.fast_rope)]
            for k, code in enumerate(GOLDEN[f"{name}/fast.input_codes"].tolist(), start=1):
                rows.append(fast(fast.embeddings(torch.tensor([[code]])), k, state.fast_caches, state.fast_rope))
        outputs.append(torch.cat(rows, dim=1)[0, 1:])
    reference, quantized = outputs
    assert relative_error(reference, quantized) < BOUNDS[scheme][0]
    assert (reference.argmax(-1) == quantized.argmax(-1)).float().mean().item() >= 0.8


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("scheme", ["int8", "fp8"])
def test_quantised_model_generates(dtype, scheme):
    """Dynamic and static (CUDA-graph code) decoding of a quantised model: valid frames, and in fp32 the same ones
    (in bf16 their attention kernels round differently, which fp8's per-token input scales can amplify)."""
    model, tokenizer = load(dtype, scheme)
    cfg = model.config
    prompt = PromptBuilder(tokenizer, cfg.num_codebooks).build(TEXT, [])
    eos = tokenizer.im_end_id
    runs = [torch.stack(list(generate_frames(model, prompt, SamplingParams(), 6, make_generators([1], "cpu"), eos,
                                             static=static))) for static in (False, True)]
    for frames in runs:
        assert 1 <= frames.shape[0] <= 6 and frames.shape[1:] == (1, cfg.num_codebooks + 1)
        main = frames[..., 0]
        assert (((main >= cfg.semantic_begin_id) & (main <= cfg.semantic_end_id)) | (main == eos)).all()
        assert ((frames[..., 1:] >= 0) & (frames[..., 1:] < cfg.codebook_size)).all()
    if dtype == torch.float32:
        assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("scheme", [None, "int8", "fp8"])
@pytest.mark.parametrize("tied", [True, False])
def test_output_rows_give_the_head_logits_of_those_ids_exactly(scheme, tied):
    """A decode step computes the slow head's rows of the ids a frame can take (`SlowTransformer.output_rows`):
    for every weight format and a tied or separate head, each logit is the whole head's for that id (up to the
    last bit: a matmul with 4 rows may accumulate in another order than one with 512)."""
    torch.manual_seed(0)
    directory = GOLDEN.directory / "tiny_s2"
    config = ModelConfig.from_file(directory / "config.json")
    model = load_model(directory, config, torch.float32, "cpu")
    if not tied:
        model.slow.output = torch.nn.Linear(config.slow.dim, config.vocab_size, bias=False)
    if scheme is not None:
        model = QUANTIZE[scheme](model)
    ids = torch.tensor([0, 5, 77, config.vocab_size - 1])
    x = torch.randn(2, 3, config.slow.dim)
    with torch.inference_mode():
        full, _ = model.slow.head(x)
        rows, _ = model.slow.head(x, model.slow.output_rows(ids))
    assert rows.shape == (2, 3, 4)
    torch.testing.assert_close(rows, full[..., ids], rtol=1e-6, atol=1e-6)
