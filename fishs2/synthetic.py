"""Random checkpoints in the official `fishaudio/s2-pro` layout, for tests and benchmarks.

The files are exactly what the real loader reads (config.json in the `fish_qwen3_omni` schema, sharded safetensors
with the official key names, a byte-level BPE tokenizer.json with the S2 special-token layout, codec.pth), so
tests exercise the real loading code without downloading anything.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

QWEN_EXTRAS = [
    "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>",
    "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>", "</think>",
]
FISH_SPECIALS = [
    "<|pad|>", "<|phoneme_start|>", "<|phoneme_end|>", "<|text|>", "<|voice|>", "<|interleave|>",
    "<|audio_start|>", "<|audio_end|>", "<|audio_pad|>",
]
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
TRAINING_TEXT = [
    "Hello world! This is a small test of the speech model, with some words and numbers 0123456789.",
    "The quick brown fox jumps over the lazy dog. [whisper] Can you hear me? [laughing] Yes I can.",
    "<|speaker:0|>Hi, how are you today?<|speaker:1|>I am fine, thank you very much. café 你好 ñ ü",
]


@dataclass(frozen=True)
class Sizes:
    """Architecture of a synthetic checkpoint (defaults: a tiny one; the real model is dim 2560, 36/4 layers)."""

    dim: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_local_heads: int = 2
    head_dim: int = 32
    intermediate_size: int = 160
    n_fast_layer: int = 2
    codebook_size: int = 64
    num_codebooks: int = 10
    max_seq_len: int = 4096


def write_tokenizer(directory: Path, num_semantic: int, bpe_vocab: int = 400) -> int:
    """Train a small byte-level BPE and append the S2 special tokens; returns the tokenizer length."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(TRAINING_TEXT, trainer)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *QWEN_EXTRAS, *FISH_SPECIALS]
    specials += [f"<|semantic:{i}|>" for i in range(num_semantic)]
    tok.add_special_tokens(specials)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "special_tokens_map.json").write_text(json.dumps(
        {"additional_special_tokens": ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>", *FISH_SPECIALS[1:],
                                       *specials[-num_semantic:]],
         "eos_token": "<|im_end|>", "pad_token": "<|pad|>"}))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>", "pad_token": "<|pad|>"}))
    return tok.get_vocab_size(with_added_tokens=True)


def config_dict(sizes: Sizes, vocab_size: int, semantic_begin: int, eos_id: int, pad_id: int, dtype: str) -> dict:
    s = sizes
    common = {"attention_o_bias": False, "attention_qkv_bias": False, "dropout": 0.0, "head_dim": s.head_dim,
              "n_head": s.n_head, "n_local_heads": s.n_local_heads, "intermediate_size": s.intermediate_size,
              "norm_eps": 1e-6, "rope_base": 1000000, "dim": s.dim, "use_moe": False}
    return {
        "model_type": "fish_qwen3_omni",
        "dtype": dtype,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "audio_pad_token_id": semantic_begin - 1,
        "semantic_start_token_id": semantic_begin,
        "semantic_end_token_id": semantic_begin + s.codebook_size - 1,
        "text_config": {**common, "model_type": "fish_qwen3", "n_layer": s.n_layer, "attention_qk_norm": True,
                        "max_seq_len": s.max_seq_len, "tie_word_embeddings": True, "vocab_size": vocab_size},
        "audio_decoder_config": {**common, "model_type": "fish_qwen3_audio_decoder", "n_layer": s.n_fast_layer,
                                 "attention_qk_norm": False, "max_seq_len": s.num_codebooks + 1,
                                 "num_codebooks": s.num_codebooks, "vocab_size": s.codebook_size,
                                 "text_dim": s.dim, "tie_word_embeddings": False},
    }


