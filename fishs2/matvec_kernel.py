"""The decode step's few activation rows × a weight matrix on CUDA, in one Triton kernel: y = (x · Wᵀ) · scales,
for int8 weights with one scale per row, or bf16/fp16 weights without scales.

Decode multiplies a few activation rows (one per take) by each weight matrix, so it is bound by reading the weights.
For int8, dequantising W to the activation dtype first (`F.linear(x, W.to(x.dtype))`) reads int8, writes and
re-reads a bf16 copy: 5 bytes per weight instead of 1, which made int8 slower than bf16 on an H100 (28.4 against
77.9 frames/s). This kernel reads each weight once, accumulates in fp32 and applies the row scale before the one
rounding to the output dtype. On bf16 weights it beat cuBLAS's GEMV on every matrix of the real architecture in
CUDA graphs on an H100 and an H200 (1.06–1.5× on the layer matrices, bench/matvec.py), so bf16 decode rows use it
too (`fishs2.matvec`).

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
def _activation_row(x_ptr, m, M, cols, K: tl.constexpr):
    """Activation row m at columns `cols` as fp32 [1, BLOCK_K] (zeros past M or K). Loaded as a vector, so that
    Triton moves this row (not the much larger weight tile) into the weight tile's register layout."""
    return tl.load(x_ptr + m * K + cols, mask=(m < M) & (cols < K), other=0.0).to(tl.float32)[None, :]


@triton.jit
def _store_row(out_ptr, m, M, N, rows, acc, scales, HAS_SCALES: tl.constexpr):
    """Output row m: the accumulator tile [BLOCK_N, BLOCK_K] summed over K, scaled (int8), rounded once."""
    y = tl.sum(acc, axis=1)
    if HAS_SCALES:
        y = y * scales
    tl.store(out_ptr + m * N + rows, y.to(out_ptr.dtype.element_ty), mask=(m < M) & (rows < N))


