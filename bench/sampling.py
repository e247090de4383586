"""A frame's main-token and RAS draws over the real vocabulary (155 776 ids, 4097 of them allowed, as the logits of
a decode step), timed in the same process: the official formulation (the vocabulary sorted for each draw, the
top-p/top-k cut as five kernels, the temperature clamped at each draw) against fishs2's (`sampling.rank` once per
frame, the cut as one comparison with `cut_thresholds`, the temperature clamped once per request), over the whole
vocabulary and, as the decode step draws, over the 4097 allowed ids only (`generate.sample_frame`). All give the
same tokens (tests/test_sampling.py). Those are eager wall times, launches included. On CUDA it then times the
draws as the decode step runs them, inside a CUDA graph where launches cost nothing: the main + RAS pair over the
allowed ids (`sampling.sample_main`) and one fast-AR codebook draw (4096 codes), and a frame's 2 + 9 draws.
(Stop 15's sampling kernel was faster than the ops eagerly and slower in the graph.)

    python bench/sampling.py [--device cuda] [--rounds 20]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fishs2.sampling import (  # noqa: E402
    RAS_TEMPERATURE, RAS_TOP_P, DeviceSampling, clamp_temperature, cut_thresholds, draw_uniforms, make_generators,
    rank, sample, sample_main,
)

VOCAB, ALLOWED, FIRST_SEMANTIC = 155776, 4097, 151678
CODEBOOK, CODE_DRAWS = 4096, 9  # the fast AR draws codebooks 1 … 9 of a frame; codebook 0 is the semantic token's
TEMPERATURE, TOP_P, TOP_K = 0.8, 0.8, 30


def official_sample(logits: torch.Tensor, temperature: float, top_p: float, top_k: int,
                    generators: list[torch.Generator]) -> torch.Tensor:
    """The official sampling primitive as the spec states it (§6.2): sort, cut, temper, exponential race."""
    sorted_logits, sorted_ids = torch.sort(logits, dim=-1, descending=True)
    cumulative = torch.cumsum(torch.softmax(sorted_logits, dim=-1), dim=-1)
    remove = cumulative > torch.as_tensor(top_p, dtype=logits.dtype, device=logits.device)
    remove[:, top_k:] = True
    remove[:, 0] = False
    remove = remove.scatter(-1, sorted_ids, remove)
    logits = logits.masked_fill(remove, float("-inf"))
    logits = logits / torch.clamp(torch.as_tensor(temperature, dtype=logits.dtype, device=logits.device), min=1e-5)
    probs = torch.softmax(logits, dim=-1)
    uniforms = torch.stack([torch.rand(probs.shape[-1], generator=g, dtype=probs.dtype, device=probs.device)
                            for g in generators])
    return torch.argmax(probs / -torch.log(uniforms), dim=-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    device = torch.device(args.device)
    for dtype in (torch.float32, torch.bfloat16):
        logits = torch.full((1, VOCAB), float("-inf"), dtype=dtype, device=device)
        ids = torch.arange(FIRST_SEMANTIC, FIRST_SEMANTIC + ALLOWED, device=device)
        logits[:, ids] = torch.randn(1, ALLOWED, device=device).to(dtype)
        generators = make_generators([0], device)
        # per request, as `DeviceSampling` holds them
        temperature, ras_temperature = (clamp_temperature(t, dtype, device) for t in (TEMPERATURE, RAS_TEMPERATURE))
        cut, ras_cut = (cut_thresholds(VOCAB, p, TOP_K, dtype, device) for p in (TOP_P, RAS_TOP_P))

        def official():
            official_sample(logits, TEMPERATURE, TOP_P, TOP_K, generators)
            official_sample(logits, RAS_TEMPERATURE, RAS_TOP_P, TOP_K, generators)

        def fishs2():
            ranked = rank(logits)
            sample(logits, temperature, cut, generators, ranked=ranked)
            sample(logits, ras_temperature, ras_cut, generators, ranked=ranked)

        def allowed():  # both draws' full-width uniforms, then everything over the allowed ids
            uniforms = [draw_uniforms(generators, VOCAB, dtype, device).index_select(-1, ids) for _ in range(2)]
            rows = logits.index_select(-1, ids)
            ranked = rank(rows)
            ids[sample(rows, temperature, cut[:ALLOWED], None, uniforms[0], ranked)]
            ids[sample(rows, ras_temperature, ras_cut[:ALLOWED], None, uniforms[1], ranked)]

        draws = [("official", official), ("fishs2", fishs2), ("fishs2 allowed ids", allowed)]
        best = {}
        race(draws, best, args.rounds, device)
        print(f"{device.type} {str(dtype).removeprefix('torch.')}, main + RAS draw: "
              + ", ".join(f"{name} {1000 * t:.2f} ms ({best['official'] / t:.2f}×)" for name, t in best.items()))
        if device.type == "cuda":
            held = DeviceSampling(temperature, ras_temperature, cut, ras_cut, cut[:CODEBOOK])
            uniforms = [draw_uniforms(generators, VOCAB, dtype, device) for _ in range(2)]
            codes = torch.randn(1, CODEBOOK, device=device).to(dtype)
            code_uniforms = draw_uniforms(generators, CODEBOOK, dtype, device)
            pair = in_graph(lambda: sample_main(logits, held, uniforms, ids))
            code = in_graph(lambda: sample(codes, temperature, held.code_cut, None, code_uniforms))
            print(f"cuda {str(dtype).removeprefix('torch.')}, in a CUDA graph: main + RAS draws over the allowed ids "
                  f"{1e6 * pair:.1f} µs, one codebook draw ({CODEBOOK}) {1e6 * code:.1f} µs; a frame's 2 + "
                  f"{CODE_DRAWS} draws {1000 * (pair + CODE_DRAWS * code):.3f} ms")


def in_graph(draw, repeats: int = 50) -> float:
    """Seconds per call of `draw` replayed from a CUDA graph that holds `repeats` calls (the fastest of 5 replays)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up outside the capture: lazy initialisation, workspace allocation
        for _ in range(3):
            draw()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(repeats):
            draw()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = float("inf")
    for _ in range(5):
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) / 1000 / repeats)
    return best


def race(draws, best: dict, rounds: int, device: torch.device) -> None:
    """Time each draw `rounds` times, interleaved; keep the fastest round of each in `best`."""
    for _ in range(rounds):
        for name, draw in draws:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            draw()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)


if __name__ == "__main__":
    main()
