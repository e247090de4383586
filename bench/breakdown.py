"""Where a decode frame's GPU time goes: the real architecture (random weights) on CUDA, a few frames of the static
step run eagerly under torch.profiler, the kernels that take the most device time, then the same step replayed as
a CUDA graph, timed with CUDA events and profiled again (the kernels inside the replays: what the decode runs).

    python bench/breakdown.py [--dtype bf16] [--int8] [--compile] [--no-eager] [--context 500] [--frames 16]

On a CPU (`--device cpu`, with a smaller `--config`) it profiles the eager step only. Each timed call also draws
the frame's uniforms (11 small kernels per sequence, outside the graph), as a real decode does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.run import (  # noqa: E402
    DTYPES, NO_STOP, PARAMS, REAL_CONFIG, random_prompt, real_model, sync, weight_bytes_per_frame,
)
from fishs2.generate import StaticDecoder, prefill  # noqa: E402
from fishs2.quantize import quantize_int8  # noqa: E402
from fishs2.sampling import make_generators  # noqa: E402


def decoder(model, context: int, capacity: int, cuda_graph: bool) -> StaticDecoder:
    """A static decoder (its own, not the model's kept one) with `context` random prompt positions prefilled."""
    static = StaticDecoder(model, 1, capacity, NO_STOP)
    state = static.begin(None)
    gens = make_generators([3], model.device)
    prompt = random_prompt(model.config, context)[None].to(model.device)
    logits, hidden = prefill(model, prompt, state)
    static.start(PARAMS, gens, cuda_graph)
    static.first_frame(logits, hidden)
    return static


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", choices=DTYPES, default="bf16")
    parser.add_argument("--int8", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the blocks (inside the graph)")
    parser.add_argument("--no-eager", action="store_true", help="profile the graph replays only")
    parser.add_argument("--context", type=int, default=500, help="positions in the cache before the profiled frames")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--config", type=Path, default=REAL_CONFIG)
    args = parser.parse_args()
    device = torch.device(args.device)
    model = real_model(DTYPES[args.dtype], device, args.config)
    if args.int8:
        model = quantize_int8(model)
    if args.compile:
        model.compile_blocks()
    capacity = args.context + 4 * args.frames + 64
    weights = weight_bytes_per_frame(model)

    with torch.inference_mode():
        if not args.no_eager:
            eager = decoder(model, args.context, capacity, cuda_graph=False)
            for _ in range(3):
                eager()
            sync(device)
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]
                                        + ([torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])) as prof:
                for _ in range(args.frames):
                    eager()
                sync(device)
            print(prof.key_averages().table(sort_by="cuda_time_total" if device.type == "cuda" else "cpu_time_total", row_limit=args.rows))
            events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
            kernel_us = sum(e.device_time for e in events) / args.frames
            print(f"kernels per frame: {len(events) / args.frames:.0f}, summed kernel time per frame: "
                  f"{kernel_us / 1000:.2f} ms")
            if device.type != "cuda":
                return
            del eager

        graphed = decoder(model, args.context, capacity, cuda_graph=True)
        for _ in range(3):  # the first call captures
            graphed()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(args.frames):
            graphed()
        end.record()
        torch.cuda.synchronize()
        ms = start.elapsed_time(end) / args.frames
        floor = weights / (3350e9) * 1000
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(args.frames):
                graphed()
            sync(device)
        events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows))
        print(f"graph replays: kernels per frame {len(events) / args.frames:.0f}, summed kernel time per frame "
              f"{sum(e.device_time for e in events) / args.frames / 1000:.2f} ms")
        print(f"CUDA graph replay: {ms:.2f} ms/frame ({1000 / ms:.0f} frames/s, RTF {ms / 1000 / (2048 / 44100):.3f}); "
              f"weights read per frame {weights / 2**30:.2f} GiB → {weights * 1000 / ms / 1e9:.0f} GB/s; "
              f"floor at 3350 GB/s: {floor:.2f} ms/frame")


if __name__ == "__main__":
    main()
