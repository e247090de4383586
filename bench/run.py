"""fishs2 benchmark: decode speed, per-frame time against context length, memory and codec decode, every figure
next to the official formulation's measured in the same run (results: RESULTS.md beside this file).

    python bench/run.py                         # CPU: mid-size random checkpoint in the official layout, fp32
    python bench/run.py --real --dtype bf16     # the real architecture with random weights (GPU)
    python bench/run.py --write bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fishs2.checkpoint import load_model  # noqa: E402
from fishs2.config import ModelConfig  # noqa: E402
from fishs2 import decode_attention, matvec  # noqa: E402
from fishs2.generate import FrameDecoder, StaticDecoder, generate_frames, new_state, sample_frame, slow_step  # noqa: E402
from fishs2.memory import GIB, estimate_memory, kv_cache_bytes  # noqa: E402
from fishs2.model import AttentionMode, DualAR  # noqa: E402
from fishs2.quantize import fp8_supported, quantize_fp8_model, quantize_int8  # noqa: E402
from fishs2.sampling import DeviceSampling, SamplingParams, make_generators  # noqa: E402
from fishs2.synthetic import Sizes, write_checkpoint  # noqa: E402
from fishs2.tokenizer import Tokenizer  # noqa: E402

FRAME_SECONDS = 2048 / 44100  # audio per frame
# Mid-size CPU models. "mid": the shape the issue names (dim 512); its KV cache is large next to its small layers
# (KV bytes per position per layer / layer weight bytes ≈ 4× the real model's). "mid-1024": dim 1024, whose ratio
# is about 2× the real one's (4.2e-5 against 2.0e-5 per position) and whose bytes read per frame grow almost like
# the real architecture's (+10% against +8% from 100 to 8000 positions), so its growth with context is closer to
# representative.
SHAPES = {
    "mid": Sizes(dim=512, n_layer=8, n_head=8, n_local_heads=2, head_dim=64, intermediate_size=1536,
                 n_fast_layer=2, codebook_size=1024, max_seq_len=32768),
    "mid-1024": Sizes(dim=1024, n_layer=8, n_head=16, n_local_heads=4, head_dim=64, intermediate_size=3072,
                      n_fast_layer=2, codebook_size=1024, max_seq_len=32768),
}
REAL_CONFIG = ROOT / "tests" / "fixtures" / "golden" / "real_config_reference.json"
NO_STOP = -1  # eos id that is never sampled as a frame's first row: every run decodes exactly the frames asked
PARAMS = SamplingParams(temperature=1.0, top_p=0.9, top_k=30)
GPU_PEAK_GBS = {"H200": 4800, "H100 NVL": 3900, "H100 PCIe": 2000, "H100": 3350, "A100-SXM4-80GB": 2039,
                "A100": 1555, "L40S": 864, "4090": 1008, "3090": 936}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# ── measurement helpers ────────────────────────────────────────────────────────────────────────────────────────
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    elif Path("/proc/self/clear_refs").exists():
        Path("/proc/self/clear_refs").write_text("5")


def memory(device: torch.device, peak: bool) -> int:
    """Device memory allocated (CUDA) or RSS (CPU), now or at its peak since `reset_peak`, in bytes."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() if peak else torch.cuda.memory_allocated()
    key = "VmHWM" if peak else "VmRSS"
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    return 0


