"""How much memory a request needs: weights + KV cache + activations of the LLM, and the codec's (in bytes).

Used to ask a host application (ComfyUI) for memory before loading, and by bench/ to print the figures of the real
architecture. Every term is a closed formula over the config; `tests/test_memory.py` checks the sum against what a
scaled model actually allocates.

Not counted: on CUDA, the first request that meets a matrix shape on a machine tunes the decode kernel
(`fishs2.matvec_kernel`), and Triton's timing holds a 256 MiB buffer for that moment; later processes read the tuned
block sizes from Triton's cache. It is a one-off inside the 0.8 GiB that ComfyUI keeps free for inference
(`minimum_inference_memory`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .config import ModelConfig, TransformerConfig

GIB = 2**30
# Live tensors of the codec decoder's widest stage at its peak (block input, residual branch, Snake temporaries,
# padded conv input, conv output), in units of one stage activation; fitted to CPU fp32 measurements.
CODEC_LIVE_TENSORS = 8


def dtype_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def layer_linear_params(c: TransformerConfig) -> int:
    """Parameters of one transformer block's linear layers (wqkv, wo, w13 = w1 + w3, w2)."""
    return c.dim * (c.q_size + 2 * c.kv_size) + c.q_size * c.dim + 3 * c.dim * c.intermediate_size


def layer_norm_params(c: TransformerConfig) -> int:
    return 2 * c.dim + (2 * c.head_dim if c.qk_norm else 0)


@dataclass(frozen=True)
class ParameterCounts:
    """The model's parameters by how they are stored: linear layers (int8-quantisable), embedding tables, norms."""

    linear: int
    embedding: int
    norm: int

    @property
    def total(self) -> int:
        return self.linear + self.embedding + self.norm


def parameter_counts(config: ModelConfig) -> ParameterCounts:
    slow, fast = config.slow, config.fast
    linear = slow.n_layer * layer_linear_params(slow) + fast.n_layer * layer_linear_params(fast)
    linear += config.codebook_size * fast.dim  # fast output head
    embedding = config.vocab_size * slow.dim  # token table (also the slow output head when tied)
    if not config.tie_word_embeddings:
        linear += config.vocab_size * slow.dim
    embedding += config.num_codebooks * config.codebook_size * slow.dim + config.codebook_size * fast.dim
    norm = slow.n_layer * layer_norm_params(slow) + fast.n_layer * layer_norm_params(fast) + slow.dim + fast.dim
    return ParameterCounts(linear, embedding, norm)


def weight_bytes(config: ModelConfig, dtype: torch.dtype, int8: bool = False, fp8: bool = False) -> int:
    """Bytes of the LLM weights (`fishs2.quantize`). `int8`: linear layers and the token table as int8 with one
    `dtype` scale per output row. `fp8`: linear layers as float8 with one fp32 scale per output row (plus a unit
    scalar each); the token table stays in `dtype`."""
    counts = parameter_counts(config)
    size = dtype_bytes(dtype)
    if not (int8 or fp8):
        return counts.total * size
    slow, fast = config.slow, config.fast
    rows = slow.n_layer * (slow.q_size + 2 * slow.kv_size + 2 * slow.dim + 2 * slow.intermediate_size)
    rows += fast.n_layer * (fast.q_size + 2 * fast.kv_size + 2 * fast.dim + 2 * fast.intermediate_size)
    rows += config.codebook_size  # fast head
    if not config.tie_word_embeddings:
        rows += config.vocab_size  # separate slow head
    if fp8:
        linears = 4 * (slow.n_layer + fast.n_layer) + 1 + (0 if config.tie_word_embeddings else 1)  # w13 is one
        return counts.linear + rows * 4 + linears * 4 + (counts.embedding + counts.norm) * size
    rows += config.vocab_size  # token table
    token_table = config.vocab_size * slow.dim
    other = counts.embedding - token_table + counts.norm
    return counts.linear + token_table + rows * size + other * size


def kv_cache_bytes(config: ModelConfig, positions: int, batch: int = 1, dtype: torch.dtype = torch.bfloat16) -> int:
    """K and V of every slow layer for `positions` positions, plus the fast AR's cache of num_codebooks slots:
    2 · n_layer · n_local_heads · head_dim · positions · batch · bytes."""
    slow, fast = config.slow, config.fast
    size = dtype_bytes(dtype)
    slow_bytes = 2 * slow.n_layer * slow.n_local_heads * slow.head_dim * positions * batch * size
    fast_bytes = 2 * fast.n_layer * fast.n_local_heads * fast.head_dim * config.num_codebooks * batch * size
    return slow_bytes + fast_bytes


