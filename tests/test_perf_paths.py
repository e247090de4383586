"""The speed paths give the results of the reference path: static decoding (the CUDA-graph step, run eagerly on the
CPU), blocked stop checks, chunked prefill, batched takes; and the official-formulation baseline of bench/."""

from __future__ import annotations

import pytest
import torch

from fishs2.checkpoint import load_model
from fishs2.config import ModelConfig
from fishs2.generate import (
    FrameDecoder, generate_frames, generate_segments, left_pad, new_state, prefill, sample_frame, slow_step,
)
from fishs2.model import AttentionMode
from fishs2.prompt import PromptBuilder, Reference, group_batches
from fishs2.sampling import DeviceSampling, SamplingParams, make_generators
from fishs2.tokenizer import Tokenizer

from .golden import Golden, golden_dir

GOLDEN = Golden(golden_dir(), "dual_ar")
CASES = sorted(GOLDEN.meta["cases"])
MODES = sorted(GOLDEN.meta["sampling_modes"])
TOL = dict(atol=1e-4, rtol=1e-4)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(scope="module")
def engine():
    directory = GOLDEN.directory / "tiny_s2"
    tokenizer = Tokenizer(directory / "tokenizer.json")
    config = ModelConfig.from_file(directory / "config.json")
    config = config.with_semantic_range(tokenizer.semantic_begin_id, tokenizer.semantic_end_id)
    model = load_model(directory, config, torch.float32, "cpu")
    return model, tokenizer, PromptBuilder(tokenizer, config.num_codebooks)


def case(name: str, mode: str):
    inputs = GOLDEN.meta["cases"][name]["inputs"]
    texts = inputs.get("prompt_text", [])
    references = [Reference(t, GOLDEN[f"{name}/input.prompt_tokens.{i}"]) for i, t in enumerate(texts)]
    sampling = GOLDEN.meta["cases"][name]["modes"][mode]["sampling"]
    params = SamplingParams(sampling["temperature"], sampling["top_p"], sampling["top_k"])
    batches = [(t, [i]) for i, t in enumerate(group_batches(inputs["text"], inputs.get("chunk_length", 512)))]
    return batches, references, params, sampling


def segments(engine, name, sampling_mode, **options):
    model, _, builder = engine
    batches, references, params, sampling = case(name, sampling_mode)
    events = generate_segments(model, builder, batches, references, params, sampling["max_new_tokens"],
                               make_generators([sampling["seed"]], "cpu"), keep_last_frame_at_limit=False, **options)
    return [e.result.codes for e in events if hasattr(e, "result")]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("options", [dict(static=True), dict(check_every=3), dict(mode=AttentionMode.official())],
                         ids=["static", "check_every", "official"])
def test_paths_reproduce_the_official_generation(engine, name, mode, options):
    """Each path yields the official codes of every batch; later batches start from the generator state the
    previous one left, so this also checks the generator rewind of blocked stop checks."""
    got = segments(engine, name, mode, **options)
    expected = [GOLDEN[f"{name}/{mode}/batch{b}.yielded_codes"] for b in range(len(got))]
    assert len(got) == len(GOLDEN.meta["cases"][name]["modes"][mode]["batches"])
    for g, e in zip(got, expected):
        assert torch.equal(g, e)


def test_static_step_matches_dynamic_step(engine):
    """One static decode step (mask over the whole request-sized cache, grouped attention) ≈ the filled-only step."""
    model, tokenizer, builder = engine
    prompt = builder.build("Hello there, this is a test.", [])[None]
    params = DeviceSampling.of(SamplingParams(), model.dtype, model.device)
    outputs = []
    for static in (False, True):
        state = new_state(model, 1, prompt.shape[-1] + 8, tokenizer.im_end_id)
        gens = make_generators([3], "cpu")
        with torch.inference_mode():
            logits, hidden = prefill(model, prompt, state)
            first = sample_frame(model, logits, hidden, state, params, gens, None)
            decoder = FrameDecoder(model, state, params, gens, first, static=static)
            frames = [decoder().clone() for _ in range(5)]
        outputs.append((torch.stack(frames), state.position, [c.k.clone() for c in state.slow_caches]))
    assert torch.equal(outputs[0][0], outputs[1][0])
    assert outputs[0][1] == outputs[1][1]
    for a, b in zip(outputs[0][2], outputs[1][2]):
        torch.testing.assert_close(a, b, **TOL)


