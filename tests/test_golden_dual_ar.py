"""Golden parity of the dual-AR side against tensors from the official implementation.

Walks every case of the fixture directory (`FISHS2_GOLDEN_DIR`, default the shipped one): prompt matrices and
generations must match exactly, float probes within atol = rtol = 1e-4.
"""

from __future__ import annotations

import pytest
import torch

from fishs2.checkpoint import load_model
from fishs2.config import ModelConfig
from fishs2.generate import Exchange, generate_frames, generate_segments, new_state, slow_step
from fishs2.prompt import PromptBuilder, Reference, group_batches
from fishs2.sampling import SamplingParams, make_generators
from fishs2.tokenizer import Tokenizer

from .golden import Golden, golden_dir

TOL = dict(atol=1e-4, rtol=1e-4)
GOLDEN = Golden(golden_dir(), "dual_ar")
CASES = sorted(GOLDEN.meta["cases"])
MODES = sorted(GOLDEN.meta["sampling_modes"])


@pytest.fixture(scope="module")
def engine():
    directory = GOLDEN.directory / "tiny_s2"
    tokenizer = Tokenizer(directory / "tokenizer.json")
    config = ModelConfig.from_file(directory / "config.json")
    config = config.with_semantic_range(tokenizer.semantic_begin_id, tokenizer.semantic_end_id)
    model = load_model(directory, config, torch.float32, "cpu")
    return model, tokenizer, PromptBuilder(tokenizer, config.num_codebooks)


def case_inputs(name: str) -> tuple[str, list[Reference], int]:
    inputs = GOLDEN.meta["cases"][name]["inputs"]
    references = [
        Reference(text, GOLDEN[f"{name}/input.prompt_tokens.{i}"]) for i, text in enumerate(inputs.get("prompt_text", []))
    ]
    return inputs["text"], references, inputs.get("chunk_length", 512)


def first_prompt(engine, name: str) -> torch.Tensor:
    _, _, builder = engine
    text, references, chunk_length = case_inputs(name)
    return builder.build(group_batches(text, chunk_length)[0], references)


def test_tokenizer_probe(engine):
    _, tokenizer, _ = engine
    for probe in GOLDEN.meta["tokenizer_probe"]:
        assert tokenizer.encode(probe["text"]) == probe["ids"], probe["text"]


def test_config_matches_official_flattening(engine):
    model, _, _ = engine
    loaded = GOLDEN.meta["loaded_config"]
    cfg = model.config
    assert (cfg.slow.dim, cfg.slow.n_layer, cfg.slow.n_head, cfg.slow.n_local_heads, cfg.slow.head_dim) == (
        loaded["dim"], loaded["n_layer"], loaded["n_head"], loaded["n_local_heads"], loaded["head_dim"])
    assert (cfg.fast.n_layer, cfg.fast.intermediate_size, cfg.codebook_size, cfg.num_codebooks) == (
        loaded["n_fast_layer"], loaded["fast_intermediate_size"], loaded["codebook_size"], loaded["num_codebooks"])
    assert (cfg.semantic_begin_id, cfg.semantic_end_id) == (loaded["semantic_begin_id"], loaded["semantic_end_id"])


@pytest.mark.parametrize("name", CASES)
def test_slow_probes(engine, name):
    model, tokenizer, _ = engine
    prompt = first_prompt(engine, name)[None]
    if GOLDEN.has(f"{name}/slow.layer_io"):
        captured = []
        hooks = [model.slow.layers[0].register_forward_pre_hook(lambda m, args: captured.append(args[0][0].clone()))]
        hooks += [layer.register_forward_hook(lambda m, a, out: captured.append(out[0].clone())) for layer in model.slow.layers]
        state = new_state(model, 1, prompt.shape[-1] + 1, tokenizer.im_end_id)
        with torch.inference_mode():
            model.slow(prompt, 0, state.slow_caches, state.slow_rope[: prompt.shape[-1]], state.mode)
        for h in hooks:
            h.remove()
        torch.testing.assert_close(torch.stack(captured), GOLDEN[f"{name}/slow.layer_io"], **TOL)
    if GOLDEN.has(f"{name}/slow.logits_all"):
        state = new_state(model, 1, prompt.shape[-1] + 1, tokenizer.im_end_id)
        with torch.inference_mode():
            logits, hidden = model.slow(prompt, 0, state.slow_caches, state.slow_rope[: prompt.shape[-1]], state.mode, last_only=False)
        torch.testing.assert_close(logits[0], GOLDEN[f"{name}/slow.logits_all"], **TOL)
        torch.testing.assert_close(hidden[0], GOLDEN[f"{name}/slow.hidden_all"], **TOL)

    state = new_state(model, 1, prompt.shape[-1] + 1, tokenizer.im_end_id)
    with torch.inference_mode():
        logits, hidden = slow_step(model, prompt, state)
        assert_allowed_logits(logits[0], GOLDEN[f"{name}/slow.logits_last"], state, model.config)
        torch.testing.assert_close(hidden[0], GOLDEN[f"{name}/slow.hidden_last"], **TOL)
        step_logits, step_hidden = slow_step(model, GOLDEN[f"{name}/step.input"].view(1, -1, 1), state)
    assert_allowed_logits(step_logits[0], GOLDEN[f"{name}/step.logits"], state, model.config)
    torch.testing.assert_close(step_hidden[0], GOLDEN[f"{name}/step.hidden"], **TOL)


