"""The engine on a CUDA device: golden parity in fp32, the CUDA-graph step against the eager one, bf16 and int8
against fp32, and the whole pipeline (load → generate → decode). Skipped without CUDA; run them on a GPU machine
with `python -m pytest tests/test_cuda.py`."""

from __future__ import annotations

import pytest
import torch

from fishs2.checkpoint import load_model
from fishs2.codec import load_codec
from fishs2.config import ModelConfig
from fishs2.generate import generate_segments, new_state
from fishs2.prompt import PromptBuilder, Reference, group_batches
from fishs2.quantize import quantize_int8
from fishs2.sampling import SamplingParams, make_generators
from fishs2.tokenizer import Tokenizer

from .golden import Golden, golden_dir

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

DUAL_AR = Golden(golden_dir(), "dual_ar")
CODEC = Golden(golden_dir(), "codec")
CASES = sorted(DUAL_AR.meta["cases"])
TOL = dict(atol=1e-4, rtol=1e-4)


@pytest.fixture(autouse=True)
def exact_fp32():
    """TF32 matmuls would round fp32 to 10 mantissa bits: parity is checked with true fp32 arithmetic."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(scope="module")
def parts():
    directory = DUAL_AR.directory / "tiny_s2"
    tokenizer = Tokenizer(directory / "tokenizer.json")
    config = ModelConfig.from_file(directory / "config.json")
    config = config.with_semantic_range(tokenizer.semantic_begin_id, tokenizer.semantic_end_id)
    return directory, config, tokenizer, PromptBuilder(tokenizer, config.num_codebooks)


def model_on_cuda(parts, dtype=torch.float32):
    directory, config, _, _ = parts
    return load_model(directory, config, dtype, "cuda")


def greedy_segments(model, parts, name: str, **options) -> list[torch.Tensor]:
    """The greedy golden case through generate_segments on CUDA → each batch's codes. The greedy mode samples at
    temperature 1e-5, so its result does not depend on which device's random stream is used."""
    _, _, _, builder = parts
    inputs = DUAL_AR.meta["cases"][name]["inputs"]
    references = [Reference(t, DUAL_AR[f"{name}/input.prompt_tokens.{i}"])
                  for i, t in enumerate(inputs.get("prompt_text", []))]
    sampling = DUAL_AR.meta["cases"][name]["modes"]["greedy"]["sampling"]
    params = SamplingParams(sampling["temperature"], sampling["top_p"], sampling["top_k"])
    batches = [(t, [i]) for i, t in enumerate(group_batches(inputs["text"], inputs.get("chunk_length", 512)))]
    events = generate_segments(model, builder, batches, references, params, sampling["max_new_tokens"],
                               make_generators([sampling["seed"]], "cuda"), keep_last_frame_at_limit=False, **options)
    return [e.result.codes for e in events if hasattr(e, "result")]


@pytest.mark.parametrize("name", CASES)
def test_slow_logits_match_golden_on_cuda(parts, name):
    directory, config, tokenizer, builder = parts
    model = model_on_cuda(parts)
    inputs = DUAL_AR.meta["cases"][name]["inputs"]
    references = [Reference(t, DUAL_AR[f"{name}/input.prompt_tokens.{i}"])
                  for i, t in enumerate(inputs.get("prompt_text", []))]
    prompt = builder.build(group_batches(inputs["text"], inputs.get("chunk_length", 512))[0], references)
    state = new_state(model, 1, prompt.shape[-1], tokenizer.im_end_id)
    with torch.inference_mode():
        logits, hidden = model.slow(prompt[None].cuda(), 0, state.slow_caches, state.slow_rope[: prompt.shape[-1]],
                                    state.mode)
    torch.testing.assert_close(logits[0, -1].cpu(), DUAL_AR[f"{name}/slow.logits_last"], **TOL)
    torch.testing.assert_close(hidden[0, -1].cpu(), DUAL_AR[f"{name}/slow.hidden_last"], **TOL)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("options", [dict(), dict(check_every=1), dict(static=True, cuda_graph=True)],
                         ids=["default", "per-frame-check", "cuda-graph"])
