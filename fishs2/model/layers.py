"""Building blocks of the dual-AR transformers (spec §2.3-§2.5, §3.1, §8).

Numerics mirror the official model where it matters: the custom RMSNorm rounds back to the activation dtype
before the weight multiply, QK-norm uses PyTorch's built-in rms_norm, RoPE rotates interleaved pairs with
cos/sin tables rounded to bfloat16.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .. import decode_attention, matvec
from ..config import TransformerConfig


def project(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """F.linear(x, weight) without bias, except that decode rows on CUDA run the Triton matvec kernel, which beat
    cuBLAS's GEMV at the real architecture's shapes (`fishs2.matvec`)."""
    if not x.is_cuda:  # the CPU keeps the plain call: no dispatch per layer in its eager decode
        return F.linear(x, weight)
    return matvec.linear(x, weight)


class Linear(nn.Linear):
    """nn.Linear (the model's have no bias) through `project`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return project(x, self.weight)

    def matvec_operands(self) -> tuple[torch.Tensor, None]:
        """(weight, scales) for `fishs2.matvec`: this layer's weight, no scales."""
        return self.weight, None


class RMSNorm(nn.Module):
    """y = (x32 · rsqrt(mean(x32²) + eps)).to(x.dtype) · weight  (rounding happens before the weight)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.rms_norm without a weight computes in fp32 and rounds once to x's dtype: the official formula, bit for
        # bit (tests/test_perf_paths.py), in one kernel where PyTorch fuses it instead of a cast on either side.
        return F.rms_norm(x, x.shape[-1:], eps=self.eps) * self.weight


def rope_table(positions: torch.Tensor, head_dim: int, base: float) -> torch.Tensor:
    """cos/sin for `positions` [T] → [T, head_dim/2, 2], rounded to bf16 like the official table and kept in fp32,
    the dtype the rotation uses (so a forward needs no cast kernel).

    Each entry depends only on its own position, so building rows on demand equals slicing the official
    32768-row table.
    """
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=positions.device)[: head_dim // 2].float() / head_dim))
    angles = torch.outer(positions.float(), inv_freq)
    unit = torch.polar(torch.ones_like(angles), angles)
    return torch.stack([unit.real, unit.imag], dim=-1).to(torch.bfloat16).float()


def rope_rotation(table: torch.Tensor) -> torch.Tensor:
    """RoPE rows [T, D/2, 2] (or [B, T, D/2, 2]: positions per sequence) → (cos, sin) pairs [1 or B, T, 1, D/2, 2]
    in fp32. A transformer builds this once per forward and every layer shares it."""
    rotation = table.float().contiguous()
    return (rotation if rotation.dim() == 4 else rotation[None])[:, :, None]


def apply_rope(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (a, b) = (2i, 2i+1) of x [B, T, H, D] by `rope_rotation` [1 or B, T, 1, D/2, 2] in
    fp32: (a·cos − b·sin, b·cos + a·sin)."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    if torch.compiler.is_compiling():  # inductor fuses the real form into one kernel (it has no complex codegen)
        cos, sin = rotation[..., 0], rotation[..., 1]
        a, b = pairs[..., 0], pairs[..., 1]
        rotated = torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1)
    else:  # eager: the same product as one complex multiply instead of six elementwise kernels
        rotated = torch.view_as_real(torch.view_as_complex(pairs) * torch.view_as_complex(rotation))
    return rotated.flatten(3).type_as(x)


@dataclass
class AttentionMode:
    """How a decode step reads the cache (and the output head).

    The defaults are the fast path: the cache holds the request (prompt + max frames) and attention reads only the
    filled positions, with native GQA; the slow head computes only the ids a frame can take. `static()` reads the
    whole request-sized cache under a mask, so shapes stay fixed from frame to frame (what a CUDA graph needs).
    `official()` is the official formulation — the cache preallocated to the model's whole context, every position
    read under a mask, GQA by repeat_interleave, the whole vocabulary's logits then a −inf bias — kept as a
    switchable baseline for bench/.
    """

    filled_only: bool = True
    native_gqa: bool = True
    full_context: bool = False  # preallocate max_seq_len positions whatever the request
    manual: bool = False  # the official fast AR's hand-written attention, in the activation dtype
    full_head: bool = False  # decode logits over the whole vocabulary (else over the allowed ids only)

    @classmethod
    def static(cls) -> "AttentionMode":
        return cls(filled_only=False)

    @classmethod
    def official(cls) -> "AttentionMode":
        return cls(filled_only=False, native_gqa=False, full_context=True, full_head=True)


def split_heads(qkv: torch.Tensor, rotation: torch.Tensor, n_head: int, n_kv: int, q_norm: torch.Tensor | None,
                k_norm: torch.Tensor | None, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A wqkv projection [B, T, (n_head + 2·n_kv)·D] → q [B, n_head, T, D], k, v [B, n_kv, T, D]: q and k after
    QK-norm (when the norm weights [D] are given) and RoPE (`rope_rotation`)."""
    B, T, width = qkv.shape
    D = width // (n_head + 2 * n_kv)
    heads = [n_head, n_kv]
    qk = qkv[..., : (n_head + n_kv) * D].view(B, T, n_head + n_kv, D)
    v = qkv[..., (n_head + n_kv) * D :].view(B, T, n_kv, D)
    if q_norm is not None:
        q, k = qk.split(heads, dim=2)
        qk = torch.cat([F.rms_norm(q, (D,), q_norm, eps), F.rms_norm(k, (D,), k_norm, eps)], dim=2)
    # q and k heads side by side: one rotation instead of two (the same elementwise product per head)
    q, k = apply_rope(qk, rotation).split(heads, dim=2)
    return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)


