"""The decode step's matrix × vector products at the real architecture's shapes, one matrix at a time: bf16
`F.linear` (cuBLAS on CUDA) against the int8 layer (`Int8Linear`: the Triton kernel on CUDA, `_weight_int8pack_mm` on
the CPU), the dequantising GEMM the int8 layer replaced on CUDA, and on CUDA the same Triton kernel reading the bf16
weights (what bf16 models' decode rows use since it beat cuBLAS here), timed in the same process, with the bandwidth
each achieves.

    python bench/matvec.py [--device cuda] [--rows 1] [--rounds 50]

A decode frame is memory-bound, so bytes read / time is the figure of merit: the weights, once (bf16 2 bytes per
weight, int8 1 byte + a scale per row). On CUDA each figure is a CUDA-graph replay of 10 calls, as in the decode step;
the int8 kernel's tuned block sizes are printed after the table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fishs2.matvec import gemm  # noqa: E402
from fishs2.quantize import Int8Linear, quantize_rows  # noqa: E402

# (name, out, in) of the real architecture; a frame runs the slow ones once and the fast ones ten times (decode
# reads the output head's rows of the 4097 ids a frame can take; the whole head is prefill's).
MATRICES = (("wqkv", 6144, 2560), ("wo", 2560, 4096), ("w13 (w1 + w3)", 19456, 2560), ("w2", 2560, 9728),
            ("output head", 155776, 2560), ("output head, decode rows", 4097, 2560), ("fast codebook head", 4096, 2560))


def timed(calls: list, device: torch.device, rounds: int) -> float:
    """Median seconds per call over `rounds` runs of `calls`, each a product with its own copy of the matrix (so the
    L2 cache does not serve a matrix that a real step would read from memory). On CUDA the run is captured once as a
    CUDA graph and replayed, as the decode step runs it: launched eagerly, a call of a few microseconds measures the
    host's launch rate (Triton's launcher alone takes tens of µs), not the kernel."""
    for call in calls:
        call()  # autotunes (Triton) and loads kernels, outside any capture
    if device.type == "cuda":
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for call in calls:
                call()
        graph.replay()
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(rounds):
        if device.type == "cuda":
            begin.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end) / 1000 / len(calls))
            continue
        start = time.perf_counter()
        for call in calls:
            call()
        times.append((time.perf_counter() - start) / len(calls))
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rows", type=int, default=1, help="activation rows (takes decoded together), 1 … 4")
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{name}, torch {torch.__version__}, {args.rows} row(s), bf16 activations; µs per call and GB/s of weights")
    print("| matrix | bf16 F.linear | int8 layer | int8 dequantise + GEMM | bf16, Triton kernel | int8 layer vs bf16 |")
    print("|---|---:|---:|---:|---:|---:|")
    gen = torch.Generator(device=device).manual_seed(0)
    for label, n, k in MATRICES:
        # Enough copies that they overflow the L2 cache (50 MB on an H100) several times, and at least 10 calls.
        copies = max(10, -(-256 * 2**20 // (2 * n * k))) if device.type == "cuda" else 4
        weights = [torch.randn(n, k, device=device, dtype=dtype, generator=gen) / k**0.5 for _ in range(copies)]
        layers = [Int8Linear(*quantize_rows(w)) for w in weights]
        x = torch.randn(args.rows, k, device=device, dtype=dtype, generator=gen)
        with torch.inference_mode():
            paths = {"bf16": ([lambda w=w: F.linear(x, w) for w in weights], 2 * n * k),
                     "int8": ([lambda q=q: q(x) for q in layers], n * k + 2 * n)}
            if device.type == "cuda":
                from fishs2.matvec_kernel import matvec

                paths["dequant"] = ([lambda q=q: gemm(x, q.weight, q.scales) for q in layers], n * k + 2 * n)
                paths["bf16 triton"] = ([lambda w=w: matvec(x, w) for w in weights], 2 * n * k)
            seconds = {path: timed(calls, device, args.rounds) for path, (calls, _) in paths.items()}
        del weights, layers
        cells = [f"{1e6 * seconds[p]:.1f} µs, {paths[p][1] / seconds[p] / 1e9:.0f} GB/s" if p in seconds else "—"
                 for p in ("bf16", "int8", "dequant", "bf16 triton")]
        print(f"| {label} ({n}×{k}) | " + " | ".join(cells) + f" | {seconds['bf16'] / seconds['int8']:.2f}× |",
              flush=True)
    if device.type == "cuda":
        fused_block_table(device, dtype, args.rows, args.rounds)
        dependent_launch_table(device, dtype, args.rows, args.rounds)
        from fishs2 import matvec_kernel

        for key, config in getattr(matvec_kernel._tuned, "cache", {}).items():
            print(f"kernel tuned for {key}: {config}")
    else:
        print("\n(the fused block calls need CUDA: skipped)")


def fused_block_table(device: torch.device, dtype: torch.dtype, rows: int, rounds: int, dim: int = 2560,
                      ffn: int = 9728, heads: int = 4096, qkv: int = 6144) -> None:
    """A decode block's four matvec calls with the block's work inside them (`TransformerBlock.fused_forward`)
    against the same kernel's plain calls followed by PyTorch's ops for that work (the unfused block), each in a
    CUDA graph over copies that overflow L2; the last line is the sum for one block and for a frame's 76."""
    from fishs2.matvec_kernel import matvec

    gen = torch.Generator(device=device).manual_seed(1)
    x, h = (torch.randn(rows, dim, device=device, dtype=dtype, generator=gen) for _ in range(2))
    attended = torch.randn(rows, heads, device=device, dtype=dtype, generator=gen)
    gain = torch.rand(dim, device=device, dtype=dtype, generator=gen) + 0.5

    def norm(v):
        return F.rms_norm(v, (dim,), eps=1e-6) * gain

    def swiglu(v):
        gate, up = v.chunk(2, dim=-1)
        return F.silu(gate) * up

    # (label, out, in, input, unfused(kernel call) → output, fused kernel options)
    calls = (("wqkv after RMSNorm", qkv, dim, x, lambda mm: mm(norm(x)), dict(norm_weight=gain, eps=1e-6)),
             ("wo + residual", dim, heads, attended, lambda mm: h + mm(attended), dict(residual=h)),
             ("w13 after RMSNorm, SwiGLU", 2 * ffn, dim, h, lambda mm: swiglu(mm(norm(h))),
              dict(norm_weight=gain, eps=1e-6, swiglu=True)),
             ("w2 + residual", dim, ffn, torch.randn(rows, ffn, device=device, dtype=dtype, generator=gen),
              None, None))
    print("\nA decode block's calls, µs per call (CUDA graphs): the kernel's plain call + PyTorch's ops for the "
          "block's work, against one fused call")
    print("| call | bf16 unfused | bf16 fused | int8 unfused | int8 fused |")
    print("|---|---:|---:|---:|---:|")
    totals = [0.0] * 4
    for label, n, k, inputs, unfused, options in calls:
        if unfused is None:  # w2 + residual: its input is SwiGLU's output
            unfused, options = (lambda mm, v=inputs: h + mm(v)), dict(residual=h)
        copies = min(64, max(10, -(-256 * 2**20 // (2 * n * k))))
        dense = [torch.randn(n, k, device=device, dtype=dtype, generator=gen) / k**0.5 for _ in range(copies)]
        cells = []
        for weights in (dense, [quantize_rows(w) for w in dense]):
            pairs = [(w, None) if isinstance(w, torch.Tensor) else w for w in weights]
            with torch.inference_mode():
                plain = [lambda w=w, s=s: unfused(lambda v: matvec(v, w, s)) for w, s in pairs]
                fused = [lambda w=w, s=s: matvec(inputs, w, s, **options) for w, s in pairs]
                cells += [timed(plain, device, rounds), timed(fused, device, rounds)]
        del dense
        totals = [t + c for t, c in zip(totals, cells)]
        print(f"| {label} | " + " | ".join(f"{1e6 * c:.1f}" for c in cells) + " |", flush=True)
    print("| one block (76 per frame) | " + " | ".join(f"{1e6 * t:.1f} ({76e3 * t:.2f} ms/frame)" for t in totals)
          + " |", flush=True)


def dependent_launch_table(device: torch.device, dtype: torch.dtype, rows: int, rounds: int, blocks: int = 8,
                           dim: int = 2560, ffn: int = 9728, heads: int = 4096, qkv: int = 6144) -> None:
    """A chain of decode blocks' fused calls (each block's output the next block's input, the attention left out:
    its input is the first `heads` columns of the wqkv output), each block with its own weights, in a CUDA graph:
    µs per block with the kernel launched plainly and as a programmatic dependent (`matvec(..., pdl=True)`), which
    lets each call start while the previous one ends. Skipped where the GPU or Triton cannot."""
    from fishs2.dependent_launch import supported as dependent_launch_supported
    from fishs2.matvec_kernel import matvec

    if not dependent_launch_supported(device):
        print(f"\n(programmatic dependent launch: not on {torch.cuda.get_device_name(device)} with this Triton)")
        return
    gen = torch.Generator(device=device).manual_seed(2)
    gain = torch.rand(dim, device=device, dtype=dtype, generator=gen) + 0.5
    shapes = ((qkv, dim), (dim, heads), (2 * ffn, dim), (dim, ffn))
    dense = [[torch.randn(n, k, device=device, dtype=dtype, generator=gen) / k**0.5 for n, k in shapes]
             for _ in range(blocks)]
    x = torch.randn(rows, dim, device=device, dtype=dtype, generator=gen)
    print(f"\n{blocks} decode blocks chained (four fused calls each, attention left out), µs per block in a CUDA "
          "graph: plain launches against programmatic dependent launch")
    print("| weights | plain | dependent launch | saved per block | saved per frame (76 blocks) |")
    print("|---|---:|---:|---:|---:|")
    for label, layers in (("bf16", [[(w, None) for w in block] for block in dense]),
                          ("int8", [[quantize_rows(w) for w in block] for block in dense])):
        def chain(pdl: bool) -> None:
            h = x
            for (wqkv, sqkv), (wo, so), (w13, s13), (w2, s2) in layers:
                attended = matvec(h, wqkv, sqkv, norm_weight=gain, eps=1e-6, pdl=pdl)[:, :heads]
                h = matvec(attended, wo, so, residual=h, pdl=pdl)
                h = matvec(matvec(h, w13, s13, norm_weight=gain, eps=1e-6, swiglu=True, pdl=pdl), w2, s2,
                           residual=h, pdl=pdl)

        with torch.inference_mode():
            plain, dependent = (timed([lambda p=pdl: chain(p)], device, rounds) / blocks for pdl in (False, True))
        print(f"| {label} | {1e6 * plain:.1f} | {1e6 * dependent:.1f} | {1e6 * (plain - dependent):.1f} | "
              f"{76e3 * (plain - dependent):.2f} ms |", flush=True)


if __name__ == "__main__":
    main()