def assert_allowed_logits(got, expected, state, config):
    """A decode step computes the head's rows of the ids a frame can take (semantic ids, <|im_end|>) and sets the
    others to −inf, as the official bias does: the allowed logits are the official ones, the rest are −inf."""
    ids = state.allowed_ids
    assert len(ids) == config.semantic_end_id - config.semantic_begin_id + 2
    torch.testing.assert_close(got[ids], expected[ids], **TOL)
    others = torch.ones_like(got, dtype=torch.bool).index_fill_(0, ids, False)
    assert torch.isneginf(got[others]).all()


@pytest.mark.parametrize("name", CASES)
def test_fast_probe(engine, name):
    model, tokenizer, _ = engine
    codes = GOLDEN[f"{name}/fast.input_codes"]
    state = new_state(model, 1, 1, tokenizer.im_end_id)
    fast = model.fast
    with torch.inference_mode():
        rows = [fast(GOLDEN[f"{name}/slow.hidden_last"].view(1, 1, -1), 0, state.fast_caches, state.fast_rope)]
        for i, code in enumerate(codes.tolist(), start=1):
            rows.append(fast(fast.embeddings(torch.tensor([[code]])), i, state.fast_caches, state.fast_rope))
    torch.testing.assert_close(torch.cat(rows, dim=1)[0], GOLDEN[f"{name}/fast.logits"], **TOL)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", CASES)
def test_generation_frames(engine, name, mode):
    """Every batch's prompt (with the carried conversation) and generated frames, exactly."""
    model, tokenizer, builder = engine
    text, references, chunk_length = case_inputs(name)
    record = GOLDEN.meta["cases"][name]["modes"][mode]
    sampling = record["sampling"]
    params = SamplingParams(sampling["temperature"], sampling["top_p"], sampling["top_k"])
    generators = make_generators([sampling["seed"]], "cpu")
    batches = group_batches(text, chunk_length)
    assert len(batches) == len(record["batches"])
    history: list[Exchange] = []
    for b, batch_text in enumerate(batches):
        prefix = f"{name}/{mode}/batch{b}"
        prompt = builder.build(batch_text, references, history)
        assert torch.equal(prompt, GOLDEN[f"{prefix}.prompt"]), f"{prefix}.prompt"
        frames = list(generate_frames(model, prompt, params, sampling["max_new_tokens"], generators, tokenizer.im_end_id))
        generated = torch.stack(frames, dim=-1)[0].long()
        assert torch.equal(generated, GOLDEN[f"{prefix}.generated"]), f"{prefix}.generated"
        yielded = generated[1:, :-1]
        assert torch.equal(yielded, GOLDEN[f"{prefix}.yielded_codes"]), f"{prefix}.yielded_codes"
        history.append(Exchange(batch_text, yielded))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", CASES)
def test_generate_segments_reproduces_official_output(engine, name, mode):
    """The long-form driver, in the official frame-limit mode, yields the official codes per batch."""
    model, _, builder = engine
    text, references, chunk_length = case_inputs(name)
    sampling = GOLDEN.meta["cases"][name]["modes"][mode]["sampling"]
    params = SamplingParams(sampling["temperature"], sampling["top_p"], sampling["top_k"])
    batches = [(t, [i]) for i, t in enumerate(group_batches(text, chunk_length))]
    events = generate_segments(
        model, builder, batches, references, params, sampling["max_new_tokens"],
        make_generators([sampling["seed"]], "cpu"), keep_last_frame_at_limit=False,
    )
    segments = [e.result for e in events if hasattr(e, "result")]
    for b, segment in enumerate(segments):
        assert torch.equal(segment.codes, GOLDEN[f"{name}/{mode}/batch{b}.yielded_codes"])
