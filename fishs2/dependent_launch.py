"""Programmatic dependent launch (PDL) for the decode kernels on Hopper and later GPUs.

A kernel launched as a programmatic dependent may start while the kernel before it in the stream is still running,
once that kernel lets it (`griddepcontrol.launch_dependents`); it must wait (`griddepcontrol.wait`) before it reads
anything that kernel, or the one before it, may have written. In a CUDA graph of a decode step, where hundreds of
small kernels run back to back, this hides each kernel's launch and ramp-up behind the end of the one before.

Every decode kernel of this package (`matvec_kernel`, `heads_kernel`, `attention_kernel`) calls
`wait_for_previous_kernel` before its first read of activations or caches and then lets the next kernel launch; the
matvec kernel reads its first weight tile before waiting, which is safe because weights are written once, at load.
Imported only where Triton is (never on the CPU path).
"""

from __future__ import annotations

import ctypes
import functools

import torch
import triton
import triton.language as tl

try:  # grid dependency control (Triton ≥ 3.3)
    from triton.backends.nvidia.compiler import CUDAOptions
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

    TRITON_LAUNCHES_DEPENDENTS = "launch_pdl" in CUDAOptions.__dataclass_fields__
except ImportError:
    TRITON_LAUNCHES_DEPENDENTS = False

__all__ = ["TRITON_LAUNCHES_DEPENDENTS", "launch_options", "supported", "wait_for_previous_kernel"]

GRAPHS_KEEP_DEPENDENT_LAUNCH = 12030  # the CUDA driver (12.3) from which graphs capture programmatic launches


@functools.cache
def cuda_driver_version() -> int:
    """The CUDA driver's version as `cuDriverGetVersion` gives it (12030 for 12.3), or 0 where it cannot be read."""
    for name in ("libcuda.so.1", "nvcuda.dll"):
        try:
            library = ctypes.CDLL(name)
        except OSError:
            continue
        version = ctypes.c_int()
        if library.cuDriverGetVersion(ctypes.byref(version)) == 0:
            return version.value
    return 0


def supported(device: torch.device) -> bool:
    """Whether kernels can be launched as programmatic dependents on `device`: a CUDA GPU of compute capability 9.0
    or later (Hopper), a driver whose CUDA graphs capture programmatic launches (12.3+), and a Triton that exposes
    them."""
    return (TRITON_LAUNCHES_DEPENDENTS and device.type == "cuda"
            and torch.cuda.get_device_capability(device)[0] >= 9
            and cuda_driver_version() >= GRAPHS_KEEP_DEPENDENT_LAUNCH)


def launch_options(pdl: bool, device: torch.device, kernel: str) -> dict:
    """The launch keyword for a kernel whose PDL flag is `pdl`: {"launch_pdl": True}, or {} without it. Raises
    ValueError naming `kernel` when `pdl` is asked for where it cannot run."""
    if not pdl:
        return {}
    if not supported(device):
        raise ValueError(f"{kernel}: pdl=True needs a Hopper or later GPU and a Triton with programmatic dependent "
                         f"launch, got {device} with Triton {triton.__version__}")
    return {"launch_pdl": True}


@triton.jit
def wait_for_previous_kernel(PDL: tl.constexpr):
    """With PDL: wait until the kernel before this one in the stream has finished and its writes are visible, then
    let the next kernel launch. A kernel calls this before reading anything a kernel may have written."""
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
