"""Which kernel multiplies activation rows by a linear layer's weight: decode rows on CUDA go through the Triton
matvec kernel (`fishs2.matvec_kernel`), everything else through a GEMM.

- int8 weights (`quantize.Int8Linear`), up to `MAX_INT8_ROWS` rows: the kernel reads each int8 weight once, where
  the GEMM fallback dequantises the whole matrix first (5 bytes moved per weight instead of 1).
- bf16/fp16 weights (`model.layers.Linear`), up to `MAX_ONE_PASS_ROWS` rows (the rows one program holds, so the
  weights are still read once): the kernel beat cuBLAS's GEMV on every matrix of the real architecture in CUDA
  graphs on an H100 (1.01–1.5×, stop 14; on an H200 an earlier form matched or beat it, bench/matvec.py). More rows (several
  takes, prefill) are a GEMM's job.
- Anything else (fp32 weights, the CPU, MPS, a GPU where Triton is missing or cannot build the kernel): the GEMM.

On Hopper and later GPUs the kernel is launched as a programmatic dependent (`dependent_launch`): it starts while
the kernel before it finishes and reads its first weight tile before waiting for that kernel's results, which hides
part of the gap between one decode matmul and the next. The heads and attention kernels launch the same way
(`fishs2.decode_attention`), under the same setting.

A call can carry what a transformer block does around the matmul — the RMSNorm before it, SwiGLU or a residual add
after it — so that a decode block is four kernel calls (`layers.TransformerBlock.fused_forward`); `gemm` runs the
same arithmetic as the unfused modules, op for op.

Under torch.compile these matmuls are one opaque op (`fishs2::linear`), so that inductor compiles the work around it
and runs the matmul as eager does: left to inductor, int8's dequantise-then-matmul ran 2.7× slower than eager on an
H100 (12.8 against 28.4 frames/s), and its prefill through the same lowering made a later request's first frame
take 0.84 s (0.05–0.065 s through the op).
This module never imports Triton itself, so the CPU path and ComfyUI's start-up do not pay for it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from typing import Iterator, Optional

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

MAX_INT8_ROWS = 16  # fishs2.matvec_kernel.MAX_ROWS: the most takes the nodes decode together
MAX_ONE_PASS_ROWS = 4  # fishs2.matvec_kernel.ROWS_PER_PROGRAM: rows that read the weights once
KERNEL_DTYPES = (torch.bfloat16, torch.float16)  # activation dtypes, and weight dtypes besides int8
_failure: list[str] = []  # why the CUDA kernel was given up in this process, if it was
_launch_dependents = [os.environ.get("FISHS2_DEPENDENT_LAUNCH", "1") != "0"]  # `dependent_launch`'s setting


@functools.cache
def _import_kernel():
    try:
        from .matvec_kernel import matvec
    except ImportError:  # no Triton (e.g. some Windows installs): GEMMs instead
        return None
    except Exception as e:  # a Triton too old or too new for the kernel's definition
        _disable_kernel(e)
        return None
    log.info("fishs2: decode rows on CUDA use a Triton kernel; its first use on a machine compiles and tunes it for "
             "each matrix shape, later runs read both from Triton's cache")
    return matvec


def cuda_kernel():
    """The Triton matvec for decode rows on CUDA (`fishs2.matvec_kernel.matvec`), or None where Triton is missing
    or could not build it on this GPU."""
    return None if _failure else _import_kernel()


@functools.cache
def _dependent_launch_supported(device: torch.device) -> bool:
    try:
        from .dependent_launch import supported
    except ImportError:  # no Triton
        return False
    return supported(device)


def launches_dependents(device: torch.device) -> bool:
    """Whether the decode kernels (this module's, `fishs2.decode_attention`'s) launch as programmatic dependents on
    `device` now: the `dependent_launch` setting and a GPU, driver and Triton that support it."""
    return _launch_dependents[0] and device.type == "cuda" and _dependent_launch_supported(device)


@contextlib.contextmanager
def dependent_launch(enabled: bool) -> Iterator[None]:
    """Within the block, whether the decode kernels launch as programmatic dependents on GPUs that support it
    (Hopper and later; on unless the environment sets FISHS2_DEPENDENT_LAUNCH=0; `fishs2.dependent_launch`): each
    may start before the previous kernel ends; the matvec kernel reads its first weight tile then, which is safe for
    a model's weights (written long before) and for nothing a kernel just wrote. Covers the matvec, heads and
    attention kernels. A CUDA graph keeps the choice it was captured with. For same-process comparisons (bench/)
    and as a way out should a driver mishandle it."""
    before = _launch_dependents[0]
    _launch_dependents[0] = enabled
    try:
        yield
    finally:
        _launch_dependents[0] = before


def _disable_kernel(error: Exception) -> None:
    _failure.append(f"{type(error).__name__}: {error}")
    log.warning("fishs2: the CUDA matvec kernel failed (%s); decode rows go through GEMMs instead (int8 layers "
                "dequantise their weights, which is slower)", _failure[0])


def gemm(x: torch.Tensor, weight: torch.Tensor, scales: Optional[torch.Tensor],
         norm_weight: Optional[torch.Tensor] = None, eps: float = 0.0, swiglu: bool = False,
         residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The kernel's arithmetic as the unfused modules run it, in PyTorch ops on any device and any number of rows:
    `layers.RMSNorm` of x (with norm_weight), x · (weight · scales[:, None])ᵀ through a GEMM (int8 weights
    dequantised to x's dtype first), SiLU(gate) · up of the stacked gate and up halves (swiglu), + residual."""
    if norm_weight is not None:
        x = F.rms_norm(x, x.shape[-1:], eps=eps) * norm_weight
    out = F.linear(x, weight.to(x.dtype))
    if scales is not None:
        out = out * scales.to(x.dtype)
    if swiglu:
        gate, up = out.chunk(2, dim=-1)
        out = F.silu(gate) * up
    return out if residual is None else residual + out


