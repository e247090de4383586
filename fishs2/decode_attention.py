"""Which kernel attends a decode step's query over a layer's KV cache: on CUDA in bf16/fp16 the Triton kernels of
`fishs2.attention_kernel`, elsewhere PyTorch's ops.

- The slow AR (`layers.grouped_attention`'s arithmetic): two kernels per layer instead of about six ops.
- The fast AR's official hand-written attention (`layers.manual_attention`, over at most 10 keys): one kernel instead
  of about four, rounding where the ops round.

- Before either, the step's heads (`fishs2.heads_kernel`): QK-norm, RoPE and the cache write in one kernel per
  layer instead of about eight ops (five in the fast AR); compiled static steps through the op
  `fishs2::decode_heads`, which writes the caches in place.

On Hopper and later the kernels launch as programmatic dependents, as the matvec kernel does and under its setting
(`matvec.dependent_launch`, `fishs2.dependent_launch`). Prefill keeps SDPA. Under torch.compile the kernels are one
opaque op (`fishs2::decode_attention`), as the matvec kernel is (`fishs2.matvec`). This module never imports Triton
itself, so the CPU path and ComfyUI's start-up do not pay for it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from typing import Iterator, Optional

import torch

from . import matvec

log = logging.getLogger(__name__)

KERNEL_DTYPES = (torch.bfloat16, torch.float16)
SHORT_KEYS = 64  # fishs2.attention_kernel.SHORT_KEYS: the most keys the fast AR's kernel takes
_failure: list[str] = []  # why the kernel was given up in this process, if it was
_enabled = [os.environ.get("FISHS2_DECODE_ATTENTION", "1") != "0"]  # `kernel_enabled`'s setting
_heads_failure: list[str] = []  # the same for the heads kernel
_heads_enabled = [os.environ.get("FISHS2_DECODE_HEADS", "1") != "0"]  # `heads_kernel_enabled`'s setting


@functools.cache
def _kernels():
    """(the slow AR's decode attention, the fast AR's short attention) from `fishs2.attention_kernel`, or None."""
    try:
        from .attention_kernel import decode_attention, short_attention
    except ImportError:  # no Triton: PyTorch's ops instead
        return None
    except Exception as e:  # a Triton too old or too new for the kernels' definitions
        _disable(e)
        return None
    return decode_attention, short_attention


def _disable(error: Exception, failures: list[str] = _failure, what: str = "decode-attention") -> None:
    failures.append(f"{type(error).__name__}: {error}")
    log.warning("fishs2: the CUDA %s kernel failed (%s); it goes through PyTorch's ops instead", what, failures[0])


@functools.cache
def _heads_kernel():
    """`fishs2.heads_kernel.prepare_heads`, or None."""
    try:
        from .heads_kernel import prepare_heads
    except ImportError:
        return None
    except Exception as e:
        _disable(e, _heads_failure, "decode-heads")
        return None
    return prepare_heads


@contextlib.contextmanager
def heads_kernel_enabled(enabled: bool) -> Iterator[None]:
    """Within the block, whether CUDA decode steps prepare their heads in the Triton kernel (on unless the
    environment sets FISHS2_DECODE_HEADS=0). A CUDA graph keeps the choice it was captured with; compiled blocks
    recompile for the other setting (dynamo guards on it)."""
    before = _heads_enabled[0]
    _heads_enabled[0] = enabled
    try:
        yield
    finally:
        _heads_enabled[0] = before


def heads_kernel_takes(qkv: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor) -> bool:
    """Whether a decode position's projection qkv [B, 1, …] and its layer's caches belong to the heads kernel:
    CUDA, bf16/fp16, a power-of-two head_dim ≥ 16, caches of one layout."""
    D = cache_k.shape[-1]
    return (_heads_enabled[0] and not _heads_failure and qkv.is_cuda and qkv.dtype in KERNEL_DTYPES
            and cache_k.dtype == qkv.dtype and cache_v.dtype == qkv.dtype and cache_k.stride() == cache_v.stride()
            and cache_k.stride(-1) == 1 and qkv.shape[1] == 1 and qkv.stride(-1) == 1 and D >= 16
            and D & (D - 1) == 0)


def prepare_heads(qkv: torch.Tensor, rotation: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor,
                  slot: int | torch.Tensor, n_head: int, q_norm: Optional[torch.Tensor],
                  k_norm: Optional[torch.Tensor], eps: float) -> Optional[torch.Tensor]:
    """`fishs2.heads_kernel.prepare_heads` (q [B, n_head, 1, D]; k and v written to the caches), or None when the
    kernel is missing or failed: the caller then takes PyTorch's ops (`layers.Attention.split_heads`)."""
    kernel = _heads_kernel()
    if kernel is None:
        return None
    try:
        with torch.cuda.device(qkv.device) if qkv.is_cuda else contextlib.nullcontext():  # Triton: current device
            return kernel(qkv, rotation, cache_k, cache_v, slot, n_head, q_norm, k_norm, eps,
                          matvec.launches_dependents(qkv.device))
    except torch.OutOfMemoryError:
        raise
    except Exception as e:  # a Triton that cannot build the kernel for this GPU
        _disable(e, _heads_failure, "decode-heads")
        return None