def random_weights(sizes: Sizes, vocab_size: int, seed: int) -> dict[str, torch.Tensor]:
    """Official key names → float32 tensors; norms near 1, embeddings 0.5·N(0,1), linears N(0,1)/√fan_in."""
    s = sizes
    g = torch.Generator().manual_seed(seed)

    def normal(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale

    def linear(out_features, in_features):
        return normal(out_features, in_features, scale=1 / math.sqrt(in_features))

    def norm(n):
        return 1 + normal(n, scale=0.15)

    qkv = (s.n_head + 2 * s.n_local_heads) * s.head_dim
    weights = {"text_model.model.embeddings.weight": normal(vocab_size, s.dim, scale=0.5),
               "text_model.model.norm.weight": norm(s.dim)}
    for prefix, layers, qk_norm in (("text_model.model", s.n_layer, True), ("audio_decoder", s.n_fast_layer, False)):
        for i in range(layers):
            p = f"{prefix}.layers.{i}."
            weights[p + "attention.wqkv.weight"] = linear(qkv, s.dim)
            weights[p + "attention.wo.weight"] = linear(s.dim, s.n_head * s.head_dim)
            if qk_norm:
                weights[p + "attention.q_norm.weight"] = norm(s.head_dim)
                weights[p + "attention.k_norm.weight"] = norm(s.head_dim)
            weights[p + "attention_norm.weight"] = norm(s.dim)
            weights[p + "ffn_norm.weight"] = norm(s.dim)
            weights[p + "feed_forward.w1.weight"] = linear(s.intermediate_size, s.dim)
            weights[p + "feed_forward.w3.weight"] = linear(s.intermediate_size, s.dim)
            weights[p + "feed_forward.w2.weight"] = linear(s.dim, s.intermediate_size)
    weights["audio_decoder.codebook_embeddings.weight"] = normal(s.codebook_size * s.num_codebooks, s.dim, scale=0.5)
    weights["audio_decoder.embeddings.weight"] = normal(s.codebook_size, s.dim, scale=0.5)
    weights["audio_decoder.norm.weight"] = norm(s.dim)
    weights["audio_decoder.output.weight"] = linear(s.codebook_size, s.dim) * 2
    return weights


def write_checkpoint(
    directory: str | Path,
    codec_from: str | Path,
    sizes: Sizes = Sizes(),
    *,
    dtype: torch.dtype = torch.float32,
    shards: int = 2,
    seed: int = 0,
) -> Path:
    """Write a random checkpoint into `directory`; the codec files (codec.pth and an optional
    modded_dac_vq.json) are copied from the directory `codec_from`."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    length = write_tokenizer(directory, sizes.codebook_size)
    vocab_size = -(-length // 8) * 8
    semantic_begin = length - sizes.codebook_size
    bpe = length - sizes.codebook_size - 3 - len(QWEN_EXTRAS) - len(FISH_SPECIALS)
    eos_id, pad_id = bpe + 2, bpe + 3 + len(QWEN_EXTRAS)
    dtype_name = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[dtype]
    config = config_dict(sizes, vocab_size, semantic_begin, eos_id, pad_id, dtype_name)
    (directory / "config.json").write_text(json.dumps(config, indent=2))

    weights = {k: v.to(dtype).contiguous() for k, v in random_weights(sizes, vocab_size, seed).items()}
    names = sorted(weights)
    if shards <= 1:
        save_file(weights, str(directory / "model.safetensors"))
    else:
        weight_map = {}
        for i in range(shards):
            shard = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            part = names[i::shards]
            save_file({k: weights[k] for k in part}, str(directory / shard))
            weight_map.update({k: shard for k in part})
        total = sum(t.numel() * t.element_size() for t in weights.values())
        (directory / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    codec_from = Path(codec_from)
    shutil.copy(codec_from / "codec.pth", directory / "codec.pth")
    if (codec_from / "modded_dac_vq.json").is_file():
        shutil.copy(codec_from / "modded_dac_vq.json", directory / "modded_dac_vq.json")
    return directory