def kernel_takes(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether rows x [rows, K] times `weight` belong to the kernel (on CUDA, and while it works)."""
    if not x.is_cuda or x.dtype not in KERNEL_DTYPES:
        return False
    if weight.dtype == torch.int8:
        return x.shape[0] <= MAX_INT8_ROWS
    return weight.dtype == x.dtype and x.shape[0] <= MAX_ONE_PASS_ROWS


def rows_linear(x: torch.Tensor, weight: torch.Tensor, scales: Optional[torch.Tensor],
                norm_weight: Optional[torch.Tensor] = None, eps: float = 0.0, swiglu: bool = False,
                residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x [rows, K] → [rows, N] (N/2 with swiglu): the kernel where `kernel_takes` says so, else `gemm`."""
    kernel = cuda_kernel() if kernel_takes(x, weight) else None
    if kernel is not None:
        options = {"norm_weight": norm_weight, "eps": eps, "swiglu": swiglu, "residual": residual,
                   "pdl": launches_dependents(x.device)}
        try:
            if x.is_cuda and x.device.index != torch.cuda.current_device():  # Triton launches on the current one
                with torch.cuda.device(x.device):
                    return kernel(x, weight, scales, **options)
            return kernel(x, weight, scales, **options)
        except torch.OutOfMemoryError:
            raise
        except Exception as e:  # a Triton that cannot build the kernel for this GPU: the GEMM still works
            _disable_kernel(e)
    return gemm(x, weight, scales, norm_weight, eps, swiglu, residual)


def _linear_op():
    """The custom op `fishs2::linear` (PyTorch ≥ 2.4), registered once per process: a second copy of this package
    (the engine imported again under a node pack's package name) uses the op the first copy registered rather than
    defining it again."""
    if not hasattr(torch.library, "custom_op"):
        return None
    try:
        return torch.ops.fishs2.linear.default
    except AttributeError:
        pass
    op = torch.library.custom_op("fishs2::linear", rows_linear, mutates_args=())

    @op.register_fake
    def _(x, weight, scales, norm_weight=None, eps=0.0, swiglu=False, residual=None):
        return x.new_empty(x.shape[0], weight.shape[0] // 2 if swiglu else weight.shape[0])

    return op


linear_op = _linear_op()


def linear(x: torch.Tensor, weight: torch.Tensor, scales: Optional[torch.Tensor] = None, *,
           norm_weight: Optional[torch.Tensor] = None, eps: float = 0.0, swiglu: bool = False,
           residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x [..., K] · (weight [N, K] · scales[:, None])ᵀ → [..., N] off the CPU (int8 weights with their row scales,
    or weights in x's dtype without), with what a transformer block does around it where given (see `gemm`;
    residual [..., N]). Compiled code calls the opaque op for every int8 matmul (prefill rows too) and for the
    kernel's bf16/fp16 decode rows; eager calls skip the op dispatcher's overhead."""
    flat = x.reshape(-1, x.shape[-1])
    if residual is not None:
        residual = residual.reshape(flat.shape[0], -1)
    opaque = scales is not None or kernel_takes(flat, weight)
    run = linear_op if opaque and linear_op is not None and torch.compiler.is_compiling() else rows_linear
    out = run(flat, weight, scales, norm_weight, eps, swiglu, residual)
    return out.view(*x.shape[:-1], -1)
