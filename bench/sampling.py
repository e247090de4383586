"""A frame's main-token and RAS draws over the real vocabulary (155 776 ids, 4097 of them allowed, as the biased
logits of a decode step): the vocabulary sorted once per draw against once per frame (`sampling.rank`), timed in
the same process.

    python bench/sampling.py [--device cuda] [--rounds 20]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fishs2.sampling import RAS_TEMPERATURE, RAS_TOP_P, make_generators, rank, sample  # noqa: E402

VOCAB, ALLOWED, FIRST_SEMANTIC = 155776, 4097, 151678


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    device = torch.device(args.device)
    for dtype in (torch.float32, torch.bfloat16):
        logits = torch.full((1, VOCAB), float("-inf"), dtype=dtype, device=device)
        logits[:, FIRST_SEMANTIC:FIRST_SEMANTIC + ALLOWED] = torch.randn(1, ALLOWED, device=device).to(dtype)
        generators = make_generators([0], device)

        def per_draw():
            sample(logits, 0.8, 0.8, 30, generators)
            sample(logits, RAS_TEMPERATURE, RAS_TOP_P, 30, generators)

        def per_frame():
            ranked = rank(logits)
            sample(logits, 0.8, 0.8, 30, generators, ranked=ranked)
            sample(logits, RAS_TEMPERATURE, RAS_TOP_P, 30, generators, ranked=ranked)

        best = {}
        for _ in range(args.rounds):  # interleaved; the fastest round of each is kept
            for name, draw in (("sorted per draw", per_draw), ("sorted once per frame", per_frame)):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                draw()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)
        ratio = best["sorted per draw"] / best["sorted once per frame"]
        print(f"{device.type} {str(dtype).removeprefix('torch.')}: "
              + ", ".join(f"{name} {1000 * t:.2f} ms" for name, t in best.items()) + f" → {ratio:.2f}×")


if __name__ == "__main__":
    main()
