"""The speed paths give the results of the reference path: static decoding (the CUDA-graph step, run eagerly on the
CPU) and the reuse of its decoder across requests, blocked stop checks, chunked prefill, batched takes; and the
official-formulation baseline of bench/."""

from __future__ import annotations

import pytest
import torch

from fishs2.checkpoint import load_model
from fishs2.config import ModelConfig
from fishs2.generate import (
    FrameDecoder, StaticDecoder, generate_frames, generate_segments, left_pad, new_state, prefill, sample_frame,
    slow_step, static_capacity,
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


def decode_with(decoder_of, model, prompt, params, eos_id, seeds, frames=5):
    """Prefill `prompt`, then the first frame and `frames` decoder calls → (frames, state, generator states)."""
    gens = make_generators(seeds, "cpu")
    with torch.inference_mode():
        decoder, state = decoder_of(prompt.shape[0], prompt.shape[-1] + frames + 1)
        logits, hidden = prefill(model, prompt, state)
        first, decoder = decoder(logits, hidden, gens)
        out = torch.stack([first, *(decoder().clone() for _ in range(frames))])
    return out, state, [g.get_state() for g in gens]


def test_static_step_matches_dynamic_step(engine):
    """The static decoder's first frame (the step's sampling half on the prefill's outputs) and step (mask over the
    whole cache, uniforms drawn before the step) give the frames, cache and generator states of the dynamic path."""
    model, tokenizer, builder = engine
    prompt = builder.build("Hello there, this is a test.", [])[None]
    params = SamplingParams()
    eos = tokenizer.im_end_id

    def dynamic(batch, capacity):
        state = new_state(model, batch, capacity, eos)
        device_params = DeviceSampling.of(params, model.config, model.dtype, model.device)

        def start(logits, hidden, gens):
            first = sample_frame(model, logits, hidden, state, device_params, gens, None)
            return first, FrameDecoder(model, state, device_params, gens, first)
        return start, state

    def static(batch, capacity):
        decoder = StaticDecoder(model, batch, capacity, eos)

        def start(logits, hidden, gens):
            decoder.start(params, gens)
            return decoder.first_frame(logits, hidden), decoder
        return start, decoder.begin(None)

    (frames_a, state_a, rng_a), (frames_b, state_b, rng_b) = (
        decode_with(make, model, prompt, params, eos, [3]) for make in (dynamic, static))
    assert torch.equal(frames_a, frames_b)
    assert state_a.position == state_b.position
    assert all(torch.equal(a, b) for a, b in zip(rng_a, rng_b))
    for a, b in zip(state_a.slow_caches, state_b.slow_caches):
        torch.testing.assert_close(a.k[:, :, :state_a.position], b.k[:, :, :state_b.position], **TOL)


def test_static_step_never_reads_device_values_on_the_host(engine):
    """What CUDA graph capture needs, checked on the CPU: the static step makes no host read of a tensor value
    (`.item()`, `bool()`, data-dependent shapes), so it runs without syncs and can be recorded once; and it draws
    no random numbers (they come from buffers), so one recording serves any request's generators."""
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
    decoder = StaticDecoder(model, 2, prompt.shape[-1] + 4, tokenizer.im_end_id)
    state = decoder.begin(pad)
    params = SamplingParams()
    gens = make_generators([1, 2], "cpu")
    with torch.inference_mode():
        logits, hidden = prefill(model, prompt, state)
        decoder.start(params, gens)
        decoder.first_frame(logits, hidden)
        decoder.uniforms.draw(gens)
        with Ops() as ops:
            decoder.step()
    assert "aten::index_copy_" in ops.names and "aten::argmin" in ops.names  # the step was recorded
    assert not {"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::item"} & ops.names
    assert not {"aten::rand", "aten::uniform_", "aten::normal_", "aten::multinomial"} & ops.names


@pytest.mark.parametrize("mode", [AttentionMode(), AttentionMode.static(), AttentionMode.official()])
def test_fast_position_zero_fills_the_caches_as_a_full_forward_does(engine, mode):
    """Position 0's last fast layer only writes its keys and values (`TransformerBlock.fill_cache`): the caches must
    hold exactly what the whole forward writes, and later positions' logits must not change."""
    model, _, _ = engine
    fast, config = model.fast, model.config
    state = new_state(model, 2, 16, config.eos_token_id, mode, None)
    torch.manual_seed(0)
    hidden = torch.randn(2, 1, config.slow.dim)
    codes = torch.randint(0, config.codebook_size, (2,))

    def run(fill_only: bool) -> tuple[list[torch.Tensor], torch.Tensor]:
        for cache in state.fast_caches:
            cache.k.normal_(), cache.v.normal_()  # stale values from another frame must be overwritten
        logits = fast(hidden, 0, state.fast_caches, state.fast_rope, with_logits=not fill_only)
        assert (logits is None) == fill_only
        written = [t.clone() for cache in state.fast_caches for t in (cache.k[:, :, :1], cache.v[:, :, :1])]
        return written, fast(fast.embeddings(codes)[:, None], 1, state.fast_caches, state.fast_rope)

    (filled, after_fill), (full, after_full) = run(True), run(False)
    for a, b in zip(filled, full):
        assert torch.equal(a, b)
    assert torch.equal(after_fill, after_full)


def test_static_capacity_rounds_to_shared_buckets():
    assert [static_capacity(n, 32768) for n in (1, 356, 1024, 1025, 4000)] == [1024, 1024, 1024, 2048, 4096]
    assert static_capacity(3100, 3500) == 3500  # never past the model's context …
    assert static_capacity(3500, 3500) == 3500  # … and never under the request


def run_frames(model, prompt, params, seeds, frames=12, **options):
    return torch.stack(list(generate_frames(model, prompt, params, frames, make_generators(seeds, "cpu"), -1,
                                            **options)))


def test_static_decoder_is_kept_and_reset_between_requests(engine):
    """Requests of one batch size and capacity bucket reuse the model's decoder — whatever their prompts, padding
    and sampling settings — and each gets exactly the frames of the per-request dynamic path."""
    model, tokenizer, builder = engine
    model.static_decoder = None
    short, long = (builder.build(t, []) for t in ("Short.", "A much longer line of text than the first one."))
    requests = [  # (prompt, sampling, seeds): batch 1 twice, then batch 2 unpadded, padded, and unpadded again
        (short, SamplingParams(0.9, 0.9, 20), [4]),
        (long, SamplingParams(0.7, 0.6, 5), [5]),
        (torch.stack([short, short]), SamplingParams(), [6, 7]),
        ([short, long], SamplingParams(0.8, 0.95, 30), [8, 9]),
        (torch.stack([long, long]), SamplingParams(1.0, 0.8, 12), [10, 11]),
    ]
    kept = []
    for prompt, params, seeds in requests:
        static = run_frames(model, prompt, params, seeds, static=True)
        kept.append(model.static_decoder)
        assert torch.equal(static, run_frames(model, prompt, params, seeds))
    assert kept[0] is kept[1] and kept[2] is kept[3] is kept[4] and kept[1] is not kept[2]
    assert not kept[4].busy and kept[4].generators == []


def test_a_stream_closed_early_frees_the_kept_decoder(engine):
    """A cancelled request (the consumer stops iterating) leaves the decoder free: the next one reuses it and gets
    its own frames, not the remains of the cancelled one."""
    model, tokenizer, builder = engine
    model.static_decoder = None
    prompt = builder.build("Cancelled after two frames.", [])
    stream = generate_frames(model, prompt, SamplingParams(), 12, make_generators([1], "cpu"), -1, static=True)
    next(stream), next(stream)
    kept = model.static_decoder
    assert kept.busy
    stream.close()
    assert not kept.busy
    other = builder.build("The next request.", [])
    assert torch.equal(run_frames(model, other, SamplingParams(), [2], static=True),
                       run_frames(model, other, SamplingParams(), [2]))
    assert model.static_decoder is kept


def test_dialogue_segments_share_one_static_decoder(engine, monkeypatch):
    model, tokenizer, builder = engine
    model.static_decoder = None
    built = []
    init = StaticDecoder.__init__
    monkeypatch.setattr(StaticDecoder, "__init__", lambda self, *a, **k: built.append(1) or init(self, *a, **k))
    name, mode = "dialogue_two_batches", "sampled"
    got = segments(engine, name, mode, static=True)
    assert len(got) == 2 and len(built) == 1
    assert all(torch.equal(g, GOLDEN[f"{name}/{mode}/batch{b}.yielded_codes"]) for b, g in enumerate(got))


def test_interleaved_static_streams_do_not_share_a_decoder(engine):
    """Two streams on one model, consumed in turns: the second finds the kept decoder busy and gets its own."""
    model, tokenizer, builder = engine
    model.static_decoder = None
    prompts = [builder.build(t, []) for t in ("First stream.", "Second stream, in turns.")]
    params = SamplingParams(0.9, 0.9, 20)
    streams = [generate_frames(model, p, params, 12, make_generators([s], "cpu"), -1, static=True)
               for p, s in zip(prompts, (1, 2))]
    frames = [[], []]
    for pair in zip(*streams):
        for i, frame in enumerate(pair):
            frames[i].append(frame)
    for i, (prompt, seed) in enumerate(zip(prompts, (1, 2))):
        assert torch.equal(torch.stack(frames[i]), run_frames(model, prompt, params, [seed]))


def test_moving_or_casting_the_model_drops_its_decoder():
    directory = GOLDEN.directory / "tiny_s2"
    config = ModelConfig.from_file(directory / "config.json")
    model = load_model(directory, config, torch.float32, "cpu")
    prompt = torch.zeros(config.num_codebooks + 1, 6, dtype=torch.long)
    run_frames(model, prompt, SamplingParams(), [1], frames=3, static=True)
    decoder = model.static_decoder
    assert decoder is not None
    model.to("cpu", torch.float32)  # nothing moves: the graph's addresses stay valid
    assert model.static_decoder is decoder
    model.double()
    assert model.static_decoder is None
    run_frames(model, prompt, SamplingParams(), [1], frames=3, static=True)
    assert model.static_decoder.state.slow_caches[0].k.dtype == torch.float64


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


def test_lookahead_queues_the_next_block_before_yielding(engine, monkeypatch):
    """With lookahead (the default off the CPU) a block's frames reach the consumer after the next block is queued,
    so the device decodes while the consumer works."""
    import fishs2.generate as generate

    model, tokenizer, builder = engine
    steps = []
    decode = generate.FrameDecoder.__call__
    monkeypatch.setattr(generate.FrameDecoder, "__call__", lambda self: steps.append(1) or decode(self))
    prompt = builder.build("Short blocks first.", [])
    seen = [len(steps) for _ in generate_frames(model, prompt, SamplingParams(), 24, make_generators([1], "cpu"),
                                                 -1, check_every=8, lookahead=True)]
    assert seen[:9] == [0, 3, 7, 7, 15, 15, 15, 15, 23]
    assert len(seen) == 24 and seen[-1] == 23


@pytest.mark.parametrize("every", [1, 3, 8])
@pytest.mark.parametrize("static", [False, True])
def test_lookahead_changes_no_frame_and_no_generator_state(engine, every, static):
    """Frames and the generators' final states (rewound to each sequence's stop) are those of the plain loop,
    for a batch whose sequences stop at different frames."""
    model, tokenizer, builder = engine
    prompts = [builder.build("A short line.", []), builder.build("<|speaker:0|>And a longer one, padded.", [])]
    runs = []
    for lookahead in (False, True):
        gens = make_generators([0, 1], "cpu")  # the sequences stop at frames 23 and 29
        frames = list(generate_frames(model, prompts, SamplingParams(0.9, 0.9, 40), 40, gens, tokenizer.im_end_id,
                                      check_every=every, static=static, lookahead=lookahead))
        runs.append((torch.stack(frames), [g.get_state() for g in gens]))
    assert torch.equal(runs[0][0], runs[1][0])
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))
    assert runs[0][0].shape[0] < 40 and (runs[0][0][1:, :, 0] == tokenizer.im_end_id).any(dim=0).all()  # both stopped


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