@contextlib.contextmanager
def kernel_enabled(enabled: bool) -> Iterator[None]:
    """Within the block, whether CUDA decode steps attend through the Triton kernels (on unless the environment sets
    FISHS2_DECODE_ATTENTION=0). A CUDA graph keeps the choice it was captured with. For same-process comparisons
    (bench/) and as a way out."""
    before = _enabled[0]
    _enabled[0] = enabled
    try:
        yield
    finally:
        _enabled[0] = before


def kernel_takes(q: torch.Tensor, cache_k: torch.Tensor, length: int, mask: Optional[torch.Tensor],
                 manual: bool) -> bool:
    """Whether a decode query q [B, H, 1, D] over the first `length` slots of `cache_k` [B, Hkv, capacity, D] belongs
    to the kernels; `manual`: the fast AR's official attention (unmasked, at most SHORT_KEYS keys)."""
    D = q.shape[-1]
    return (_enabled[0] and not _failure and q.is_cuda and q.dtype in KERNEL_DTYPES and cache_k.dtype == q.dtype
            and q.shape[2] == 1 and D >= 16 and D & (D - 1) == 0
            and (not manual or (mask is None and length <= SHORT_KEYS)))


def reference(q: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor, length: int,
              mask: Optional[torch.Tensor], manual: bool = False) -> torch.Tensor:
    """The same attention in PyTorch's ops over the first `length` slots: `layers.manual_attention` (manual) or
    `layers.grouped_attention`."""
    from .model.layers import grouped_attention, manual_attention

    attention = manual_attention if manual else grouped_attention
    return attention(q, cache_k[:, :, :length], cache_v[:, :, :length], mask)


def attend(q: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor, length: int,
           mask: Optional[torch.Tensor], manual: bool = False) -> torch.Tensor:
    """q [B, H, 1, D] over the first `length` slots of a layer's cache (k, v [B, Hkv, capacity, D]) under `mask`
    [1 or B, 1, 1, length] (or None) → [B, H, 1, D]: the kernels where `kernel_takes` says so, else `reference`.
    `manual`: the fast AR's official attention."""
    kernels = _kernels() if kernel_takes(q, cache_k, length, mask, manual) else None
    if kernels is not None:
        try:
            if q.is_cuda and q.device.index != torch.cuda.current_device():  # Triton launches on the current one
                with torch.cuda.device(q.device):
                    return _run(kernels, q, cache_k, cache_v, length, mask, manual)
            return _run(kernels, q, cache_k, cache_v, length, mask, manual)
        except torch.OutOfMemoryError:
            raise
        except Exception as e:  # a Triton that cannot build the kernels for this GPU: PyTorch's ops still work
            _disable(e)
    return reference(q, cache_k, cache_v, length, mask, manual)


