"""FISH_S2_MODEL: the loaded engine wrapped in ComfyUI ModelPatchers, so ComfyUI's model management moves it to
the GPU when a node needs it and can offload it when another model (e.g. a video model) needs the memory.

Imported lazily from `execute` only: this module imports torch and ComfyUI's model management.
The LLM and the codec are two patchers: Generate loads the LLM, the voice encoder and Decode load the codec.
Both are loaded whole (`force_full_load`): their layers are plain torch modules, not ComfyUI's cast-on-the-fly
ops, so a partial (lowvram) load would leave some layers on the CPU. Eviction still works: when another model
needs the memory, ComfyUI detaches ours back to the offload device.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

import comfy.model_management as mm
from comfy.model_patcher import ModelPatcher

from ._engine import engine

log = logging.getLogger("fishs2")

ATTENTION = ("fast", "official")


class _Holder(nn.Module):
    """A plain container ComfyUI may annotate (it sets `device` and bookkeeping attributes on the patched module;
    the engine's modules derive their device from their weights and must not be written to)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        first = next(inner.parameters(), None)
        self.device = first.device if first is not None else torch.device("cpu")


class FishS2Handle:
    """What travels on FISH_S2_MODEL: the engine object plus one ModelPatcher per sub-model.

    The executor caches the loader's output, so every downstream node shares this one object; nothing is kept in
    module globals. Dropping the loader node (or changing its inputs) frees it.
    """

    def __init__(self, tts, source: str, dtype_name: str, attention: str = "fast"):
        self.tts = tts
        self.source = source
        self.dtype_name = dtype_name
        self.attention = attention
        load_device = mm.get_torch_device()
        self.llm_patcher = ModelPatcher(_Holder(tts.model), load_device=load_device, offload_device=mm.unet_offload_device())
        self.codec_patcher = ModelPatcher(_Holder(tts.codec), load_device=load_device, offload_device=mm.vae_offload_device())

    def __repr__(self) -> str:
        return f"FishS2Handle({self.source!r}, dtype={self.dtype_name}, attention={self.attention}, device={self.tts.device})"

    @property
    def sample_rate(self) -> int:
        return int(self.tts.sample_rate)

    @property
    def attention_mode(self):
        """The engine's AttentionMode for the chosen attention option."""
        AttentionMode = engine("model").AttentionMode
        return AttentionMode.official() if self.attention == "official" else AttentionMode()

    def llm_extra_bytes(self, max_frames: int, prompt_len: int) -> int:
        """Bytes beyond the LLM weights that a generation of `max_frames` needs: KV cache + activations."""
        config = self.tts.config
        positions = prompt_len + max_frames
        if self.attention == "official":
            positions = config.max_seq_len  # the official formulation preallocates the whole context
        elif mm.get_torch_device().type == "cuda":  # the CUDA-graph decoder rounds its cache up to a bucket
            positions = engine("generate").static_capacity(min(positions, config.max_seq_len), config.max_seq_len)
        estimate = engine("memory").estimate_memory(
            config, min(positions, config.max_seq_len), prompt=min(prompt_len, config.max_seq_len),
            dtype=self.tts.dtype, int8=self.tts.int8, fp8=self.tts.fp8, codec_window_frames=None,
        )
        return int(estimate.kv_cache + estimate.activations)

    def use_llm(self, max_frames: int, prompt_len: int, takes: int = 1, preview_frames: int = 0) -> None:
        """Put the LLM on ComfyUI's compute device, reserving room for the KV cache of this request (one cache per
        take: takes are generated as one batch). With `preview_frames` (live preview) the codec is loaded in the
        same call, with room to decode that many frames at once, so loading one never evicts the other."""
        models = [self.llm_patcher]
        required = self.llm_extra_bytes(max_frames, prompt_len) * max(1, int(takes))
        if preview_frames:
            models.append(self.codec_patcher)
            required += self.codec_extra_bytes(preview_frames)
        mm.load_models_gpu(models, memory_required=required, force_full_load=True)

    @staticmethod
    def codec_extra_bytes(frames: int) -> int:
        """Bytes of codec activations for decoding `frames` frames at once."""
        per_frame = 2048 * 4 * 64  # generous: float32 activations of a 64-channel stack per output sample
        return int(frames) * per_frame

    def use_codec(self, frames: int = 0) -> None:
        """Put the codec on ComfyUI's compute device (activations scale with the clip length in frames)."""
        mm.load_models_gpu([self.codec_patcher], memory_required=self.codec_extra_bytes(frames), force_full_load=True)


def resolve_dtype(name: str, device: torch.device):
    """"auto" (and "int8"/"fp8", whose activations follow auto) → what ComfyUI recommends for the compute device
    (bf16, else fp16, else fp32)."""
    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if name in table:
        return table[name]
    if name not in ("auto", "int8", "fp8"):
        raise ValueError(f"dtype: {name!r} is not one of auto, bf16, fp16, fp32, int8, fp8.")
    if device.type == "cpu":
        return torch.float32
    if mm.should_use_bf16(device):
        return torch.bfloat16
    if mm.should_use_fp16(device):
        return torch.float16
    return torch.float32


def load_handle(source: str, dtype_name: str, attention: str = "fast", models_dir: str | None = None,
                models_root=None, compile: bool = False) -> FishS2Handle:
    """Load a checkpoint directory or hub id onto ComfyUI's offload device; download progress goes to the UI."""
    import comfy.utils

    FishS2 = engine("pipeline").FishS2

    device = mm.get_torch_device()
    dtype = resolve_dtype(dtype_name, device)
    if dtype_name == "fp8" and not engine("quantize").fp8_supported(device):
        # checked against the compute device: the model is loaded on the offload device and moved there later
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"the {device.type}"
        raise engine("errors").ParameterError(
            f"dtype: fp8 needs a GPU with fp8 matmuls (NVIDIA compute capability 8.9 or newer: RTX 40xx/50xx, L4, "
            f"L40, H100, H200); {name} has none. Choose int8 for the same memory saving."
        )
    bar = comfy.utils.ProgressBar(100)
    megabyte = 1 << 20

    def progress(done: int, total: int) -> None:
        if total > 0:
            bar.update_absolute(max(0, min(done, total)) // megabyte, max(1, total // megabyte))
        mm.throw_exception_if_processing_interrupted()

    if attention not in ATTENTION:
        raise ValueError(f"attention: {attention!r} is not one of {', '.join(ATTENTION)}.")
    tts = FishS2.from_pretrained(source, device=mm.unet_offload_device(), dtype=dtype, models_dir=models_dir,
                                 progress=progress, models_root=models_root, int8=dtype_name == "int8",
                                 fp8=dtype_name == "fp8", compile=compile)
    log.info("fishs2: loaded %s (%s, %s attention%s) on %s", source, dtype, attention,
             ", compiled" if compile else "", tts.device)
    return FishS2Handle(tts, source, dtype_name, attention)