class KVCache(nn.Module):
    """Keys/values of one layer: [B, n_local_heads, capacity, head_dim]; positions are written in place."""

    def __init__(self, batch: int, n_heads: int, capacity: int, head_dim: int, dtype: torch.dtype, device):
        super().__init__()
        shape = (batch, n_heads, capacity, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    def write(self, start: int | torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v: [B, H, T, D] for slots start … start+T-1, or for the slots of a device tensor `start` [T] (static
        decoding, where the position lives on the device)."""
        if isinstance(start, torch.Tensor):
            self.k.index_copy_(2, start, k)
            self.v.index_copy_(2, start, v)
        else:
            self.k[:, :, start : start + k.shape[2]] = k
            self.v[:, :, start : start + v.shape[2]] = v


class Attention(nn.Module):
    """Fused-QKV grouped-query attention with optional per-head QK-norm and interleaved RoPE."""

    def __init__(self, config: TransformerConfig, eps: float):
        super().__init__()
        self.config = config
        self.wqkv = Linear(config.dim, config.q_size + 2 * config.kv_size, bias=False)
        self.wo = Linear(config.q_size, config.dim, bias=False)
        if config.qk_norm:
            self.q_norm = nn.RMSNorm(config.head_dim, eps=eps)
            self.k_norm = nn.RMSNorm(config.head_dim, eps=eps)
        self.eps = eps

    def split_heads(self, qkv: torch.Tensor, rotation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The wqkv projection [B, T, q + 2·kv] → q [B, H, T, D], k, v [B, Hkv, T, D] (k after QK-norm and RoPE)."""
        c = self.config
        norms = (self.q_norm.weight, self.k_norm.weight) if c.qk_norm else (None, None)
        return split_heads(qkv, rotation, c.n_head, c.n_local_heads, *norms, self.eps)

    def forward(
        self,
        x: torch.Tensor,
        rotation: torch.Tensor,
        cache: KVCache,
        start: int | torch.Tensor,
        mode: AttentionMode,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """x [B, T, dim] in cache slots start … start+T-1 (or the slots of a device tensor `start` [T]) → [B, T, dim].
        `mask` comes from `attention_mask` (None: a causal prompt from slot 0, or one query over the filled cache)."""
        return self.wo(self.attend(self.wqkv(x), rotation, cache, start, mode, mask))

    def write_heads(self, qkv: torch.Tensor, rotation: torch.Tensor, cache: KVCache, start: int | torch.Tensor,
                    mode: AttentionMode) -> torch.Tensor:
        """The wqkv projection [B, T, q + 2·kv] → q [B, H, T, D] after QK-norm and RoPE; k and v go to the cache."""
        T = qkv.shape[1]
        if T == 1 and mode.native_gqa and decode_attention.heads_kernel_takes(qkv, cache.k, cache.v):  # CUDA
            norms = (self.q_norm.weight, self.k_norm.weight) if self.config.qk_norm else (None, None)
            q = decode_attention.decode_heads(qkv, rotation, cache.k, cache.v, start, self.config.n_head, *norms,
                                              self.eps)
            if q is not None:
                return q
        q, k, v = self.split_heads(qkv, rotation)
        cache.write(start, k, v)
        return q

    def attend(self, qkv: torch.Tensor, rotation: torch.Tensor, cache: KVCache, start: int | torch.Tensor,
               mode: AttentionMode, mask: torch.Tensor | None) -> torch.Tensor:
        """The wqkv projection [B, T, q + 2·kv] → the attention output before wo [B, T, q_size]; writes k and v to
        the cache (see `forward`)."""
        B, T, _ = qkv.shape
        q = self.write_heads(qkv, rotation, cache, start, mode)
        kv_len = mask.shape[-1] if mask is not None else start + T
        if (T == 1 and isinstance(kv_len, int) and mode.native_gqa
                and decode_attention.kernel_takes(q, cache.k, kv_len, mask, mode.manual)):  # CUDA: Triton kernels
            out = decode_attention.decode_attention(q, cache.k, cache.v, kv_len, mask, mode.manual)
            return out.transpose(1, 2).reshape(B, T, self.config.q_size)
        keys, values = cache.k[:, :, :kv_len], cache.v[:, :, :kv_len]
        causal = mask is None and T > 1
        if mode.manual:
            out = manual_attention(q, *((keys, values) if mode.native_gqa else expand_kv(keys, values, q.shape[1])),
                                   mask)
        elif not mode.native_gqa:
            out = F.scaled_dot_product_attention(q, *expand_kv(keys, values, q.shape[1]), attn_mask=mask)
        elif T == 1 or not mode.filled_only:  # decode: one matmul per KV head, no kernel launch per query head
            out = grouped_attention(q, keys, values, mask)
        else:
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, is_causal=causal, enable_gqa=True)
        return out.transpose(1, 2).reshape(B, T, self.config.q_size)


def expand_kv(keys: torch.Tensor, values: torch.Tensor, n_head: int) -> tuple[torch.Tensor, torch.Tensor]:
    """GQA the official way: copy each key/value head to every query head of its group."""
    group = n_head // keys.shape[1]
    return keys.repeat_interleave(group, dim=1), values.repeat_interleave(group, dim=1)


def grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """GQA without copying K/V: the query heads of a group attend to their shared key head in one matmul, so K and V
    are read once (memory-bound decode at long context reads them at full bandwidth).

    The scores are computed as K · qᵀ ([L, G·T]) rather than q · Kᵀ: with the long cache as the row-major left
    operand the CPU matmul streams it like a weight (1.2 ms less per frame at 8000 positions on `mid`, bench/).

    q [B, H, T, D], k/v [B, Hkv, L, D], mask [1, 1, T, L] or None → [B, H, T, D]. The softmax computes in float32
    whatever the input dtype (PyTorch's kernels accumulate in fp32) and rounds once to it.
    """
    B, H, T, D = q.shape
    Hkv, L = k.shape[1], k.shape[2]
    q = q.reshape(B, Hkv, H // Hkv * T, D) * (1.0 / math.sqrt(D))  # query heads of one group are adjacent
    scores = (k @ q.transpose(-2, -1)).transpose(-2, -1).view(B, Hkv, H // Hkv, T, L)
    if mask is not None:
        scores = torch.where(mask[:, :, None], scores, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return (probs.reshape(B, Hkv, -1, L) @ v).view(B, H, T, D)


def manual_attention(q, k, v, mask: torch.Tensor | None) -> torch.Tensor:
    """softmax(q kᵀ · 1/√D + bias) v with every product in the activation dtype (official fast-AR numerics).
    k/v may have fewer heads than q (GQA): each group of query heads meets its shared key head in one matmul, as in
    `grouped_attention`, instead of copying K and V per query head. mask None: every key is visible (the official
    bias would be all zeros, which adds nothing).

    q [B, H, T, D], k/v [B, Hkv, L, D], mask [1, 1, T, L] or None → [B, H, T, D].
    """
    B, H, T, D = q.shape
    Hkv, L = k.shape[1], k.shape[2]
    scores = (q.reshape(B, Hkv, H // Hkv * T, D) @ k.transpose(-2, -1)) * (1.0 / math.sqrt(D))
    if mask is not None:
        bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, float("-inf"))
        scores = (scores.view(B, Hkv, H // Hkv, T, L) + bias[:, :, None]).view(B, Hkv, -1, L)
    return (torch.softmax(scores, dim=-1) @ v).view(B, H, T, D)


def attention_mask(
    start: int | torch.Tensor, length: int, capacity: int, mode: AttentionMode, padding: torch.Tensor | None, device
) -> torch.Tensor | None:
    """The boolean mask [1 or B, 1, length, kv_len] (True: visible) that every layer of one forward shares, or None
    where attention needs none: a causal prompt from slot 0 (SDPA's is_causal) and one query over the filled cache.
    `start` is the first slot (int, or a device tensor [1] in static decoding); `padding` [B, 1, 1, capacity] marks
    the slots of left padding, which sequences of a batch with different prompt lengths begin with."""
    kv_len = start + length if mode.filled_only else capacity
    if padding is not None:
        return padded_causal_mask(start, length, padding[..., :kv_len])
    if mode.filled_only and (length == 1 or start == 0):
        return None
    return causal_mask(start, length, kv_len, device)


def causal_mask(start: int | torch.Tensor, length: int, kv_len: int, device) -> torch.Tensor:
    """Boolean [1, 1, length, kv_len]: query at position start+i sees keys 0 … start+i."""
    queries = (start + torch.arange(length, device=device))[:, None]
    keys = torch.arange(kv_len, device=device)[None, :]
    return (keys <= queries)[None, None]


def padded_causal_mask(start: int | torch.Tensor, length: int, padding: torch.Tensor) -> torch.Tensor:
    """Boolean [B, 1, length, kv_len]: the causal mask without the padding slots `padding` [B, 1, 1, kv_len]; a
    padding slot sees only itself, so that no softmax row is empty."""
    device = padding.device
    causal = causal_mask(start, length, padding.shape[-1], device)
    own = torch.arange(padding.shape[-1], device=device) == (start + torch.arange(length, device=device))[:, None]
    return (causal & ~padding) | own


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) ⊙ w3 x), with the checkpoint's w1 and w3 stacked into one matrix `w13` (rows of w1,
    then of w3; see `checkpoint.FUSED_ROWS`): one GEMM reads x once, and each output is the same dot product."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.w13 = Linear(config.dim, 2 * config.intermediate_size, bias=False)
        self.w2 = Linear(config.intermediate_size, config.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


def fuses_decode(x: torch.Tensor, layer: nn.Module) -> bool:
    """Whether rows x [..., K] into `layer` are decode rows that the CUDA matvec kernel takes (`fishs2.matvec`), so
    that the norm before the layer, SwiGLU and residual adds after it can run inside its call (`fused_linear`).
    Layers without `matvec_operands` (fp8) never fuse."""
    operands = getattr(layer, "matvec_operands", None)
    return operands is not None and matvec.kernel_takes(x.reshape(-1, x.shape[-1]), operands()[0])


def fused_linear(x: torch.Tensor, layer: nn.Module, norm: RMSNorm | None = None, swiglu: bool = False,
                 residual: torch.Tensor | None = None) -> torch.Tensor:
    """residual + SwiGLU(layer(norm(x))) — each part where given — as one call of the matvec kernel (`fishs2.matvec`;
    its GEMM fallback runs the same ops as the unfused modules)."""
    weight, scales = layer.matvec_operands()
    return matvec.linear(x, weight, scales, norm_weight=None if norm is None else norm.weight,
                         eps=0.0 if norm is None else norm.eps, swiglu=swiglu, residual=residual)


class TransformerBlock(nn.Module):
    """Pre-norm block: h = x + attn(norm(x)); out = h + ffn(norm(h))."""

    def __init__(self, config: TransformerConfig, eps: float):
        super().__init__()
        self.attention = Attention(config, eps)
        self.feed_forward = FeedForward(config)
        self.attention_norm = RMSNorm(config.dim, eps)
        self.ffn_norm = RMSNorm(config.dim, eps)

    def forward(self, x, rotation, cache: KVCache, start, mode: AttentionMode, mask) -> torch.Tensor:
        if fuses_decode(x, self.attention.wqkv):
            return self.fused_forward(x, rotation, cache, start, mode, mask)
        h = x + self.attention(self.attention_norm(x), rotation, cache, start, mode, mask)
        return h + self.feed_forward(self.ffn_norm(h))

    def fill_cache(self, x, rotation, cache: KVCache, start, mode: AttentionMode) -> None:
        """Only the part of `forward` that later positions read: k and v of x's positions into the cache. For a last
        layer whose output nobody uses (the fast AR's position 0): no attention, wo or feed-forward, which is most of
        a layer's weights. The cache holds what `forward` writes, bit for bit (the same projection and heads)."""
        attention = self.attention
        if fuses_decode(x, attention.wqkv):
            qkv = fused_linear(x, attention.wqkv, norm=self.attention_norm)
        else:
            qkv = attention.wqkv(self.attention_norm(x))
        attention.write_heads(qkv, rotation, cache, start, mode)

    def fused_forward(self, x, rotation, cache: KVCache, start, mode: AttentionMode, mask) -> torch.Tensor:
        """`forward` for decode rows on CUDA: the two RMSNorms, SwiGLU and the two residual adds run inside the
        block's four matvec calls, the same arithmetic in about eight fewer kernels per block (a frame runs 76)."""
        attention, ffn = self.attention, self.feed_forward
        qkv = fused_linear(x, attention.wqkv, norm=self.attention_norm)
        h = fused_linear(attention.attend(qkv, rotation, cache, start, mode, mask), attention.wo, residual=x)
        return fused_linear(fused_linear(h, ffn.w13, norm=self.ffn_norm, swiglu=True), ffn.w2, residual=h)


def frame_scale(num_codebooks: int) -> float:
    """Frame embeddings are divided by √(num_codebooks + 1) (spec §2.2)."""
    return math.sqrt(num_codebooks + 1)