def reference_heads(qkv: torch.Tensor, rotation: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor,
                    slot: torch.Tensor, n_head: int, q_norm: Optional[torch.Tensor], k_norm: Optional[torch.Tensor],
                    eps: float) -> torch.Tensor:
    """`prepare_heads` in PyTorch's ops (`layers.split_heads`, then the cache write at the slots `slot` [1])."""
    from .model.layers import split_heads

    q, k, v = split_heads(qkv, rotation, n_head, cache_k.shape[1], q_norm, k_norm, eps)
    cache_k.index_copy_(2, slot, k)
    cache_v.index_copy_(2, slot, v)
    return q.contiguous()


def _heads_or_reference(qkv: torch.Tensor, rotation: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor,
                        slot: torch.Tensor, n_head: int, q_norm: Optional[torch.Tensor],
                        k_norm: Optional[torch.Tensor], eps: float) -> torch.Tensor:
    q = prepare_heads(qkv, rotation, cache_k, cache_v, slot, n_head, q_norm, k_norm, eps)
    if q is None:
        return reference_heads(qkv, rotation, cache_k, cache_v, slot, n_head, q_norm, k_norm, eps)
    return q


def _heads_op():
    """The custom op `fishs2::decode_heads` (PyTorch ≥ 2.4): the heads kernel inside compiled blocks, as one call
    that writes the caches in place. Registered once per process, like `fishs2::decode_attention`."""
    if not hasattr(torch.library, "custom_op"):
        return None
    try:
        return torch.ops.fishs2.decode_heads.default
    except AttributeError:
        pass
    op = torch.library.custom_op("fishs2::decode_heads", _heads_or_reference, mutates_args=("cache_k", "cache_v"))

    @op.register_fake
    def _(qkv, rotation, cache_k, cache_v, slot, n_head, q_norm=None, k_norm=None, eps=0.0):
        return qkv.new_empty(qkv.shape[0], n_head, 1, cache_k.shape[-1])

    return op


heads_op = _heads_op()


def decode_heads(qkv: torch.Tensor, rotation: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor,
                 slot: int | torch.Tensor, n_head: int, q_norm: Optional[torch.Tensor],
                 k_norm: Optional[torch.Tensor], eps: float) -> Optional[torch.Tensor]:
    """`prepare_heads`, through the op `fishs2::decode_heads` when compiling (a static step's slot, a device tensor;
    with an int slot compiled blocks keep the ops, None)."""
    if torch.compiler.is_compiling():
        if heads_op is None or not isinstance(slot, torch.Tensor):
            return None
        return heads_op(qkv, rotation, cache_k, cache_v, slot, n_head, q_norm, k_norm, eps)
    return prepare_heads(qkv, rotation, cache_k, cache_v, slot, n_head, q_norm, k_norm, eps)


def _run(kernels, q, cache_k, cache_v, length, mask, manual):
    decode, short = kernels
    pdl = matvec.launches_dependents(q.device)  # the matvec kernels' setting: one switch for a step's kernels
    return short(q, cache_k, cache_v, length, pdl) if manual else decode(q, cache_k, cache_v, length, mask, pdl)


def _attention_op():
    """The custom op `fishs2::decode_attention` (PyTorch ≥ 2.4), registered once per process (a second copy of this
    package, under a node pack's name, reuses the first one's)."""
    if not hasattr(torch.library, "custom_op"):
        return None
    try:
        return torch.ops.fishs2.decode_attention.default
    except AttributeError:
        pass
    op = torch.library.custom_op("fishs2::decode_attention", attend, mutates_args=())

    @op.register_fake
    def _(q, cache_k, cache_v, length, mask=None, manual=False):
        return q.new_empty(q.shape)  # contiguous, as every path returns it (q itself is a strided view)

    return op


attention_op = _attention_op()


def decode_attention(q: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor, length: int,
                     mask: Optional[torch.Tensor], manual: bool = False) -> torch.Tensor:
    """`attend`, through the opaque op when compiling (inductor would otherwise trace into the Triton launch)."""
    if attention_op is not None and torch.compiler.is_compiling():
        return attention_op(q, cache_k, cache_v, length, mask, manual)
    return attend(q, cache_k, cache_v, length, mask, manual)
