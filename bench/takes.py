"""Benchmark (not a test): N takes in one batched run vs N sequential single runs, on a small synthetic
checkpoint on the CPU.

    python bench/takes.py [--takes 4] [--frames 24] [--repeats 3] [--threads N]

Writes a random checkpoint in the official layout (`fishs2.synthetic.write_checkpoint`, a mid-size `Sizes`, the
tiny test codec) into a temporary folder, checks that the batched takes equal the single runs, then times both
(`--repeats` interleaved rounds, best time of each side) and prints the ratio sequential / batched (> 1 means
batching is faster) and each round's ratio. The random model rarely emits <|im_end|>, so every take runs to
`--frames`: both sides do the same number of frames.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from fishs2.pipeline import FishS2  # noqa: E402
from fishs2.synthetic import Sizes, write_checkpoint  # noqa: E402

CODEC = REPO / "tests" / "fixtures" / "golden" / "tiny_codec"
SIZES = Sizes(dim=384, n_layer=6, n_head=6, n_local_heads=2, head_dim=64, intermediate_size=1024, n_fast_layer=2,
              codebook_size=64, num_codebooks=10, max_seq_len=2048)
TEXT = "<|speaker:0|>Good morning, and welcome to the show.<|speaker:0|>Today we talk about speech synthesis."


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--takes", type=int, default=4)
    parser.add_argument("--frames", type=int, default=24, help="max_frames per segment")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        directory = write_checkpoint(Path(tmp) / "bench", CODEC, SIZES, seed=1)
        tts = FishS2.from_pretrained(directory, device="cpu", dtype="fp32")
        params = sum(p.numel() for p in tts.model.parameters())
        options = dict(max_frames=args.frames, chunk_length=1)
        seed = 1000

        def batched():
            return tts.generate_takes(TEXT, seed=seed, takes=args.takes, **options)

        def sequential():
            return [tts.generate(TEXT, seed=seed + i, **options) for i in range(args.takes)]

        tts.generate(TEXT, seed=0, **options)  # warm-up (allocator, kernels)
        # Interleaved repeats, so both sides see the same load on a shared machine.
        rounds = []
        for _ in range(args.repeats):
            t_b, takes = timed(batched)
            t_s, singles = timed(sequential)
            rounds.append((t_b, t_s))
        same = all(torch.equal(a.codes, b.codes) for a, b in zip(takes, singles))
        frames = sum(t.num_frames for t in takes)
    t_batched = min(r[0] for r in rounds)
    t_sequential = min(r[1] for r in rounds)
    ratios = sorted(s / b for b, s in rounds)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s), torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s); load average {os.getloadavg()[0]:.2f} (shared machine: timings vary)")
    print(f"model: {params / 1e6:.1f} M parameters (dim {SIZES.dim}, {SIZES.n_layer}+{SIZES.n_fast_layer} layers), "
          f"fp32 CPU; text: 2 turns, chunk_length=1, max_frames={args.frames}")
    print(f"takes = single runs: {same}; frames generated per side: {frames}")
    print(f"{args.takes} takes batched:       {t_batched:8.3f} s  ({frames / t_batched:6.1f} frames/s)")
    print(f"{args.takes} sequential runs:     {t_sequential:8.3f} s  ({frames / t_sequential:6.1f} frames/s)")
    print(f"per round (sequential / batched): {', '.join(f'{r:.2f}x' for r in ratios)}")
    print(f"ratio sequential / batched (best times): {t_sequential / t_batched:.2f}x")
    if not same:
        raise SystemExit("batched takes differ from single runs")


if __name__ == "__main__":
    main()