def test_static_step_never_reads_device_values_on_the_host(engine):
    """What CUDA graph capture needs, checked on the CPU: the static step makes no host read of a tensor value
    (`.item()`, `bool()`, data-dependent shapes), so it runs without syncs and can be recorded once."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.add(func._schema.name)
            return func(*args, **(kwargs or {}))

    model, tokenizer, builder = engine
    prompts = [builder.build("A static step.", []), builder.build("And a longer, padded one.", [])]
    prompt, pad = left_pad(prompts)
    state = new_state(model, 2, prompt.shape[-1] + 4, tokenizer.im_end_id, pad=pad)
    params = DeviceSampling.of(SamplingParams(), model.dtype, model.device)
    gens = make_generators([1, 2], "cpu")
    with torch.inference_mode():
        logits, hidden = prefill(model, prompt, state)
        first = sample_frame(model, logits, hidden, state, params, gens, None)
        decoder = FrameDecoder(model, state, params, gens, first, static=True)
        with Ops() as ops:
            decoder.run()
    assert "aten::rand" in ops.names and "aten::index_copy_" in ops.names  # the step was recorded
    assert not {"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::item"} & ops.names


@pytest.mark.parametrize("chunk", [1, 7, 32])
def test_chunked_prefill_matches_one_shot(engine, chunk):
    model, tokenizer, builder = engine
    prompt = builder.build("Chunked prefill must give the logits of one forward, within rounding.", [])[None]
    results = []
    for size in (prompt.shape[-1], chunk):
        state = new_state(model, 1, prompt.shape[-1] + 1, tokenizer.im_end_id)
        with torch.inference_mode():
            logits, hidden = prefill(model, prompt, state, chunk=size)
            step = slow_step(model, prompt[..., -1:], state)
        results.append((logits, hidden, *step))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, **TOL)


def test_batched_takes_equal_single_runs(engine):
    """Takes decoded as one batch give each take's single run with the same seed, across several segments (the
    generator of a take that stops early is rewound, so its next segment starts where its single run would)."""
    model, tokenizer, builder = engine
    batches = [("<|speaker:0|>First line here.", [0]), ("<|speaker:0|>And a second one.", [1])]
    params = SamplingParams(0.9, 0.9, 20)

    def run(seeds):
        out = {}
        for e in generate_segments(model, builder, batches, [], params, 40, make_generators(seeds, "cpu")):
            if hasattr(e, "result"):
                out[(seeds[e.take], e.segment)] = e.result.codes
        return out

    batched = run([2, 3])  # with this model, seed 2 stops after 4 frames of segment 0 and seed 3 runs to the limit
    for seed in (2, 3):
        single = run([seed])
        for (s, segment), codes in single.items():
            assert torch.equal(batched[(s, segment)], codes), (seed, segment)


@pytest.mark.parametrize("options", [{}, dict(static=True), dict(prefill_chunk=5), dict(mode=AttentionMode.official())],
                         ids=["default", "static", "chunked", "official"])
def test_prompts_of_different_lengths_batch_like_single_runs(engine, options):
    """Left-padded into one batch, each sequence keeps its positions and never sees the padding."""
    model, tokenizer, builder = engine
    prompts = [builder.build(text, []) for text in ("Short.", "A much longer line of text than the first one.")]
    params = SamplingParams(0.9, 0.9, 20)
    def run(prompt, seeds):
        return torch.stack(list(generate_frames(model, prompt, params, 12, make_generators(seeds, "cpu"), -1, **options)))

    batched = run(prompts, [4, 5])
    for row, (prompt, seed) in enumerate(zip(prompts, (4, 5))):
        assert torch.equal(batched[:, row], run(prompt, [seed])[:, 0])


def test_compiled_blocks_reproduce_the_official_generation(tmp_path):
    """`compile_blocks` (inductor, dynamic shapes, cache in tmp_path) gives the official codes, eager and static."""
    directory = GOLDEN.directory / "tiny_s2"
    tokenizer = Tokenizer(directory / "tokenizer.json")
    config = ModelConfig.from_file(directory / "config.json")
    config = config.with_semantic_range(tokenizer.semantic_begin_id, tokenizer.semantic_end_id)
    model = load_model(directory, config, torch.float32, "cpu").compile_blocks(tmp_path / "inductor")
    engine = (model, tokenizer, PromptBuilder(tokenizer, config.num_codebooks))
    name, mode = "dialogue_two_batches", "sampled"
    for options in ({}, dict(static=True)):
        got = segments(engine, name, mode, **options)
        assert all(torch.equal(g, GOLDEN[f"{name}/{mode}/batch{b}.yielded_codes"]) for b, g in enumerate(got))
    assert any((tmp_path / "inductor").rglob("*.py")), "nothing was compiled into the cache"


def test_first_frames_are_yielded_before_a_whole_block_is_decoded(engine, monkeypatch):
    """Blocks grow 1, 2, 4, then check_every: a stream gets its first frames after as few decode steps as possible."""
    import fishs2.generate as generate

    model, tokenizer, builder = engine
    steps = []
    decode = generate.FrameDecoder.__call__
    monkeypatch.setattr(generate.FrameDecoder, "__call__", lambda self: steps.append(1) or decode(self))
    prompt = builder.build("Short blocks first.", [])
    seen = [len(steps) for _ in generate_frames(model, prompt, SamplingParams(), 24, make_generators([1], "cpu"),
                                                 -1, check_every=8)]
    assert seen[:9] == [0, 1, 3, 3, 7, 7, 7, 7, 15]
    assert len(seen) == 24 and seen[-1] == 23


def test_official_baseline_preallocates_the_whole_context(engine):
    model, tokenizer, _ = engine
    assert new_state(model, 1, 50, tokenizer.im_end_id).capacity == 50
    assert new_state(model, 1, 50, tokenizer.im_end_id, AttentionMode.official()).capacity == model.config.max_seq_len


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_replays_the_eager_static_step(engine, dtype):
    """The captured step gives the frames and generator states of the same step run eagerly."""
    model, tokenizer, builder = engine
    model = load_model(GOLDEN.directory / "tiny_s2", model.config, dtype, "cuda")
    prompt = builder.build("<|speaker:0|>A graph replays the step it captured.", [])
    params = SamplingParams(0.8, 0.8, 30)
    results = []
    for graph in (False, True):
        gens = make_generators([5, 6], "cuda")
        frames = list(generate_frames(model, torch.stack([prompt, prompt]), params, 40, gens, tokenizer.im_end_id,
                                      static=True, cuda_graph=graph, check_every=4))
        results.append((torch.stack(frames), [g.get_state() for g in gens]))
    assert torch.equal(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1]):
        assert torch.equal(a, b)


@cuda
def test_cuda_blocked_stop_checks_match_per_frame_checks(engine):
    model, tokenizer, builder = engine
    model = load_model(GOLDEN.directory / "tiny_s2", model.config, torch.float32, "cuda")
    prompt = builder.build("Blocked checks.", [])
    params = SamplingParams(0.8, 0.8, 30)
    runs = []
    for every in (1, 8):
        gens = make_generators([7], "cuda")
        frames = list(generate_frames(model, prompt, params, 30, gens, tokenizer.im_end_id, check_every=every))
        runs.append((torch.stack(frames), gens[0].get_state()))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
