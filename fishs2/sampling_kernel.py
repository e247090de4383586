"""The sampling primitive (spec §6.2) on CUDA in one Triton kernel per draw: one program per sequence sorts its row,
cuts, tempers and runs the exponential race in registers.

PyTorch's ops take about eleven kernels per draw (`sampling.sample`: a radix sort, two softmaxes, a cumulative sum,
a scatter, the cut, the temperature, the race), and a frame makes eleven draws: the slow token and its RAS
alternative over the 4097 allowed ids, and the fast AR's nine codes over 4096. On an H200 the fast AR's radix sorts
alone took 19 µs each (bench/GPU-NOTES.md, v3 profile), for rows that fit in one program's registers.

The row is sorted as 32-bit keys: the logit's 16 bits (bf16 or fp16) turned so that integer order is descending
value order, then the entry's index, so ties keep index order as CUDA's stable radix sort keeps them. The rest
rounds to the logits' dtype where the ops round: the softmax of the sorted logits (accurate exp, IEEE division, as
PyTorch's kernel), each cumulative sum, the tempered logits, the probabilities, log u and the quotients; the winner
is the first id among equal quotients, as `argmin` returns it. Two differences from the ops remain, both in the last
bit of a sum: the softmaxes sum in another order, and the cumulative sums add in fp32 and round once per entry (as
PyTorch's CPU kernel does; its CUDA scan rounds its partial sums to bf16). Either changes a token only when a
rounded value sits at a cut or two candidates tie to the last bit.

Tests: tests/test_sampling_kernel.py (Triton's interpreter, ahead-of-time compiles), tests/test_cuda.py (the GPU).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

__all__ = ["MAX_ENTRIES", "draw"]

MAX_ENTRIES = 1 << 15  # 16 value bits + 15 index bits fill a positive int32 key


@triton.jit
def _exp(x, ON_GPU: tl.constexpr):
    """expf as PyTorch's CUDA kernels compute it (libdevice; Triton's own exp is an approximation), or numpy's in
    Triton's interpreter, which has no libdevice."""
    if ON_GPU:
        return libdevice.exp(x)
    return tl.exp(x)


@triton.jit
def _log(x, ON_GPU: tl.constexpr):
    if ON_GPU:
        return libdevice.log(x)
    return tl.log(x)


@triton.jit
def _div(a, b, ON_GPU: tl.constexpr):
    """a / b rounded to nearest (Triton's `/` is an approximate division on the GPU; numpy's is exact)."""
    if ON_GPU:
        return tl.math.div_rn(a, b)
    return a / b


@triton.jit
def _rounded(x, DTYPE: tl.constexpr):
    return x.to(DTYPE).to(tl.float32)


@triton.jit
def _softmax(x, DTYPE: tl.constexpr, ON_GPU: tl.constexpr):
    e = _exp(x - tl.max(x, axis=0), ON_GPU)
    return _rounded(_div(e, tl.sum(e, axis=0), ON_GPU), DTYPE)


@triton.jit
def _draw_kernel(
    logits_ptr, uniforms_ptr, columns_ptr, cut_ptr, temperature_ptr, out_ptr, V, logits_stride, uniforms_stride,
    BLOCK: tl.constexpr, INDEX_BITS: tl.constexpr, HAS_COLUMNS: tl.constexpr, ON_GPU: tl.constexpr,
):
    # One sequence's draw over V ≤ BLOCK = 2^INDEX_BITS entries: its logits [V] (or those at `columns` [V] of a
    # wider row), the uniforms at the same ids, the cut thresholds by rank [≥ V], the temperature (0-dim) → the
    # drawn id (a column's id with HAS_COLUMNS).
    row = tl.program_id(0)
    dtype = logits_ptr.dtype.element_ty
    entry = tl.arange(0, BLOCK)
    valid = entry < V
    if HAS_COLUMNS:
        column = tl.load(columns_ptr + entry, mask=valid, other=0)
    else:
        column = entry
    x = tl.load(logits_ptr + row * logits_stride + column, mask=valid, other=float("-inf")).to(tl.float32)
    x = (x + 0.0).to(dtype)  # −0 → +0: the sort compares them equal
    bits = x.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    ascending = tl.where(bits >= 0x8000, bits ^ 0xFFFF, bits ^ 0x8000)  # sign-magnitude → integer order
    key = ((0xFFFF - ascending) << INDEX_BITS) | entry
    key = tl.sort(key)  # by descending logit, ties by ascending entry; the padding (−inf, entry ≥ V) last

    # ranks from here on
    entry = key & (BLOCK - 1)
    valid = entry < V
    ascending = 0xFFFF - (key >> INDEX_BITS)
    bits = tl.where(ascending >= 0x8000, ascending ^ 0x8000, ascending ^ 0xFFFF)
    x = bits.to(tl.int16).to(dtype, bitcast=True).to(tl.float32)
    if HAS_COLUMNS:
        column = tl.load(columns_ptr + entry, mask=valid, other=0)
    else:
        column = entry

    rank = tl.arange(0, BLOCK)
    cumulative = _rounded(tl.cumsum(_softmax(x, dtype, ON_GPU), axis=0), dtype)
    cut = tl.load(cut_ptr + rank, mask=rank < V, other=float("-inf")).to(tl.float32)
    temperature = tl.load(temperature_ptr).to(tl.float32)
    tempered = _rounded(_div(tl.where(cumulative > cut, float("-inf"), x), temperature, ON_GPU), dtype)
    probs = _softmax(tempered, dtype, ON_GPU)
    u = tl.load(uniforms_ptr + row * uniforms_stride + column, mask=valid, other=0.5).to(tl.float32)
    race = _rounded(_div(probs, _rounded(_log(u, ON_GPU), dtype), ON_GPU), dtype)  # p / log u: argmin wins
    race = tl.where(valid, race, float("inf"))
    best = tl.min(race, axis=0)
    winner = tl.min(tl.where(race == best, column, 2147483647), axis=0)
    tl.store(out_ptr + row, winner.to(tl.int64))


def _warps(block: int) -> int:
    """Warps per program: 16–32 keys per thread, which ptxas fits in registers (tests/test_sampling_kernel.py)."""
    return 4 if block <= 1024 else (8 if block <= 4096 else 16)


def draw(logits: torch.Tensor, temperature: torch.Tensor, cut: torch.Tensor, uniforms: torch.Tensor,
         columns: torch.Tensor | None = None) -> torch.Tensor:
    """`sampling.sample`'s draw: logits [B, W] (bf16/fp16) → ids [B] (int64). `temperature`: 0-dim, clamped
    (`clamp_temperature`); `cut`: thresholds by rank (`cut_thresholds`, at least as many as the entries drawn
    over); `uniforms` [B, W] in the logits' dtype. `columns` [R] (ascending ids, R ≤ W): draw over these columns
    only, as if every other logit were −inf; the ids returned are the columns' ids."""
    B, width = logits.shape
    entries = width if columns is None else columns.shape[0]
    if entries > MAX_ENTRIES:
        raise ValueError(f"sampling kernel: {entries} entries per draw, at most {MAX_ENTRIES}")
    block = triton.next_power_of_2(entries)
    out = torch.empty(B, dtype=torch.long, device=logits.device)
    _draw_kernel[(B,)](
        logits, uniforms, logits if columns is None else columns, cut, temperature, out, entries,
        logits.stride(0), uniforms.stride(0),
        BLOCK=block, INDEX_BITS=block.bit_length() - 1, HAS_COLUMNS=columns is not None,
        ON_GPU=logits.is_cuda, num_warps=_warps(block),
    )
    return out