def stored_bytes(*modules: torch.nn.Module) -> int:
    tensors = {id(t): t for m in modules for t in [*m.parameters(), *m.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def weight_bytes_per_frame(model: DualAR, full_head: bool = False) -> int:
    """Weight bytes one frame reads: the slow AR once (with its output head: the rows of the semantic ids and the
    stop token, or every row with `full_head` as the official formulation), the fast AR num_codebooks times (its
    output head num_codebooks − 1 times; at position 0 its last layer only the norm and wqkv, which fill the cache:
    `TransformerBlock.fill_cache`, on every path); embedding lookups read a few rows only and are left out."""
    cfg, slow, fast, k = model.config, model.slow, model.fast, model.config.num_codebooks
    head = stored_bytes(slow.output if slow.output is not None else slow.embeddings)
    if not full_head:
        head = head * (cfg.semantic_end_id - cfg.semantic_begin_id + 2) // cfg.vocab_size
    last = fast.layers[-1]
    skipped_at_position_0 = stored_bytes(last) - stored_bytes(last.attention_norm, last.attention.wqkv)
    return (stored_bytes(*slow.layers, slow.norm) + head + k * stored_bytes(*fast.layers) - skipped_at_position_0
            + (k - 1) * stored_bytes(fast.norm, fast.output))


def peak_bandwidth(device: torch.device) -> tuple[float, str]:
    """(GB/s, how it was obtained): a table for known GPUs, else a measured copy (bytes read + written)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in GPU_PEAK_GBS.items():
            if key in name:
                return float(value), f"{name} datasheet"
    n = 64 * 2**20
    a, b = torch.ones(n, device=device), torch.empty(n, device=device)
    best = float("inf")
    for _ in range(5):
        sync(device)
        start = time.perf_counter()
        b.copy_(a)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n * 4 / best / 1e9, "measured tensor copy, read + write"


def random_prompt(config: ModelConfig, length: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    prompt = torch.zeros(config.num_codebooks + 1, length, dtype=torch.long)
    prompt[0] = torch.randint(0, min(300, config.vocab_size), (length,), generator=g)
    return prompt


# ── benchmarks ─────────────────────────────────────────────────────────────────────────────────────────────────
def decode_run(model: DualAR, prompt: torch.Tensor, frames: int, first_audio: int, **options) -> dict:
    """One generate_frames call: time to first frame / to frame `first_audio`, decode frames/s, peak memory."""
    device = model.device
    sync(device)
    reset_peak(device)
    before = memory(device, peak=False)
    start = time.perf_counter()
    stamps = []
    for _ in generate_frames(model, prompt, PARAMS, frames, make_generators([1], device), NO_STOP, **options):
        stamps.append(time.perf_counter())
    sync(device)
    # The decode rate counts from the end of the first block of frames (graph capture, first host sync) on.
    skip = 1 if options.get("check_every", 1 if device.type == "cpu" else 8) == 1 else 8
    return {"first_frame_s": stamps[0] - start, "first_audio_frames_s": stamps[min(first_audio, frames) - 1] - start,
            "frames_per_s": (len(stamps) - 1 - skip) / (stamps[-1] - stamps[skip]), "peak_bytes": memory(device, peak=True),
            "growth_bytes": max(0, memory(device, peak=True) - before)}


def reported(error: Exception) -> str:
    """A failure's traceback to the log and its first line for the report."""
    traceback.print_exc()
    return f"{type(error).__name__}: {error}".splitlines()[0][:300]


def interleaved_runs(paths: dict, rounds: int) -> tuple[dict[str, list[dict]], dict[str, str]]:
    """Call each path's measurement (name → function returning a run's figures) once per round, the paths
    interleaved so that load from other processes disturbs every path alike → (runs per path, error per path that
    failed). A path that fails (a kernel that does not build on this GPU, say) is dropped; the others go on."""
    runs, failed = {name: [] for name in paths}, {}
    for _ in range(rounds):
        for name, measure in paths.items():
            if name in failed:
                continue
            try:
                runs[name].append(measure())
            except Exception as error:  # noqa: BLE001 — reported in the results, with its traceback in the log
                failed[name] = reported(error)
                continue
            print(f"{name}: {runs[name][-1]}", flush=True)
    return {name: r for name, r in runs.items() if name not in failed}, failed


def step_halves(decoder: StaticDecoder, rounds: int = 20) -> list[float]:
    """Seconds per call of a kept static decoder's two halves — the slow AR (`slow_half`) and the fast AR with the
    sampling (`sample_half`) — replayed from their CUDA graphs when captured, else run eagerly. The buffers a half
    advances are restored afterwards; the slow half rewrites the cache slot the next frame would write."""
    buffers = (decoder.frame, decoder.window, decoder.position, decoder.logits, decoder.hidden)
    saved = [b.clone() for b in buffers]
    halves = [g.replay for g in decoder.graphs] if decoder.graphs else [decoder.slow_half, decoder.sample_half]
    device, seconds = decoder.frame.device, []
    with torch.inference_mode():
        for half in halves:
            half()
            sync(device)
            start = time.perf_counter()
            for _ in range(rounds):
                half()
            sync(device)
            seconds.append((time.perf_counter() - start) / rounds)
            for buffer, value in zip(buffers, saved):
                buffer.copy_(value)
    return seconds


def dependent_launch_in_use(device: torch.device) -> bool:
    """Whether the decode kernels launch as programmatic dependents on this GPU (`matvec.dependent_launch`)."""
    return matvec.launches_dependents(device)


def halves_without(decoder: StaticDecoder, switch) -> list[float]:
    """`step_halves` of the decoder's graphs captured again inside `switch` (a context that turns one CUDA
    optimisation off: the same process's baseline for it); the graphs are captured as before afterwards."""
    with torch.inference_mode():  # the decoder's buffers are inference tensors
        with switch:
            decoder.capture()
            seconds = step_halves(decoder)
        decoder.capture()
    return seconds


def best_of(runs: list[dict]) -> dict:
    """The run with the highest decode rate (the least disturbed on a shared machine) and the spread; first-frame
    latency of the first run (a model's first request: CUDA-graph capture included) and the fastest later one."""
    best = max(runs, key=lambda r: r["frames_per_s"])
    rates = [r["frames_per_s"] for r in runs]
    later = min((r["first_audio_frames_s"] for r in runs[1:]), default=None)
    return {**best, "spread": (max(rates) - min(rates)) / max(rates), "runs": len(runs),
            "first_request_audio_frames_s": runs[0]["first_audio_frames_s"], "later_audio_frames_s": later}


def context_sweep(model: DualAR, contexts: list[int], rounds: int, modes: dict[str, AttentionMode]) -> dict:
    """Seconds per decode frame with `context` positions already in the cache, per mode and context.

    The caches are filled with random keys/values instead of a prefill (a step's cost does not depend on their
    values). Rounds interleave every (mode, context) one frame at a time and the fastest frame of each is kept, so
    load from other processes on a shared machine disturbs all columns alike.
    """
    device = model.device
    params = DeviceSampling.of(PARAMS, model.config, model.dtype, device)
    decoders = {}
    with torch.inference_mode():
        for name, mode in modes.items():
            for context in contexts:
                state = new_state(model, 1, context + rounds + 2, NO_STOP, mode)
                for cache in state.slow_caches:
                    cache.k[:, :, :context].normal_()
                    cache.v[:, :, :context].normal_()
                state.position = context
                gens = make_generators([2], device)
                logits, hidden = slow_step(model, random_prompt(model.config, 1)[None].to(device), state)
                first = sample_frame(model, logits, hidden, state, params, gens, None)
                decoders[name, context] = FrameDecoder(model, state, params, gens, first)
        best = {key: float("inf") for key in decoders}
        for _ in range(rounds + 1):  # the first round warms up
            for key, decoder in decoders.items():
                sync(device)
                start = time.perf_counter()
                decoder()
                sync(device)
                best[key] = min(best[key], time.perf_counter() - start)
    return {name: {c: best[name, c] for c in contexts} for name in modes}


def real_floor(contexts: list[int]) -> str:
    """The same floor for the real architecture in bf16 (weights per frame from a meta-device model)."""
    raw = json.loads(REAL_CONFIG.read_text())
    config = ModelConfig.from_dict(raw.get("config", raw))
    with torch.device("meta"):
        weights = weight_bytes_per_frame(DualAR(config).to(torch.bfloat16))
    low, high = (weights + kv_cache_bytes(config, c, dtype=torch.bfloat16) for c in (min(contexts), max(contexts)))
    return (f"For the real architecture in bf16 the step reads {low / GIB:.1f} GiB at {min(contexts)} positions and "
            f"{high / GIB:.1f} GiB at {max(contexts)} (+{100 * (high / low - 1):.0f}%).")


def kv_bytes_allocated(model: DualAR, prompt: int, frames: int, mode: AttentionMode) -> int:
    state = new_state(model, 1, prompt + frames, NO_STOP, mode)
    return stored_bytes(*state.slow_caches, *state.fast_caches)


def teacher_forced_error(reference: DualAR, quantized: DualAR, prompt: torch.Tensor) -> tuple[float, float]:
    """(relative L2 error of the slow logits over every prompt position, semantic argmax agreement)."""
    cfg = reference.config
    outputs = []
    for model in (reference, quantized):
        state = new_state(model, 1, prompt.shape[-1], NO_STOP)
        with torch.inference_mode():
            logits, _ = model.slow(prompt[None].to(model.device), 0, state.slow_caches, state.slow_rope, state.mode,
                                   last_only=False)
        outputs.append(logits.float()[..., cfg.semantic_begin_id : cfg.semantic_end_id + 1])
    a, b = outputs
    return ((a - b).norm() / a.norm()).item(), (a.argmax(-1) == b.argmax(-1)).float().mean().item()


def codec_decode(device: torch.device, frames: int, first_audio: int) -> dict:
    """The real-architecture codec (random weights, fp32, weight norm folded as `load_codec` leaves it):
    whole-utterance decode rate, and first-audio latency the first time a chunk of `first_audio` frames is decoded
    (a model's first request: on CUDA, cuDNN picks its algorithms per input length) and again (later requests)."""
    from fishs2.codec import Codec, CodecConfig

    codec = Codec(CodecConfig()).to(device).eval().fold_weight_norm()
    codes = torch.randint(0, 1024, (1, 10, frames), device=device)
    with torch.inference_mode():
        codec.decode_stream(codes[..., :2], 0)  # warm-up
        sync(device)
        start = time.perf_counter()
        codec.decode_chunked(codes)
        sync(device)
        whole = time.perf_counter() - start
        first = []
        for _ in range(2):
            start = time.perf_counter()
            codec.decode_stream(codes[..., :first_audio], 0)
            sync(device)
            first.append(time.perf_counter() - start)
    return {"frames_per_s": frames / whole, "first_audio_decode_s": first[0], "first_audio_decode_again_s": first[1]}


# ── model construction ─────────────────────────────────────────────────────────────────────────────────────────
def mid_model(dtype: torch.dtype, device: torch.device, cache: Path, shape: str = "mid") -> DualAR:
    """A mid-size checkpoint, written once in the official layout and loaded by the real loader."""
    directory = cache / shape
    if not (directory / "config.json").exists():
        write_checkpoint(directory, ROOT / "tests" / "fixtures" / "golden" / "tiny_codec", SHAPES[shape])
    tokenizer = Tokenizer(directory / "tokenizer.json")
    config = ModelConfig.from_file(directory / "config.json")
    config = config.with_semantic_range(tokenizer.semantic_begin_id, tokenizer.semantic_end_id)
    return load_model(directory, config, dtype, device)


def real_model(dtype: torch.dtype, device: torch.device, config_path: Path = REAL_CONFIG) -> DualAR:
    """The real architecture (4.56 B parameters; or any config.json) with random weights, built on the device.
    The weights come from a fixed seed, so two calls build the same model (the int8 error compares them)."""
    raw = json.loads(config_path.read_text())
    config = ModelConfig.from_dict(raw.get("config", raw))
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.device(device):
            torch.manual_seed(0)
            model = DualAR(config)
    finally:
        torch.set_default_dtype(default)
    return model.eval().requires_grad_(False)


# ── report ─────────────────────────────────────────────────────────────────────────────────────────────────────
def machine(device: torch.device, threads: int) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {threads} thread(s), "
            f"load average at start {load}")


GOAL_RTF, GOAL_FIRST_AUDIO_S = 0.12, 0.12  # issue 5, for the real architecture at batch 1 on an H100


def goals(results: dict, codec: dict | None) -> list[str]:
    """The speed goals against this run's best path for each: met or not, in one line each."""
    def verdict(value: float, goal: float) -> str:
        return "met" if value <= goal else f"not met ({value / goal:.2f}× the goal)"

    rtf = {name: 1 / (r["frames_per_s"] * FRAME_SECONDS) for name, r in results.items()}
    best = min(rtf, key=rtf.get)
    lines = ["Goals (batch 1, real architecture):", "",
             f"- RTF ≤ {GOAL_RTF}: best path {best} at {rtf[best]:.3f}, {verdict(rtf[best], GOAL_RTF)}."]
    if codec:
        first = {name: r["later_audio_frames_s"] + codec["first_audio_decode_again_s"]
                 for name, r in results.items() if r["later_audio_frames_s"] is not None}
        if first:
            fastest = min(first, key=first.get)
            lines.append(f"- first audio ≤ {GOAL_FIRST_AUDIO_S} s (a warmed model: a later request, or the first after "
                         f"`FishS2.warm_up`): best path {fastest} at {first[fastest]:.3f} s, "
                         f"{verdict(first[fastest], GOAL_FIRST_AUDIO_S)}.")
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=DTYPES, default=None, help="default: fp32 on the CPU, bf16 on GPUs")
    parser.add_argument("--real", action="store_true", help="the real architecture instead of the mid-size model")
    parser.add_argument("--config", type=Path, default=REAL_CONFIG, help="config.json that --real builds")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="mid", help="the mid-size model (without --real)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--prompt", type=int, default=100, help="prompt positions of the decode runs")
    parser.add_argument("--frames", type=int, default=32, help="frames per decode run")
    parser.add_argument("--runs", type=int, default=2, help="decode runs per path (the fastest is reported)")
    parser.add_argument("--contexts", default="100,1000,2000,4000,8000")
    parser.add_argument("--context-frames", type=int, default=8)
    parser.add_argument("--first-audio", type=int, default=4, help="frames decoded by the codec for first audio")
    parser.add_argument("--codec-frames", type=int, default=32)
    parser.add_argument("--no-codec", action="store_true")
    parser.add_argument("--no-int8", action="store_true", help="skip the quantised paths (int8 and fp8)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the blocks of every model (all paths)")
    parser.add_argument("--paths", default="fishs2,official,static,int8,fp8",
                        help="decode paths to run, of fishs2, official, static (the CUDA graph on CUDA), int8, fp8 "
                             "(GPUs with fp8 matmuls only); the context sweep needs fishs2 and official")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "fishs2-bench")
    parser.add_argument("--write", type=Path, help="also write the report (markdown) to this file")
    parser.add_argument("--no-switches", action="store_true",
                        help="skip re-capturing the step halves without each switchable CUDA optimisation (compiled "
                             "blocks recompile for most switches: minutes on the real architecture)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype] if args.dtype else (torch.float32 if device.type == "cpu" else torch.bfloat16)
    dtype_name = {v: k for k, v in DTYPES.items()}[dtype]
    model = real_model(dtype, device, args.config) if args.real else mid_model(dtype, device, args.cache, args.shape)
    if args.compile:
        # The bf16 and int8 models' blocks share their code: dynamo counts their variants together (one model makes
        # 5), and past its default limit of 8 the second model would silently run uncompiled.
        torch._dynamo.config.recompile_limit = 32
        model.compile_blocks()
    cfg = model.config
    params = sum(p.numel() for p in model.parameters())
    prompt = random_prompt(cfg, args.prompt)
    peak_gbs, peak_source = peak_bandwidth(device)
    title = ("real architecture" if args.config == REAL_CONFIG else str(args.config)) if args.real else f"mid-size model ({args.shape})"
    lines = [f"# fishs2 bench — {title}, {dtype_name}, {device.type}", "",
             f"- machine: {machine(device, args.threads)}",
             f"- model: {params / 1e6:.1f} M parameters (slow dim {cfg.slow.dim} × {cfg.slow.n_layer} layers, fast "
             f"{cfg.fast.n_layer} layers, {cfg.slow.n_head}/{cfg.slow.n_local_heads} heads × {cfg.slow.head_dim}, "
             f"FFN {cfg.slow.intermediate_size}, vocab {cfg.vocab_size}, codebook {cfg.codebook_size}, "
             f"max_seq_len {cfg.max_seq_len}), random weights"
             + (", blocks compiled (torch.compile)" if args.compile else ""),
             f"- decode runs: prompt {args.prompt} positions, {args.frames} frames, sampling T={PARAMS.temperature} "
             f"top_p={PARAMS.top_p} top_k={PARAMS.top_k}, stop disabled; fastest of {args.runs} interleaved runs",
             f"- peak memory bandwidth: {peak_gbs:.0f} GB/s ({peak_source})",
             f"- command: `python bench/run.py {' '.join(sys.argv[1:])}`", ""]
    print("\n".join(lines), flush=True)

    chosen = set(args.paths.split(","))
    if unknown := chosen - {"fishs2", "official", "static", "int8", "fp8"}:
        parser.error(f"--paths: unknown {sorted(unknown)}")
    paths = {}
    if "fishs2" in chosen:
        paths["fishs2"] = (model, {})
    if "official" in chosen:
        paths["official formulation"] = (model, {"mode": AttentionMode.official(), "check_every": 1})
    if "static" in chosen and device.type == "cuda":
        paths["fishs2 + CUDA graph"] = (model, {"cuda_graph": True})
    elif "static" in chosen:
        paths["fishs2 static step (CUDA-graph code, eager)"] = (model, {"static": True})
    quantized = {}  # scheme → model, each built from the same seeded weights as `model`
    schemes = [q for q in ("int8", "fp8") if q in chosen and not args.no_int8]
    if "fp8" in schemes and not fp8_supported(device):
        print(f"fp8 path skipped: {device} has no fp8 matmuls", flush=True)
        schemes.remove("fp8")
    failed = {}  # path → error: a path that breaks (a kernel that does not build on this GPU) leaves the others be
    for scheme in schemes:
        quantize = quantize_int8 if scheme == "int8" else quantize_fp8_model
        try:
            quantized[scheme] = quantize(real_model(dtype, device, args.config) if args.real
                                         else mid_model(dtype, device, args.cache, args.shape))
        except Exception as error:  # noqa: BLE001 — reported in the results, with its traceback in the log
            failed[f"fishs2 {scheme}"] = reported(error)
            continue
        if args.compile:
            quantized[scheme].compile_blocks()
        paths[f"fishs2 {scheme}"] = (quantized[scheme], {"cuda_graph": True} if device.type == "cuda" else {})
    runs, broken = interleaved_runs({name: functools.partial(decode_run, m, prompt, args.frames, args.first_audio,
                                                             **options) for name, (m, options) in paths.items()},
                                    args.runs)
    failed.update(broken)
    for name in broken:
        del paths[name]
        quantized.pop(name.removeprefix("fishs2 "), None)
    results = {name: best_of(r) for name, r in runs.items()}
    halves = {name: step_halves(m.static_decoder) for name, (m, options) in paths.items()
              if (options.get("static") or options.get("cuda_graph")) and m.static_decoder is not None}
    # each CUDA optimisation that can be switched off, against the graphs captured without it
    switches = {"programmatic dependent launch": lambda: matvec.dependent_launch(False),
                "the decode-attention kernels": lambda: decode_attention.kernel_enabled(False),
                "the decode-heads kernel": lambda: decode_attention.heads_kernel_enabled(False)}
    if not dependent_launch_in_use(device):
        del switches["programmatic dependent launch"]
    without = {name: {what: halves_without(paths[name][0].static_decoder, switch())
                      for what, switch in switches.items()}
               for name in halves if device.type == "cuda" and not args.no_switches}
    contexts = [int(c) for c in args.contexts.split(",")]
    sweep = {}
    if {"fishs2", "official"} <= chosen:
        sweep = context_sweep(model, contexts, args.context_frames,
                              {"fishs2": AttentionMode(), "official formulation": AttentionMode.official()})
    for context in contexts if sweep else []:
        print(f"context {context}: " + ", ".join(f"{n} {1000 * s[context]:.1f} ms" for n, s in sweep.items()),
              flush=True)
    # The codec runs last: its large buffers stay in the process heap and would make later allocations cheaper.
    codec = None if args.no_codec else codec_decode(device, args.codec_frames, args.first_audio)
    base = results["official formulation"]["frames_per_s"] if "official formulation" in results else None
    lines += ["## Decode", "",
              "| path | frames/s | ms/frame | RTF | vs official | time to first frame | time to first audio: first "
              "request / later requests | weights read/frame | achieved bandwidth | peak "
              + ("device memory" if device.type == "cuda" else "RSS")
              + " (growth during the run) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        m, options = paths[name]
        per_frame = weight_bytes_per_frame(m, options.get("mode", AttentionMode()).full_head)
        bandwidth = per_frame * r["frames_per_s"] / 1e9
        first_audio = "—"
        if codec:
            later = r["later_audio_frames_s"]
            first_audio = (f"{r['first_request_audio_frames_s'] + codec['first_audio_decode_s']:.3f} s / "
                           + (f"{later + codec['first_audio_decode_again_s']:.3f} s" if later is not None else "—"))
        ratio = f"{r['frames_per_s'] / base:.2f}×" if base else "—"
        lines.append(
            f"| {name} | {r['frames_per_s']:.2f} | {1000 / r['frames_per_s']:.1f} | "
            f"{1 / (r['frames_per_s'] * FRAME_SECONDS):.3f} | {ratio} | "
            f"{r['first_frame_s']:.3f} s | {first_audio} | {per_frame / 2**20:.0f} MiB | {bandwidth:.1f} GB/s "
            f"({100 * bandwidth / peak_gbs:.0f}% of peak) | {r['peak_bytes'] / 2**20:.0f} MiB "
            f"(+{r['growth_bytes'] / 2**20:.0f} MiB) |")
    lines += [f"| {name} | failed: {error} | | | | | | | | |" for name, error in failed.items()]
    lines += ["", "Peak memory is the whole process's (it holds the model and its int8 copy); the growth is what the "
              "run itself added (KV cache, activations, the official path's expanded K/V) beyond memory the heap "
              "already held.",
              "", f"RTF = compute time / audio time (1 frame = 2048/44100 s). Time to first audio = time to frame "
              f"{args.first_audio} + codec decode of those frames, for the model's first request (which captures the "
              "CUDA graph on the graph paths and decodes that chunk length for the first time) and the fastest later "
              "one (which replays the graph and decodes a length seen before). Run-to-run spread of "
              "frames/s: "
              + ", ".join(f"{n} {100 * r['spread']:.0f}%" for n, r in results.items()) + ".", ""]
    if halves:
        lines += ["Where a static step's time goes (mean of 20 calls of each half, "
                  + ("CUDA graph replays" if device.type == "cuda" else "run eagerly") + "):", ""]
        lines += [f"- {name}: slow AR {1000 * slow:.2f} ms, fast AR + sampling {1000 * fast:.2f} ms per frame"
                  + "".join(f"; captured without {what}: {1000 * a:.2f} ms + {1000 * b:.2f} ms"
                            for what, (a, b) in without.get(name, {}).items())
                  for name, (slow, fast) in halves.items()] + [""]
    if args.real and device.type == "cuda":
        lines += goals(results, codec)
    if codec:
        lines += [f"Codec decode (real architecture, random weights, fp32, `decode_chunked`): "
                  f"{codec['frames_per_s']:.1f} frames/s = {codec['frames_per_s'] * FRAME_SECONDS:.2f}× real time; "
                  f"first {args.first_audio} frames via `decode_stream` in {codec['first_audio_decode_s']:.3f} s "
                  f"the first time, {codec['first_audio_decode_again_s']:.3f} s again.", ""]
    for scheme, quantized_model in quantized.items():
        error, agreement = teacher_forced_error(model, quantized_model, random_prompt(cfg, 256))
        lines += [f"{scheme} error on this model (256 teacher-forced positions): slow logits relative L2 error "
                  f"{100 * error:.1f}%, greedy semantic token unchanged at {100 * agreement:.0f}% of positions.", ""]

    if sweep:
        lines += ["## Per-frame time against context length", "",
                  f"Fastest of {args.context_frames} decode frames with the cache already holding that many positions "
                  "(random keys/values instead of a prefill); the frames of all columns are interleaved.", "",
                  "| context positions | " + " | ".join(str(c) for c in contexts) + " | max/min |",
                  "|---|" + "---:|" * (len(contexts) + 1)]
        for name, times in sweep.items():
            values = list(times.values())
            lines.append(f"| {name} (ms/frame) | " + " | ".join(f"{1000 * t:.1f}" for t in values)
                         + f" | {max(values) / min(values):.2f} |")
        ratios = [sweep["official formulation"][c] / sweep["fishs2"][c] for c in contexts]
        read = [weight_bytes_per_frame(model) + kv_cache_bytes(cfg, c, dtype=dtype) for c in contexts]
        lines += ["| official / fishs2 | " + " | ".join(f"{r:.1f}×" for r in ratios) + " | |",
                  "| bytes fishs2 must read per frame (weights + KV), MiB | " + " | ".join(f"{b / 2**20:.0f}" for b in read)
                  + f" | {max(read) / min(read):.2f} |", "",
                  "The last row is the memory-bound floor: a decode step reads every weight and the filled part of the KV "
                  "cache, so per-frame time can only stay flat while the KV bytes stay small next to the weights. "
                  + real_floor(contexts), ""]

    lines += ["## KV cache allocated per request", "",
              "fishs2 sizes the cache to the request: bytes = 2 · n_layer · n_local_heads · head_dim · (prompt + max "
              "frames) · bytes/element + the fast AR's 10-slot cache; the official formulation always allocates "
              f"max_seq_len = {cfg.max_seq_len} positions.", "",
              "| prompt + frames | fishs2 allocated | formula | official formulation |", "|---|---:|---:|---:|"]
    for prompt_len, frames in ((100, 400), (1000, 1000), (4000, 4000)):
        ours = kv_bytes_allocated(model, prompt_len, frames, AttentionMode())
        official = kv_bytes_allocated(model, prompt_len, frames, AttentionMode.official())
        formula = kv_cache_bytes(cfg, prompt_len + frames, dtype=dtype)
        lines.append(f"| {prompt_len} + {frames} | {ours / 2**20:.1f} MiB | {formula / 2**20:.1f} MiB | "
                     f"{official / 2**20:.1f} MiB |")
    real = ModelConfig.from_dict((lambda raw: raw.get("config", raw))(json.loads(REAL_CONFIG.read_text())))
    lines += ["", "## Memory estimate, real architecture (`fishs2.memory.estimate_memory`)", "",
              "| weights | positions (prompt) | weights | KV cache | activations | codec (fp32) | LLM total | total |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for int8 in (False, True):
        for positions, prompt_len in ((4096, 1024), (8192, 2048), (32768, 2048)):
            e = estimate_memory(real, positions, prompt=prompt_len, dtype=torch.bfloat16, int8=int8)
            lines.append(f"| {'int8' if int8 else 'bf16'} | {positions} ({prompt_len}) | {e.weights / GIB:.2f} GiB | "
                         f"{e.kv_cache / GIB:.2f} GiB | {e.activations / GIB:.2f} GiB | "
                         f"{(e.codec_weights + e.codec_activations) / GIB:.2f} GiB | {e.llm / GIB:.2f} GiB | "
                         f"{e.total / GIB:.2f} GiB |")
    report = "\n".join(lines) + "\n"
    print("\n" + report)
    if args.write:
        args.write.write_text(report)


if __name__ == "__main__":
    main()
