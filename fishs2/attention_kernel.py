"""Decode-step attention on CUDA in Triton kernels: one query per sequence over its layer's KV cache, the query heads
of a group meeting their shared key head.

The slow AR (`decode_attention`, what `layers.grouped_attention` computes) in two kernels, split-K ("flash
decoding"). The ops ran about six kernels per layer (the query's scale, K·qᵀ, the mask, the softmax, a copy, P·V),
and cuBLAS's batched GEMMs for these thin shapes took 6.4 µs each on an H200 (bench/GPU-NOTES.md, v3 profile):
about 0.5 ms of a 6 ms frame over 36 layers. A sequence's 8 KV heads alone would leave most of the GPU idle, so the
cache is split into chunks across programs:

- `_partial_kernel`, one program per (sequence × KV head, chunk): the group's scores over the chunk, their maximum m,
  Σ exp(s − m) and the unnormalised Σ exp(s − m) · v; keys the mask hides are never loaded;
- `_combine_kernel`, one program per query head and slice of head dims: the chunks rescaled to the global maximum,
  summed and divided once.

The scaled query and the scores are rounded to the activation dtype where `grouped_attention` rounds them. The
probabilities meet V unnormalised (exp(s − m) of the chunk's running maximum) and rounded to V's dtype, as in flash
attention, since normalising first would need the global maximum before the first product; the denominator sums
those same rounded weights, and the output is rounded once. So the last step of some outputs differs from the ops',
as between two attention backends.

The fast AR (`short_attention`, the official hand-written `layers.manual_attention` over at most 10 keys) in one
kernel, one program per sequence × KV head, rounding where the ops round: the scores, their scale, the softmax (with
the accurate exp and IEEE division of PyTorch's kernel), the output.

Tests: tests/test_attention_kernel.py (Triton's interpreter, ahead-of-time compiles), tests/test_cuda.py (the GPU).
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from . import dependent_launch
from .dependent_launch import wait_for_previous_kernel

__all__ = ["SHORT_KEYS", "decode_attention", "short_attention", "split_chunks"]

BLOCK_L = 32  # keys per step inside a chunk
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"  # Triton's interpreter (the CPU tests)
TARGET_PROGRAMS = 256  # chunks × sequences × KV heads to aim for: about two per SM on an H100
MAX_WANTED_CHUNKS = 64  # per sequence × KV head, so that the combine loads every chunk's partial at once
COMBINE_BLOCK_D = 32  # head dims per combine program
SHORT_KEYS = 64  # the most keys `short_attention` takes (the fast AR attends to at most 10)


@triton.jit
def _dot(a, b, ON_GPU: tl.constexpr):
    """a · b with fp32 accumulation for operands holding bf16/fp16 values: on their own tensor cores, or (Triton's
    interpreter, whose dot misreads bf16) converted to fp32, which holds them exactly — the same products."""
    if ON_GPU:
        return tl.dot(a, b)
    return tl.dot(a.to(tl.float32), b.to(tl.float32))


@triton.jit
def _softmax(s, ON_GPU: tl.constexpr):
    """Softmax over the last axis of fp32 scores [rows, keys] as PyTorch's CUDA kernel computes it: exp(s − max)
    with the accurate expf (libdevice; Triton's own exp is an approximation) over the sum, divided with IEEE
    rounding. Triton's interpreter has neither, and uses numpy's."""
    e = s - tl.max(s, axis=1)[:, None]
    if ON_GPU:
        e = libdevice.exp(e)
        return tl.math.div_rn(e, tl.broadcast_to(tl.sum(e, axis=1)[:, None], e.shape))
    e = tl.exp(e)
    return e / tl.sum(e, axis=1)[:, None]


@triton.jit
def _short_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, scale, L,
    q_stride_b, q_stride_h, k_stride_b, k_stride_h, k_stride_l, out_stride_b, out_stride_h,
    HKV: tl.constexpr, G: tl.constexpr, D: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_L: tl.constexpr,
    ON_GPU: tl.constexpr, PDL: tl.constexpr,
):
    # The official fast AR's attention (`layers.manual_attention`, no mask) over L ≤ BLOCK_L keys, one program per
    # sequence × KV head: q [B, HKV·G, D], k, v [B, HKV, ≥ L, D], out [B, HKV·G, D], each rounding to the activation
    # dtype where the PyTorch ops round — the scores, their scale, the probabilities, the output.
    wait_for_previous_kernel(PDL)  # q and the newest key come from the kernel before
    bh = tl.program_id(0)
    b = bh // HKV
    h = bh % HKV
    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, D)
    keys = tl.arange(0, BLOCK_L)
    dtype = q_ptr.dtype.element_ty
    q = tl.load(q_ptr + b * q_stride_b + (h * G + g)[:, None] * q_stride_h + d[None, :], mask=g[:, None] < G,
                other=0.0)
    kv = b * k_stride_b + h * k_stride_h + keys[:, None] * k_stride_l + d[None, :]
    k = tl.load(k_ptr + kv, mask=keys[:, None] < L, other=0.0)
    s = _dot(q, tl.trans(k), ON_GPU).to(dtype).to(tl.float32)  # the matmul's output
    s = (s * scale).to(dtype).to(tl.float32)  # times 1/√D in the activation dtype
    p = _softmax(tl.where(keys[None, :] < L, s, float("-inf")), ON_GPU).to(dtype)
    v = tl.load(v_ptr + kv, mask=keys[:, None] < L, other=0.0)
    out = _dot(p, v, ON_GPU)
    tl.store(out_ptr + b * out_stride_b + (h * G + g)[:, None] * out_stride_h + d[None, :], out.to(dtype),
             mask=g[:, None] < G)


@triton.jit
def _partial_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, m_ptr, l_ptr, o_ptr, scale,
    L, SPLITS,
    q_stride_b, q_stride_h, k_stride_b, k_stride_h, k_stride_l, mask_stride_b,
    HKV: tl.constexpr, G: tl.constexpr, D: tl.constexpr, HAS_MASK: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_L: tl.constexpr, CHUNK: tl.constexpr, ON_GPU: tl.constexpr, PDL: tl.constexpr,
):
    # q [B, HKV·G, D] (strided); k, v [B, HKV, capacity ≥ L, D] (last dim contiguous, v with k's strides);
    # mask [B or 1, L] bool as int8 (read with HAS_MASK); m, l [B·HKV, SPLITS, G]; o [B·HKV, SPLITS, G, D]. The
    # query heads are padded to BLOCK_G rows for tl.dot; only the G real ones are stored.
    wait_for_previous_kernel(PDL)  # q and the newest key come from the kernel before
    bh = tl.program_id(0)
    chunk = tl.program_id(1)
    b = bh // HKV
    h = bh % HKV
    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, D)
    heads = h * G + g
    q = tl.load(q_ptr + b * q_stride_b + heads[:, None] * q_stride_h + d[None, :], mask=g[:, None] < G, other=0.0)
    q = (q.to(tl.float32) * scale).to(q_ptr.dtype.element_ty)  # `grouped_attention` scales q in its dtype
    kv = b * k_stride_b + h * k_stride_h
    m = tl.full((BLOCK_G,), float("-inf"), dtype=tl.float32)
    total = tl.zeros((BLOCK_G,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_G, D), dtype=tl.float32)
    for step in range(0, CHUNK // BLOCK_L):  # a static count: keys past L are masked
        keys = chunk * CHUNK + step * BLOCK_L + tl.arange(0, BLOCK_L)
        visible = keys < L
        if HAS_MASK:
            visible = visible & (tl.load(mask_ptr + b * mask_stride_b + keys, mask=visible, other=0) != 0)
        # keys the mask hides are never read: a static step's cache is mostly slots not yet filled
        k = tl.load(k_ptr + kv + keys[:, None] * k_stride_l + d[None, :], mask=visible[:, None], other=0.0)
        s = _dot(q, tl.trans(k), ON_GPU)  # [BLOCK_G, BLOCK_L]
        s = s.to(q_ptr.dtype.element_ty).to(tl.float32)  # rounded as the GEMM's output is
        s = tl.where(visible[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing visible yet stays at zero
        p = tl.exp(s - shift[:, None]).to(v_ptr.dtype.element_ty)  # P in V's dtype, as flash attention has it
        rescale = tl.exp(m - shift)
        total = total * rescale + tl.sum(p.to(tl.float32), axis=1)  # the weights P·V uses, so they sum to one
        v = tl.load(v_ptr + kv + keys[:, None] * k_stride_l + d[None, :], mask=visible[:, None], other=0.0)
        acc = acc * rescale[:, None] + _dot(p, v, ON_GPU)
        m = m_new
    row = (bh * SPLITS + chunk) * G + g
    tl.store(m_ptr + row, m, mask=g < G)
    tl.store(l_ptr + row, total, mask=g < G)
    tl.store(o_ptr + row[:, None] * D + d[None, :], acc, mask=g[:, None] < G)


@triton.jit
def _combine_kernel(
    m_ptr, l_ptr, o_ptr, out_ptr, SPLITS, out_stride_b, out_stride_h,
    HKV: tl.constexpr, G: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
    PDL: tl.constexpr,
):
    # m, l [B·HKV, SPLITS, G]; o [B·HKV, SPLITS, G, D] → out [B, HKV·G, D] (strided). Program (i, j):
    # query head i of all B·HKV·G, head dims j·BLOCK_D …; every chunk's partial loaded at once (one round trip).
    wait_for_previous_kernel(PDL)  # the partials come from the kernel before
    head = tl.program_id(0)
    bh = head // G
    g = head % G
    b = bh // HKV
    splits = tl.arange(0, BLOCK_S)
    present = splits < SPLITS
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    rows = (bh * SPLITS + splits) * G + g
    m = tl.load(m_ptr + rows, mask=present, other=float("-inf"))
    total = tl.load(l_ptr + rows, mask=present, other=0.0)
    weight = tl.where(m == float("-inf"), 0.0, tl.exp(m - tl.max(m, axis=0)))  # every head sees a key: finite max
    o = tl.load(o_ptr + rows[:, None] * D + d[None, :], mask=present[:, None], other=0.0)
    out = tl.sum(o * weight[:, None], axis=0) / tl.sum(total * weight, axis=0)
    tl.store(out_ptr + b * out_stride_b + (bh % HKV * G + g) * out_stride_h + d, out.to(out_ptr.dtype.element_ty))


def split_chunks(length: int, sequences_heads: int) -> tuple[int, int]:
    """(keys per chunk, chunks) for `length` keys and `sequences_heads` sequences × KV heads: enough chunks to give
    the GPU about TARGET_PROGRAMS programs, each BLOCK_L times a power of two keys long (a compile-time constant:
    a cache that grows by one key per frame compiles the kernel for a few chunk lengths, not for every length)."""
    wanted = max(1, min(MAX_WANTED_CHUNKS, TARGET_PROGRAMS // sequences_heads))
    chunk = BLOCK_L * triton.next_power_of_2(triton.cdiv(triton.cdiv(length, wanted), BLOCK_L))
    return chunk, triton.cdiv(length, chunk)


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, length: int) -> None:
    """Raise on a query and cache the kernels cannot take."""
    B, H, T, D = q.shape
    Hkv = k.shape[1]
    if T != 1 or H % Hkv or k.shape != v.shape or k.shape[0] != B or k.shape[3] != D or not 1 <= length <= k.shape[2]:
        raise ValueError(f"decode_attention: q [B, H, 1, D] and k, v [B, Hkv | H, ≥ {length}, D], got q "
                         f"{list(q.shape)}, k {list(k.shape)}, v {list(v.shape)}")
    if q.dtype not in (torch.bfloat16, torch.float16) and not INTERPRETED:  # fp32 would multiply in TF32
        raise ValueError(f"decode_attention: bf16 or fp16 on the GPU, got {q.dtype}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"decode_attention: q, k and v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if D & (D - 1) or D < 16:
        raise ValueError(f"decode_attention: head_dim must be a power of two ≥ 16, got {D}")
    if k.stride() != v.stride() or k.stride(3) != 1 or q.stride(3) != 1:
        raise ValueError("decode_attention: k and v must share strides, with contiguous head_dim (a KVCache's)")


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, length: int,
                     mask: torch.Tensor | None = None, pdl: bool = False) -> torch.Tensor:
    """softmax(q · kᵀ / √D) · v for one query per sequence: q [B, H, 1, D]; k, v [B, Hkv, capacity, D] (a layer's
    cache; the first `length` slots are attended, H a multiple of Hkv); mask [B or 1, 1, 1, length] bool (True:
    visible) or None → [B, H, 1, D] in q's dtype (bf16/fp16). `pdl`: both kernels launched as programmatic
    dependents (`fishs2.dependent_launch`)."""
    B, H, _, D = q.shape
    Hkv = k.shape[1]
    _check(q, k, v, length)
    if mask is not None and (mask.dtype != torch.bool or mask.shape[-1] != length or mask.shape[0] not in (1, B)):
        raise ValueError(f"decode_attention: mask must be bool [1 or {B}, 1, 1, {length}], got {mask.dtype} "
                         f"{list(mask.shape)}")
    G = H // Hkv
    block_g = max(16, triton.next_power_of_2(G))  # tl.dot needs 16 rows
    chunk, splits = split_chunks(length, B * Hkv)
    m = torch.empty(B * Hkv, splits, G, dtype=torch.float32, device=q.device)
    total = torch.empty_like(m)
    partial = torch.empty(B * Hkv, splits, G, D, dtype=torch.float32, device=q.device)
    flat_mask = None if mask is None else mask.reshape(mask.shape[0], length).contiguous().view(torch.int8)
    launch = dependent_launch.launch_options(pdl, q.device, "decode_attention")
    _partial_kernel[(B * Hkv, splits)](
        q, k, v, q if flat_mask is None else flat_mask, m, total, partial, 1.0 / math.sqrt(D),
        length, splits, q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2),
        0 if flat_mask is None or flat_mask.shape[0] == 1 else flat_mask.stride(0),
        HKV=Hkv, G=G, D=D, HAS_MASK=flat_mask is not None, BLOCK_G=block_g, BLOCK_L=BLOCK_L, CHUNK=chunk,
        ON_GPU=not INTERPRETED, PDL=pdl, **launch)
    out = torch.empty(B, H, 1, D, dtype=q.dtype, device=q.device)
    block_d = min(D, COMBINE_BLOCK_D)
    _combine_kernel[(B * H, D // block_d)](m, total, partial, out, splits, out.stride(0), out.stride(1),
                                           HKV=Hkv, G=G, D=D, BLOCK_D=block_d, BLOCK_S=triton.next_power_of_2(splits),
                                           PDL=pdl, **launch)
    return out


def short_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, length: int,
                    pdl: bool = False) -> torch.Tensor:
    """The official fast AR's attention (`layers.manual_attention` without a mask, every product rounded to the
    activation dtype as there) in one kernel: q [B, H, 1, D] over the first `length` ≤ SHORT_KEYS slots of k, v
    [B, Hkv, capacity, D] → [B, H, 1, D]. `pdl`: launched as a programmatic dependent."""
    B, H, _, D = q.shape
    Hkv = k.shape[1]
    _check(q, k, v, length)
    if length > SHORT_KEYS:
        raise ValueError(f"short_attention: at most {SHORT_KEYS} keys, got {length}")
    out = torch.empty(B, H, 1, D, dtype=q.dtype, device=q.device)
    _short_kernel[(B * Hkv,)](
        q, k, v, out, 1.0 / math.sqrt(D), length, q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2),
        out.stride(0), out.stride(1), HKV=Hkv, G=H // Hkv, D=D, BLOCK_G=max(16, triton.next_power_of_2(H // Hkv)),
        BLOCK_L=max(16, triton.next_power_of_2(length)), ON_GPU=not INTERPRETED, PDL=pdl,
        **dependent_launch.launch_options(pdl, q.device, "short_attention"))
    return out
