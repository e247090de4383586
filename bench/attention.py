"""Decode-step attention at the real architecture's shapes (32 query heads over 8 KV heads, head_dim 128, bf16), a
layer at a time: PyTorch's ops against the Triton kernels (`fishs2.attention_kernel`), each in a CUDA graph over 36
layers' caches (so L2 does not serve a cache a real step reads from memory). The slow AR's (`grouped_attention`, with
the bytes of K and V read per layer over the time), then the fast AR's official attention over its 1 … 10 keys
(`manual_attention`).

    python bench/attention.py [--rounds 50]

Contexts: a short request's filled slots (dynamic decode reads those), a static step's whole 1024-slot cache under
a causal mask (what the CUDA graph reads for requests up to 1024 positions), and longer caches.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fishs2 import decode_attention  # noqa: E402
from fishs2.model.layers import grouped_attention, manual_attention  # noqa: E402
from matvec import timed  # noqa: E402

LAYERS = 36  # the slow AR's


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("the decode-attention kernels run on CUDA only: nothing to time here")
        return
    device, dtype = torch.device("cuda"), torch.bfloat16
    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, batch 1, bf16; µs per layer (CUDA graph "
          f"over {LAYERS} layers' caches) and GB/s of K and V read")
    print("| keys attended (cache slots, mask) | PyTorch ops | Triton kernels | kernels vs ops |")
    print("|---|---:|---:|---:|")
    gen = torch.Generator(device=device).manual_seed(0)
    for length, capacity, masked in ((228, 1024, False), (1024, 1024, True), (4096, 4096, True),
                                     (16384, 16384, True)):
        caches = [[torch.randn(1, 8, capacity, 128, device=device, dtype=dtype, generator=gen) for _ in range(2)]
                  for _ in range(LAYERS)]
        q = torch.randn(1, 32, 1, 128, device=device, dtype=dtype, generator=gen)
        mask = (torch.arange(length, device=device) < length - 100)[None, None, None] if masked else None
        with torch.inference_mode():
            ops = [lambda k=k, v=v: grouped_attention(q, k[:, :, :length], v[:, :, :length], mask) for k, v in caches]
            kernels = [lambda k=k, v=v: decode_attention.attend(q, k, v, length, mask) for k, v in caches]
            seconds = [timed(calls, device, args.rounds) for calls in (ops, kernels)]
        read = 2 * 8 * length * 128 * 2  # K and V bytes per layer
        cells = [f"{1e6 * t:.1f} µs, {read / t / 1e9:.0f} GB/s" for t in seconds]
        print(f"| {length} ({capacity}{', masked' if masked else ''}) | {cells[0]} | {cells[1]} | "
              f"{seconds[0] / seconds[1]:.2f}× |", flush=True)
        del caches
    print("\nThe fast AR's attention (`manual_attention`), µs per call")
    print("| keys | PyTorch ops | Triton kernel | kernel vs ops |")
    print("|---|---:|---:|---:|")
    caches = [[torch.randn(1, 8, 10, 128, device=device, dtype=dtype, generator=gen) for _ in range(2)]
              for _ in range(LAYERS)]
    q = torch.randn(1, 32, 1, 128, device=device, dtype=dtype, generator=gen)
    for length in (1, 5, 10):
        with torch.inference_mode():
            ops = [lambda k=k, v=v: manual_attention(q, k[:, :, :length], v[:, :, :length], None) for k, v in caches]
            kernels = [lambda k=k, v=v: decode_attention.attend(q, k, v, length, None, manual=True)
                       for k, v in caches]
            seconds = [timed(calls, device, args.rounds) for calls in (ops, kernels)]
        print(f"| {length} | {1e6 * seconds[0]:.1f} | {1e6 * seconds[1]:.1f} | {seconds[0] / seconds[1]:.2f}× |",
              flush=True)
    if decode_attention._failure:
        print(f"the kernels failed and the second column fell back to the ops: {decode_attention._failure[0]}")


if __name__ == "__main__":
    main()