def test_greedy_generation_matches_golden_on_cuda(parts, name, options):
    model = model_on_cuda(parts)
    got = greedy_segments(model, parts, name, **options)
    expected = DUAL_AR.meta["cases"][name]["modes"]["greedy"]["batches"]
    assert len(got) == len(expected)
    for b, codes in enumerate(got):
        assert torch.equal(codes, DUAL_AR[f"{name}/greedy/batch{b}.yielded_codes"]), f"{name} batch {b}"


def test_codec_decode_matches_golden_on_cuda():
    codec_dir = (CODEC.directory / CODEC.meta["config"]).parent
    codec = load_codec(codec_dir, device="cuda")
    with torch.inference_mode():
        audio = codec.decode(CODEC["codec/codes"].cuda())[0, 0]
    torch.testing.assert_close(audio.cpu(), CODEC["codec/decoded_audio"], **TOL)


def teacher_forced_logits(model, prompt: torch.Tensor) -> torch.Tensor:
    state = new_state(model, 1, prompt.shape[-1], -1)
    with torch.inference_mode():
        logits, _ = model.slow(prompt[None].cuda(), 0, state.slow_caches, state.slow_rope[: prompt.shape[-1]],
                               state.mode, last_only=False)
    return logits[0].float().cpu()


@pytest.mark.parametrize("variant", ["bf16", "int8"])
def test_reduced_precision_stays_close_to_fp32(parts, variant):
    """bf16 weights (and int8 weights on top of bf16) on CUDA against fp32 on the same prompt, all positions."""
    _, config, _, builder = parts
    prompt = builder.build("<|speaker:0|>Reduced precision on the GPU keeps the same tokens [laugh] mostly.", [])
    reference = teacher_forced_logits(model_on_cuda(parts), prompt)
    model = model_on_cuda(parts, torch.bfloat16)
    if variant == "int8":
        model = quantize_int8(model)
    logits = teacher_forced_logits(model, prompt)
    semantic = slice(config.semantic_begin_id, config.semantic_end_id + 1)
    error = ((logits - reference).norm() / reference.norm()).item()
    agreement = (logits[:, semantic].argmax(-1) == reference[:, semantic].argmax(-1)).float().mean().item()
    print(f"{variant}: relative logit error {error:.4f}, greedy agreement {agreement:.3f}")
    assert error < (0.02 if variant == "bf16" else 0.05)
    assert agreement >= 0.9


def test_pipeline_generates_and_decodes_on_cuda(tiny_checkpoint_dir):
    """FishS2 on CUDA, bf16: the graph path and the eager path give the same codes for a seed; audio has the
    codec's length and is finite; int8 loading puts no full-precision linear weight on the GPU."""
    from fishs2 import FishS2

    tts = FishS2.from_pretrained(tiny_checkpoint_dir, device="cuda", dtype="bf16")
    text = "<|speaker:0|>Hello from the graph. <|speaker:1|>[whisper] And from the eager path."
    eager = tts.generate(text, seed=11, max_frames=48)
    graphed = tts.generate(text, seed=11, max_frames=48, cuda_graph=True)
    assert torch.equal(eager.codes, graphed.codes)
    audio = tts.decode(graphed.codes)
    assert audio.shape == (1, graphed.num_frames * tts.codec.frame_length)
    assert torch.isfinite(audio).all() and audio.abs().max() > 0

    quantized = FishS2.from_pretrained(tiny_checkpoint_dir, device="cuda", dtype="bf16", int8=True)
    assert not any(isinstance(m, torch.nn.Linear) for m in quantized.model.modules())
    assert any(p.dtype == torch.int8 and p.is_cuda for p in quantized.model.buffers())
    take = quantized.generate(text, seed=11, max_frames=48, cuda_graph=True)
    assert take.num_frames > 0 and take.codes.device.type == "cpu"