def request_state_bytes(config: ModelConfig, positions: int, batch: int, dtype: torch.dtype) -> int:
    """The rest of a request's state: the RoPE tables (fp32), the vocabulary bias and the slow head's rows of the
    ids a frame can take (semantic ids + stop token; int8 rows are smaller, this counts `dtype`)."""
    rope = (positions * config.slow.head_dim + config.num_codebooks * config.fast.head_dim) * 4
    head_rows = (config.codebook_size + 1) * config.slow.dim
    return rope + (config.vocab_size + head_rows) * dtype_bytes(dtype)


def activation_bytes(config: ModelConfig, prompt: int, batch: int, dtype: torch.dtype, chunk: int = 2048) -> int:
    """Peak working set of the slow AR's prefill (the decode step's is far smaller): per prompt position of one
    chunk, the larger of the embedding step (the K+1 per-codebook embeddings summed, input, output) and a block's
    FFN (input, residual, normed input, three intermediate_size tensors); plus one frame's logits and sampling
    buffers."""
    slow = config.slow
    size = dtype_bytes(dtype)
    positions = min(prompt, chunk) * batch
    per_position = max((config.num_codebooks + 4) * slow.dim, 3 * slow.dim + 3 * slow.intermediate_size)
    sampling = 8 * config.vocab_size * batch * 8  # sort values + int64 ids, cumsum, masks, probs, uniforms
    return positions * per_position * size + sampling


def codec_weight_bytes(codec_config=None, dtype: torch.dtype = torch.float32) -> int:
    from .codec import Codec, CodecConfig

    with torch.device("meta"):
        codec = Codec(codec_config or CodecConfig())
    return sum(p.numel() for p in codec.parameters()) * dtype_bytes(dtype)


def codec_activation_bytes(codec_config=None, window_frames: int = 138, dtype: torch.dtype = torch.float32) -> int:
    """Decoding a window of frames (`decode_chunked`: chunk + left context): the widest decoder stage times
    `CODEC_LIVE_TENSORS`."""
    from .codec import CodecConfig

    cfg = codec_config or CodecConfig()
    steps = math.prod(cfg.downsample_factor)  # decoder input steps per frame
    widest, dim = cfg.latent_dim * steps, cfg.decoder_dim
    widest = max(widest, dim * steps)
    for stride in cfg.decoder_rates:
        dim, steps = dim // 2, steps * stride
        widest = max(widest, dim * steps)
    return CODEC_LIVE_TENSORS * widest * window_frames * dtype_bytes(dtype)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per component; `llm` is what the LLM's device needs, `total` adds the codec."""

    weights: int
    kv_cache: int
    activations: int
    codec_weights: int
    codec_activations: int

    @property
    def llm(self) -> int:
        return self.weights + self.kv_cache + self.activations

    @property
    def total(self) -> int:
        return self.llm + self.codec_weights + self.codec_activations

    def describe(self) -> str:
        parts = [("weights", self.weights), ("KV cache", self.kv_cache), ("activations", self.activations),
                 ("codec weights", self.codec_weights), ("codec activations", self.codec_activations),
                 ("total", self.total)]
        return ", ".join(f"{name} {value / GIB:.2f} GiB" for name, value in parts)


def estimate_memory(
    config: ModelConfig,
    positions: int,
    *,
    prompt: int | None = None,
    batch: int = 1,
    dtype: torch.dtype = torch.bfloat16,
    int8: bool = False,
    fp8: bool = False,
    codec_config=None,
    codec_dtype: torch.dtype = torch.float32,
    codec_window_frames: int | None = 138,
    prefill_chunk: int = 2048,
) -> MemoryEstimate:
    """Memory of a request holding `positions` positions (prompt + max frames) per sequence, `prompt` of them
    prefilled (default: all). `codec_window_frames=None` leaves the codec out (it may live on another device)."""
    prompt = positions if prompt is None else prompt
    codec = codec_window_frames is not None
    return MemoryEstimate(
        weights=weight_bytes(config, dtype, int8, fp8),
        kv_cache=kv_cache_bytes(config, positions, batch, dtype) + request_state_bytes(config, positions, batch, dtype),
        activations=activation_bytes(config, prompt, batch, dtype, prefill_chunk),
        codec_weights=codec_weight_bytes(codec_config, codec_dtype) if codec else 0,
        codec_activations=codec_activation_bytes(codec_config, codec_window_frames, codec_dtype) if codec else 0,
    )
