"""A decode step's attention heads on CUDA in one Triton kernel per layer: the wqkv projection's row split into heads,
QK-norm (the slow AR's), RoPE on q and k, and k and v written into the layer's KV cache.

PyTorch's ops take about eight kernels per slow layer for this (two RMSNorms, a concatenation, a cast, the complex
product, a cast back, two cache writes) and about five per fast layer; a frame runs 36 slow and 40 fast layers, and
each of these kernels costs a CUDA graph 1–2 µs for a few kilobytes of work. Compiled blocks fuse them into two to
four kernels; they reach this one through the op `fishs2::decode_heads` when the slot is a device tensor (the
static step), which inductor calls on the caches in place (`fishs2.decode_attention`).

One program per sequence and head (q heads, then k heads, then v heads), each rounding where the ops round:
`F.rms_norm` with its weight computes in fp32 and rounds once; the rotation multiplies the rounded head by the fp32
cos/sin table and rounds once. Sums of squares add in another order, and whether a compiler fuses a product into a
multiply-add is its own choice, so the last bit of a value can differ now and then, as between two RMSNorm kernels.

Tests: tests/test_heads_kernel.py (Triton's interpreter, ahead-of-time compiles), tests/test_cuda.py (the GPU).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import dependent_launch
from .dependent_launch import wait_for_previous_kernel

__all__ = ["prepare_heads"]


@triton.jit(do_not_specialize=["slot"])  # one compiled kernel for every slot (Triton would specialise 1, 16·n)
def _heads_kernel(
    qkv_ptr, q_norm_ptr, k_norm_ptr, rotation_ptr, cache_k_ptr, cache_v_ptr, q_ptr, slot_ptr, slot, eps,
    qkv_stride_b, rotation_stride_b, cache_stride_b, cache_stride_h, cache_stride_l,
    H: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr, NORM: tl.constexpr, SLOT_ON_DEVICE: tl.constexpr,
    PDL: tl.constexpr,
):
    # qkv [B, (H + 2·HKV)·D] (a decode step's projection), norm weights [D] (NORM), rotation [B or 1, D/2, 2] fp32,
    # caches [B, HKV, capacity, D], q [B, H, D] out; the cache slot from slot_ptr (SLOT_ON_DEVICE) or `slot`.
    wait_for_previous_kernel(PDL)  # qkv comes from the kernel before
    b = tl.program_id(0)
    head = tl.program_id(1)
    dtype = qkv_ptr.dtype.element_ty
    if SLOT_ON_DEVICE:
        slot = tl.load(slot_ptr)
    row = qkv_ptr + b * qkv_stride_b + head * D
    if head >= H + HKV:  # a v head: into the cache as it is
        dims = tl.arange(0, D)
        cached = cache_v_ptr + b * cache_stride_b + (head - H - HKV) * cache_stride_h + slot * cache_stride_l
        tl.store(cached + dims, tl.load(row + dims))
    else:
        even = 2 * tl.arange(0, D // 2)  # RoPE rotates interleaved pairs (2i, 2i + 1)
        first = tl.load(row + even).to(tl.float32)
        second = tl.load(row + even + 1).to(tl.float32)
        if NORM:
            if head < H:
                norm_ptr = q_norm_ptr
            else:
                norm_ptr = k_norm_ptr
            mean = (tl.sum(first * first, axis=0) + tl.sum(second * second, axis=0)) / D
            inverse_rms = 1.0 / tl.sqrt_rn(mean + eps)
            first = (first * inverse_rms * tl.load(norm_ptr + even).to(tl.float32)).to(dtype).to(tl.float32)
            second = (second * inverse_rms * tl.load(norm_ptr + even + 1).to(tl.float32)).to(dtype).to(tl.float32)
        turn = rotation_ptr + b * rotation_stride_b + even
        cos = tl.load(turn)
        sin = tl.load(turn + 1)
        # the complex product (a + bi)(cos + i·sin) written as PyTorch's complex type writes it, so that the GPU
        # compilers contract the same products into fused multiply-adds
        rotated_first = (first * cos - second * sin).to(dtype)
        rotated_second = (first * sin + second * cos).to(dtype)
        if head < H:
            out = q_ptr + (b * H + head) * D
        else:
            out = cache_k_ptr + b * cache_stride_b + (head - H) * cache_stride_h + slot * cache_stride_l
        tl.store(out + even, rotated_first)
        tl.store(out + even + 1, rotated_second)


def prepare_heads(qkv: torch.Tensor, rotation: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor,
                  slot: int | torch.Tensor, n_head: int, q_norm: torch.Tensor | None = None,
                  k_norm: torch.Tensor | None = None, eps: float = 0.0, pdl: bool = False) -> torch.Tensor:
    """One decode position: qkv [B, 1, (n_head + 2·Hkv)·D] → q [B, n_head, 1, D] after QK-norm (q_norm, k_norm [D],
    if given) and RoPE (`rotation` [1 or B, 1, 1, D/2, 2] fp32, `layers.rope_rotation`); k (normalised, rotated) and
    v written into cache slot `slot` (an int, or a device tensor [1]) of cache_k, cache_v [B, Hkv, capacity, D].
    `pdl`: launched as a programmatic dependent (`fishs2.dependent_launch`)."""
    B, T, width = qkv.shape
    Hkv, D = cache_k.shape[1], cache_k.shape[3]
    if T != 1 or width != (n_head + 2 * Hkv) * D or qkv.stride(2) != 1:
        raise ValueError(f"prepare_heads: qkv must be one position of [B, 1, {(n_head + 2 * Hkv) * D}] with unit "
                         f"stride, got {list(qkv.shape)}")
    if rotation.dtype != torch.float32 or not rotation.is_contiguous() or rotation.shape[-3:] != (1, D // 2, 2):
        raise ValueError(f"prepare_heads: rotation must be contiguous fp32 [1 or B, 1, 1, {D // 2}, 2], got "
                         f"{list(rotation.shape)} {rotation.dtype}")
    q = qkv.new_empty(B, n_head, 1, D)
    on_device = isinstance(slot, torch.Tensor)
    norm = q_norm is not None
    _heads_kernel[(B, n_head + 2 * Hkv)](
        qkv, q_norm if norm else qkv, k_norm if norm else qkv, rotation, cache_k, cache_v, q,
        slot if on_device else qkv, 0 if on_device else slot, eps,
        qkv.stride(0), rotation.stride(0) if rotation.shape[0] > 1 else 0,
        cache_k.stride(0), cache_k.stride(1), cache_k.stride(2),
        H=n_head, HKV=Hkv, D=D, NORM=norm, SLOT_ON_DEVICE=on_device, PDL=pdl, num_warps=1 if D <= 128 else 2,
        **dependent_launch.launch_options(pdl, qkv.device, "prepare_heads"),
    )
    return q
