"""The decode step's few activation rows × a weight matrix on CUDA, in one Triton kernel: y = (x · Wᵀ) · scales,
for int8 weights with one scale per row, or bf16/fp16 weights without scales.

Decode multiplies a few activation rows (one per take) by each weight matrix, so it is bound by reading the weights.
For int8, dequantising W to the activation dtype first (`F.linear(x, W.to(x.dtype))`) reads int8, writes and
re-reads a bf16 copy: 5 bytes per weight instead of 1, which made int8 slower than bf16 on an H100 (28.4 against
77.9 frames/s). This kernel reads each weight once, accumulates in fp32 and applies the row scale before the one
rounding to the output dtype. On bf16 weights it beat cuBLAS's GEMV on every matrix of the real architecture in
CUDA graphs on an H100 (1.01–1.5×, bench/matvec.py), so bf16 decode rows use it too (`fishs2.matvec`). Optional
variants do a transformer block's work around the matmul in the same pass (RMSNorm of the input, SwiGLU of stacked
gate and up rows, a residual add), rounding where the unfused PyTorch code rounds. On Hopper and later the kernel can
be launched as a programmatic dependent (`pdl=True`): it reads its first weight tile while the kernel before it
finishes, which saved 4.6–5.2 µs per decode block of four calls on an H100 (bench/matvec.py).

Each program owns BLOCK_N output rows and walks K in BLOCK_K steps, holding the partial products of up to
`ROWS_PER_PROGRAM` activation rows, one fp32 tile per row in the weight tile's own register layout (only the
activation vectors are rearranged, never the weight tile: see the kernel's comment). Up to 4 rows, W is read once.
More rows (takes, up to `MAX_ROWS`) get a second grid axis and read W once per 4 rows, which stays below the 5 bytes
per weight of dequantising for a GEMM.
Block sizes are autotuned per (rows, N, K) on the device at first use. The tuning runs outside any CUDA graph,
during the static decoder's warm-up step. K is a compile-time constant (a model has three: 2560, 4096, 9728), which
also keeps the loop bound static for Triton's interpreter.

Tests: the arithmetic on the CPU through Triton's interpreter (`TRITON_INTERPRET=1`); every config compiled ahead
of time for sm_80 and sm_90a, checked for 16-byte weight loads and no register spills; on CUDA, the real shapes
against fp32 arithmetic, in the CUDA graph and under torch.compile (tests/test_matvec_kernel.py, tests/test_cuda.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
import triton.testing

from . import dependent_launch
from .dependent_launch import wait_for_previous_kernel

__all__ = ["MAX_ROWS", "launch", "matvec"]

ROWS_PER_PROGRAM = 4  # activation rows whose partial products one program holds in registers
MAX_ROWS = 16  # the most takes the nodes decode together; more rows (prefill) go through the dequantising GEMM
WEIGHT_DTYPES = (torch.int8, torch.bfloat16, torch.float16)

# Each thread loads 16 or 32 bytes of weights per step (one or two vector loads in flight); the configs differ in
# that, in rows per program (few rows → more programs for the 2560-row matrices) and in warps per program.
CONFIGS = [
    triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w)
    for n, k, w in ((1, 1024, 2), (2, 1024, 4), (4, 512, 4), (8, 256, 4), (16, 256, 8),  # 16 bytes per thread
                    (1, 2048, 2), (2, 1024, 2), (4, 1024, 4), (8, 512, 4))  # 32 bytes per thread
]


@triton.jit
def _rounded(y, like_ptr):
    """y rounded to the dtype `like_ptr` points to, back in fp32: where the unfused PyTorch code stores a tensor."""
    return y.to(like_ptr.dtype.element_ty).to(tl.float32)


@triton.jit
def _inverse_rms(x_ptr, m, M, K: tl.constexpr, eps, BLOCK_K: tl.constexpr):
    """1 / sqrt(mean(x[m]²) + eps) in fp32 (1.0 past M): the RMSNorm factor of activation row m."""
    squares = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        v = tl.load(x_ptr + m * K + cols, mask=(m < M) & (cols < K), other=0.0).to(tl.float32)
        squares += v * v
    return 1.0 / tl.sqrt_rn(tl.sum(squares, axis=0) / K + eps)


@triton.jit
def _activation_row(x_ptr, norm_ptr, m, M, cols, K: tl.constexpr, inverse_rms, NORM: tl.constexpr):
    """Activation row m at columns `cols` as fp32 [1, BLOCK_K] (zeros past M or K); with NORM, RMS-normalised as
    `layers.RMSNorm` does it (x · inverse_rms rounded to x's dtype, times the norm weight, rounded again). Loaded as
    a vector, so that Triton moves this row (not the much larger weight tile) into the weight tile's layout."""
    a = tl.load(x_ptr + m * K + cols, mask=(m < M) & (cols < K), other=0.0).to(tl.float32)
    if NORM:
        gain = tl.load(norm_ptr + cols, mask=cols < K, other=0.0).to(tl.float32)
        a = _rounded(_rounded(a * inverse_rms, x_ptr) * gain, x_ptr)
    return a[None, :]


@triton.jit
def _accumulate(acc, up, w, u, a, SWIGLU: tl.constexpr):
    """One K step of an activation row a [1, BLOCK_K]: into the tile of the weight rows, and of the SwiGLU up rows."""
    acc += w * a
    if SWIGLU:
        up += u * a
    return acc, up


@triton.jit
def _weight_tiles(w_ptr, rows, N, k0, K: tl.constexpr, BLOCK_K: tl.constexpr, SWIGLU: tl.constexpr):
    """The weight tile [BLOCK_N, BLOCK_K] of rows `rows` at columns k0 … as fp32, and with SWIGLU the up rows' tile
    (rows + N) too (else the same tile again, unused)."""
    cols = k0 + tl.arange(0, BLOCK_K)
    mask = (rows[:, None] < N) & (cols[None, :] < K)
    w = tl.load(w_ptr + rows[:, None] * K + cols[None, :], mask=mask, other=0).to(tl.float32)
    u = w
    if SWIGLU:
        u = tl.load(w_ptr + (rows[:, None] + N) * K + cols[None, :], mask=mask, other=0).to(tl.float32)
    return w, u


@triton.jit
def _k_step(x_ptr, norm_ptr, m0, M, k0, K: tl.constexpr, w, u, inverse_rms0, inverse_rms1, inverse_rms2,
            inverse_rms3, acc0, acc1, acc2, acc3, up0, up1, up2, up3,
            NORM: tl.constexpr, SWIGLU: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """The weight tiles w (and u) at columns k0 … times activation rows m0 … m0 + BLOCK_M - 1, into their
    accumulator tiles."""
    cols = k0 + tl.arange(0, BLOCK_K)
    a = _activation_row(x_ptr, norm_ptr, m0, M, cols, K, inverse_rms0, NORM)
    acc0, up0 = _accumulate(acc0, up0, w, u, a, SWIGLU)
    if BLOCK_M > 1:
        a = _activation_row(x_ptr, norm_ptr, m0 + 1, M, cols, K, inverse_rms1, NORM)
        acc1, up1 = _accumulate(acc1, up1, w, u, a, SWIGLU)
    if BLOCK_M > 2:
        a = _activation_row(x_ptr, norm_ptr, m0 + 2, M, cols, K, inverse_rms2, NORM)
        acc2, up2 = _accumulate(acc2, up2, w, u, a, SWIGLU)
        a = _activation_row(x_ptr, norm_ptr, m0 + 3, M, cols, K, inverse_rms3, NORM)
        acc3, up3 = _accumulate(acc3, up3, w, u, a, SWIGLU)
    return acc0, acc1, acc2, acc3, up0, up1, up2, up3


@triton.jit
def _store_row(out_ptr, residual_ptr, m, M, N, rows, acc, up, scales, up_scales,
               HAS_SCALES: tl.constexpr, SWIGLU: tl.constexpr, RESIDUAL: tl.constexpr):
    """Output row m from its accumulator tiles [BLOCK_N, BLOCK_K], summed over K and scaled (int8), each step rounded
    where the unfused code rounds: the projection; with SWIGLU silu(gate) and its product with up; with RESIDUAL the
    sum with the residual row."""
    y = tl.sum(acc, axis=1)
    if HAS_SCALES:
        y = y * scales
    if SWIGLU:
        u = tl.sum(up, axis=1)
        if HAS_SCALES:
            u = u * up_scales
        gate = _rounded(y, out_ptr)
        y = _rounded(gate / (1.0 + tl.exp(-gate)), out_ptr) * _rounded(u, out_ptr)
    if RESIDUAL:
        y = tl.load(residual_ptr + m * N + rows, mask=(m < M) & (rows < N), other=0.0).to(tl.float32) + \
            _rounded(y, out_ptr)
    tl.store(out_ptr + m * N + rows, y.to(out_ptr.dtype.element_ty), mask=(m < M) & (rows < N))


@triton.jit
def _matvec_kernel(
    x_ptr, w_ptr, scale_ptr, norm_ptr, residual_ptr, out_ptr, eps,
    M, N, K: tl.constexpr,
    HAS_SCALES: tl.constexpr, NORM: tl.constexpr, SWIGLU: tl.constexpr, RESIDUAL: tl.constexpr, PDL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # x [M, K] (any float dtype); w [N, K] int8 or x's dtype, with SWIGLU [2N, K] (gate rows, then up rows);
    # scales [N] or [2N] (read only with HAS_SCALES); norm weight [K] (NORM); residual [M, N] (RESIDUAL); out [M, N];
    # all contiguous. BLOCK_M is 1, 2 or 4. Program (i, j): output rows i·BLOCK_N …, activation rows j·BLOCK_M …
    # One accumulator tile per activation row, each in the register layout the weight tile is loaded in. A single
    # [rows, N, K] product instead made Triton move every converted weight through shared memory at each step
    # (two layout conversions per step in its IR), which held the kernel to about a third of the H200's bandwidth.
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    m0 = tl.program_id(1) * BLOCK_M
    if PDL:  # launched while the previous kernel still runs: its first weight tile is read before waiting for it
        w_first, u_first = _weight_tiles(w_ptr, rows, N, 0, K, BLOCK_K, SWIGLU)
        wait_for_previous_kernel(PDL)  # x and the residual are read after it; the next kernel may then launch
    inverse_rms0 = 1.0
    inverse_rms1 = 1.0
    inverse_rms2 = 1.0
    inverse_rms3 = 1.0
    if NORM:  # the row's RMS first: the normalised row is rounded before the weights meet it
        inverse_rms0 = _inverse_rms(x_ptr, m0, M, K, eps, BLOCK_K)
        if BLOCK_M > 1:
            inverse_rms1 = _inverse_rms(x_ptr, m0 + 1, M, K, eps, BLOCK_K)
        if BLOCK_M > 2:
            inverse_rms2 = _inverse_rms(x_ptr, m0 + 2, M, K, eps, BLOCK_K)
            inverse_rms3 = _inverse_rms(x_ptr, m0 + 3, M, K, eps, BLOCK_K)
    acc0 = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    acc3 = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    up0 = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)  # SWIGLU only (unused tiles compile away)
    up1 = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    up2 = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    up3 = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    if PDL:  # the first K step on the tile read before the wait
        acc0, acc1, acc2, acc3, up0, up1, up2, up3 = _k_step(
            x_ptr, norm_ptr, m0, M, 0, K, w_first, u_first, inverse_rms0, inverse_rms1, inverse_rms2, inverse_rms3,
            acc0, acc1, acc2, acc3, up0, up1, up2, up3, NORM, SWIGLU, BLOCK_M, BLOCK_K)
    for k0 in range(BLOCK_K if PDL else 0, K, BLOCK_K):
        w, u = _weight_tiles(w_ptr, rows, N, k0, K, BLOCK_K, SWIGLU)
        acc0, acc1, acc2, acc3, up0, up1, up2, up3 = _k_step(
            x_ptr, norm_ptr, m0, M, k0, K, w, u, inverse_rms0, inverse_rms1, inverse_rms2, inverse_rms3,
            acc0, acc1, acc2, acc3, up0, up1, up2, up3, NORM, SWIGLU, BLOCK_M, BLOCK_K)
    scales = 1.0
    up_scales = 1.0
    if HAS_SCALES:
        scales = tl.load(scale_ptr + rows, mask=rows < N, other=0.0).to(tl.float32)
        if SWIGLU:
            up_scales = tl.load(scale_ptr + rows + N, mask=rows < N, other=0.0).to(tl.float32)
    _store_row(out_ptr, residual_ptr, m0, M, N, rows, acc0, up0, scales, up_scales, HAS_SCALES, SWIGLU, RESIDUAL)
    if BLOCK_M > 1:
        _store_row(out_ptr, residual_ptr, m0 + 1, M, N, rows, acc1, up1, scales, up_scales, HAS_SCALES, SWIGLU,
                   RESIDUAL)
    if BLOCK_M > 2:
        _store_row(out_ptr, residual_ptr, m0 + 2, M, N, rows, acc2, up2, scales, up_scales, HAS_SCALES, SWIGLU,
                   RESIDUAL)
        _store_row(out_ptr, residual_ptr, m0 + 3, M, N, rows, acc3, up3, scales, up_scales, HAS_SCALES, SWIGLU,
                   RESIDUAL)


def _short_bench(kernel_call, quantiles):
    """Triton's timing with 5 ms of warm-up and 20 ms of runs instead of 25 and 100: the kernel takes microseconds."""
    return triton.testing.do_bench(kernel_call, warmup=5, rep=20, quantiles=quantiles)


def _fitting_configs(configs, named_args, **kwargs):
    """The configs worth building (each is a compile): K blocks no longer than K rounded up to a power of two (a small
    model's layers need not build kernels sized for 2560-wide rows), and accumulators that fit in registers —
    BLOCK_M rows, times two tiles with SWIGLU, of BLOCK_N · BLOCK_K / threads fp32 values: at most 128 per thread
    (256 spilled, tests/test_matvec_kernel.py). Else the one with the shortest K block and fewest values."""
    k = triton.next_power_of_2(named_args["K"])
    tiles = kwargs.get("BLOCK_M", 1) * (2 if kwargs.get("SWIGLU") else 1)

    def values_per_thread(c):
        return tiles * c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_K"] // (32 * c.num_warps)

    fitting = [c for c in configs if c.kwargs["BLOCK_K"] <= k and values_per_thread(c) <= 128]
    return fitting or [min(configs, key=lambda c: (c.kwargs["BLOCK_K"], values_per_thread(c)))]


_PRUNE = {"early_config_prune": _fitting_configs}
TUNING_KEY = ["M", "N", "K", "NORM", "SWIGLU", "RESIDUAL", "PDL"]  # Triton adds the tensors' dtypes
try:  # tuned configs kept on disk across processes
    _tuned = triton.autotune(configs=CONFIGS, key=TUNING_KEY, prune_configs_by=_PRUNE, do_bench=_short_bench,
                             cache_results=True)(_matvec_kernel)
except TypeError:  # Triton before 3.2: no do_bench / on-disk tuning cache arguments
    _tuned = triton.autotune(configs=CONFIGS, key=TUNING_KEY, prune_configs_by=_PRUNE)(_matvec_kernel)


def _check(x, weight, scales, norm_weight, swiglu, residual) -> int:
    """Raise on inputs the kernel cannot take; → the number of output columns."""
    if x.dim() != 2 or not 1 <= x.shape[0] <= MAX_ROWS:
        raise ValueError(f"matvec: x must be [1…{MAX_ROWS}, K], got {list(x.shape)}")
    (M, K), N = x.shape, weight.shape[0]
    if weight.dtype not in WEIGHT_DTYPES or weight.dim() != 2 or weight.shape[1] != K:
        raise ValueError(f"matvec: weight must be int8, bf16 or fp16 [N, {K}], got {weight.dtype} "
                         f"{list(weight.shape)}")
    if (weight.dtype == torch.int8) != (scales is not None):
        raise ValueError(f"matvec: int8 weights need scales and bf16/fp16 weights take none, got {weight.dtype} "
                         f"weights with scales={None if scales is None else list(scales.shape)}")
    if scales is not None and scales.shape != (N,):
        raise ValueError(f"matvec: scales must be [{N}], got {list(scales.shape)}")
    if swiglu and N % 2:
        raise ValueError(f"matvec: swiglu needs gate and up rows stacked ([2F, K]), got {N} rows")
    out_columns = N // 2 if swiglu else N
    if norm_weight is not None and norm_weight.shape != (K,):
        raise ValueError(f"matvec: norm_weight must be [{K}], got {list(norm_weight.shape)}")
    if residual is not None and residual.shape != (M, out_columns):
        raise ValueError(f"matvec: residual must be [{M}, {out_columns}], got {list(residual.shape)}")
    return out_columns


def _block_m(rows: int) -> int:
    return min(ROWS_PER_PROGRAM, triton.next_power_of_2(rows))


def _arguments(x, weight, scales, norm_weight, eps, swiglu, residual, pdl):
    """The kernel's arguments (absent tensors stand in as x or weight, never read), flags and output."""
    N = _check(x, weight, scales, norm_weight, swiglu, residual)
    x, weight = x.contiguous(), weight.contiguous()
    M, K = x.shape
    out = torch.empty(M, N, dtype=x.dtype, device=x.device)
    args = (x, weight, weight if scales is None else scales.contiguous(),
            x if norm_weight is None else norm_weight.contiguous(), x if residual is None else residual.contiguous(),
            out, float(eps), M, N, K)
    flags = {"HAS_SCALES": scales is not None, "NORM": norm_weight is not None, "SWIGLU": swiglu,
             "RESIDUAL": residual is not None, "PDL": pdl, "BLOCK_M": _block_m(M)}
    flags.update(dependent_launch.launch_options(pdl, x.device, "matvec"))
    return args, flags, out


def launch(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor | None, block_n: int, block_k: int, *,
           norm_weight: torch.Tensor | None = None, eps: float = 0.0, swiglu: bool = False,
           residual: torch.Tensor | None = None, pdl: bool = False) -> torch.Tensor:
    """`matvec` with fixed block sizes (what the tests run through the interpreter)."""
    args, flags, out = _arguments(x, weight, scales, norm_weight, eps, swiglu, residual, pdl)
    M, N = out.shape
    _matvec_kernel[(triton.cdiv(N, block_n), triton.cdiv(M, flags["BLOCK_M"]))](
        *args, **flags, BLOCK_N=block_n, BLOCK_K=block_k)
    return out


def matvec(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor | None = None, *,
           norm_weight: torch.Tensor | None = None, eps: float = 0.0, swiglu: bool = False,
           residual: torch.Tensor | None = None, pdl: bool = False) -> torch.Tensor:
    """x [M ≤ MAX_ROWS, K] · (weight [N, K] · scales[:, None])ᵀ → [M, N] in x.dtype, blocks autotuned per shape;
    int8 weights with their scales [N], or weights in x's dtype (bf16/fp16) without. What a transformer block does
    around its matmuls can run inside the same call (`fishs2.matvec.gemm` is the same arithmetic in PyTorch ops):

    - norm_weight [K], eps: x is RMS-normalised first (`layers.RMSNorm`);
    - swiglu: weight stacks gate and up rows [2F, K]; the result is silu(gate) · up [M, F];
    - residual [M, N]: added to the result.

    pdl (programmatic dependent launch, `fishs2.dependent_launch`): the kernel may start while the kernel before
    it in the stream still runs, and reads its first weight tile before waiting for that kernel to finish; x and
    residual are read after the wait. So the weights must not be written by the kernel just before, nor by the one
    before that when it too was launched so: true of a model's parameters, written when it was loaded. It hides the
    gap between one decode matmul and the next (launch, ramp-up) inside a CUDA graph.
    """
    args, flags, out = _arguments(x, weight, scales, norm_weight, eps, swiglu, residual, pdl)
    M, N = out.shape
    _tuned[lambda meta: (triton.cdiv(N, meta["BLOCK_N"]), triton.cdiv(M, flags["BLOCK_M"]))](*args, **flags)
    return out