@triton.jit
def _matvec_kernel(
    x_ptr, w_ptr, scale_ptr, out_ptr,
    M, N, K: tl.constexpr,
    HAS_SCALES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # x [M, K] (any float dtype), w [N, K] int8 or x's dtype, scales [N] (read only with HAS_SCALES), out [M, N]; all
    # contiguous. BLOCK_M is 1, 2 or 4.
    # Program (i, j): output rows i·BLOCK_N …, activation rows j·BLOCK_M …
    # One accumulator tile per activation row, each in the register layout the weight tile is loaded in. A single
    # [rows, N, K] product instead made Triton move every converted weight through shared memory at each step
    # (two layout conversions per step in its IR), which held the kernel to about a third of the H200's bandwidth.
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    m0 = tl.program_id(1) * BLOCK_M
    acc0 = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    acc3 = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        w = tl.load(w_ptr + rows[:, None] * K + cols[None, :], mask=(rows[:, None] < N) & (cols[None, :] < K),
                    other=0).to(tl.float32)
        acc0 += w * _activation_row(x_ptr, m0, M, cols, K)
        if BLOCK_M > 1:
            acc1 += w * _activation_row(x_ptr, m0 + 1, M, cols, K)
        if BLOCK_M > 2:
            acc2 += w * _activation_row(x_ptr, m0 + 2, M, cols, K)
            acc3 += w * _activation_row(x_ptr, m0 + 3, M, cols, K)
    scales = 1.0
    if HAS_SCALES:
        scales = tl.load(scale_ptr + rows, mask=rows < N, other=0.0).to(tl.float32)
    _store_row(out_ptr, m0, M, N, rows, acc0, scales, HAS_SCALES)
    if BLOCK_M > 1:
        _store_row(out_ptr, m0 + 1, M, N, rows, acc1, scales, HAS_SCALES)
    if BLOCK_M > 2:
        _store_row(out_ptr, m0 + 2, M, N, rows, acc2, scales, HAS_SCALES)
        _store_row(out_ptr, m0 + 3, M, N, rows, acc3, scales, HAS_SCALES)


def _short_bench(kernel_call, quantiles):
    """Triton's timing with 5 ms of warm-up and 20 ms of runs instead of 25 and 100: the kernel takes microseconds."""
    return triton.testing.do_bench(kernel_call, warmup=5, rep=20, quantiles=quantiles)


def _fitting_configs(configs, named_args, **kwargs):
    """Only configs whose K block is no longer than K rounded up to a power of two (each config is a compile), or
    the shortest one: a small model's layers need not build kernels sized for 2560-wide rows."""
    k = triton.next_power_of_2(named_args["K"])
    fitting = [c for c in configs if c.kwargs["BLOCK_K"] <= k]
    return fitting or [min(configs, key=lambda c: c.kwargs["BLOCK_K"])]


_PRUNE = {"early_config_prune": _fitting_configs}
try:  # tuned configs kept on disk across processes
    _tuned = triton.autotune(configs=CONFIGS, key=["M", "N", "K"], prune_configs_by=_PRUNE, do_bench=_short_bench,
                             cache_results=True)(_matvec_kernel)
except TypeError:  # Triton before 3.2: no do_bench / on-disk tuning cache arguments
    _tuned = triton.autotune(configs=CONFIGS, key=["M", "N", "K"], prune_configs_by=_PRUNE)(_matvec_kernel)


def _check(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor | None) -> None:
    if x.dim() != 2 or not 1 <= x.shape[0] <= MAX_ROWS:
        raise ValueError(f"matvec: x must be [1…{MAX_ROWS}, K], got {list(x.shape)}")
    if weight.dtype not in WEIGHT_DTYPES or weight.dim() != 2 or weight.shape[1] != x.shape[1]:
        raise ValueError(f"matvec: weight must be int8, bf16 or fp16 [N, {x.shape[1]}], got {weight.dtype} "
                         f"{list(weight.shape)}")
    if (weight.dtype == torch.int8) != (scales is not None):
        raise ValueError(f"matvec: int8 weights need scales and bf16/fp16 weights take none, got {weight.dtype} "
                         f"weights with scales={None if scales is None else list(scales.shape)}")
    if scales is not None and scales.shape != (weight.shape[0],):
        raise ValueError(f"matvec: scales must be [{weight.shape[0]}], got {list(scales.shape)}")


def _block_m(rows: int) -> int:
    return min(ROWS_PER_PROGRAM, triton.next_power_of_2(rows))


def _prepare(x, weight, scales):
    _check(x, weight, scales)
    x, weight = x.contiguous(), weight.contiguous()
    scales = weight if scales is None else scales.contiguous()  # never read without HAS_SCALES
    out = torch.empty(x.shape[0], weight.shape[0], dtype=x.dtype, device=x.device)
    return x, weight, scales, out


def launch(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor | None, block_n: int,
           block_k: int) -> torch.Tensor:
    """The kernel with fixed block sizes (what the tests run through the interpreter) → [M, N] in x.dtype."""
    x, weight, scales_or_weight, out = _prepare(x, weight, scales)
    (M, K), N = x.shape, weight.shape[0]
    block_m = _block_m(M)
    _matvec_kernel[(triton.cdiv(N, block_n), triton.cdiv(M, block_m))](
        x, weight, scales_or_weight, out, M, N, K, HAS_SCALES=scales is not None, BLOCK_M=block_m, BLOCK_N=block_n,
        BLOCK_K=block_k)
    return out


def matvec(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor | None = None) -> torch.Tensor:
    """x [M ≤ MAX_ROWS, K] · (weight [N, K] · scales[:, None])ᵀ → [M, N] in x.dtype, blocks autotuned per shape;
    int8 weights with their scales [N], or weights in x's dtype (bf16/fp16) without."""
    x, weight, scales_or_weight, out = _prepare(x, weight, scales)
    (M, K), N = x.shape, weight.shape[0]
    block_m = _block_m(M)
    _tuned[lambda meta: (triton.cdiv(N, meta["BLOCK_N"]), triton.cdiv(M, block_m))](
        x, weight, scales_or_weight, out, M, N, K, HAS_SCALES=scales is not None, BLOCK_M=block_m)
    return out