@cuda
def test_cuda_graph_is_captured_once_and_serves_later_requests(engine, monkeypatch):
    """The model keeps its decoder and graph: later requests — other prompts, padding, sampling settings and
    generators — replay the first request's capture and get the frames and generator states of the eager step."""
    model, tokenizer, builder = engine
    model = load_model(GOLDEN.directory / "tiny_s2", model.config, torch.bfloat16, "cuda")
    captures = []
    capture = StaticDecoder.capture
    monkeypatch.setattr(StaticDecoder, "capture", lambda self: captures.append(1) or capture(self))
    short, long = (builder.build(t, []) for t in ("Short.", "<|speaker:0|>A longer line, to pad the short one."))
    requests = [([short, long], SamplingParams(0.8, 0.8, 30), [1, 2]),
                (torch.stack([long, long]), SamplingParams(0.9, 0.7, 10), [3, 4]),
                ([long, short], SamplingParams(1.0, 0.95, 50), [5, 6])]
    for prompt, params, seeds in requests:
        results = []
        for graph in (True, False):
            gens = make_generators(seeds, "cuda")
            frames = list(generate_frames(model, prompt, params, 40, gens, tokenizer.im_end_id, static=True,
                                          cuda_graph=graph, check_every=4))
            results.append((torch.stack(frames), [g.get_state() for g in gens]))
        assert torch.equal(results[0][0], results[1][0])
        assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1]))
    assert len(captures) == 1 and model.static_decoder.graphs is not None
    model.to("cpu")
    assert model.static_decoder is None  # offloading frees the caches and the graph


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=cuda)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_rms_norm_is_the_official_formula_bit_for_bit(device, dtype):
    """RMSNorm runs F.rms_norm on x itself: one kernel where PyTorch fuses it, no cast on either side. It must equal,
    bit for bit, the same kernel on x cast to fp32 and the result rounded to x's dtype (the form it replaced), and
    on the CPU the official formula written out (fp32 mean of squares, rsqrt, round, then the weight)."""
    import torch.nn.functional as F

    from fishs2.model.layers import RMSNorm

    gen = torch.Generator().manual_seed(3)
    for n in (32, 128, 2560):
        norm = RMSNorm(n, 1e-6)
        norm.weight.data = torch.randn(n, generator=gen)
        norm = norm.to(device, dtype)
        x = (torch.randn(64, n, generator=gen) * 3).to(device, dtype)
        x32 = x.float()
        cast_around = F.rms_norm(x32, (n,), eps=1e-6).to(dtype) * norm.weight
        assert torch.equal(norm(x), cast_around), (n, dtype)
        if device == "cpu":  # CUDA's mean() may sum in another order than the fused kernel
            official = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-6)).to(dtype) * norm.weight
            assert torch.equal(norm(x), official), (n, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("queries", [1, 3])
def test_grouped_attention_equals_copying_kv_per_query_head(dtype, queries):
    """Both attention kernels meet each group of query heads with its shared key head (no K/V copies); they must give
    what attention over K/V repeated per query head gives (the official GQA), with and without a mask, for decode
    (one query) and for several queries; the manual (activation-dtype) one keeps its official numerics."""
    import math

    from fishs2.model.layers import expand_kv, grouped_attention, manual_attention

    gen = torch.Generator().manual_seed(queries)
    B, H, Hkv, L, D = 2, 8, 2, 11, 16
    q, k, v = (torch.randn(B, h, n, D, generator=gen).to(dtype) for h, n in ((H, queries), (Hkv, L), (Hkv, L)))
    mask = torch.rand(1, 1, queries, L, generator=gen) > 0.3
    mask[..., 0] = True  # no empty softmax row
    tol = dict(atol=1e-6, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    for m in (None, mask):
        ke, ve = expand_kv(k, v, H)
        scores = (q.float() @ ke.float().transpose(-2, -1)) / math.sqrt(D)
        if m is not None:
            scores = scores.masked_fill(~m, float("-inf"))
        reference = torch.softmax(scores, dim=-1) @ ve.float()
        torch.testing.assert_close(grouped_attention(q, k, v, m).float(), reference, **tol)
        torch.testing.assert_close(manual_attention(q, k, v, m).float(), reference, **tol)
        torch.testing.assert_close(manual_attention(q, k, v, m), manual_attention(q, ke, ve, m), **tol)
