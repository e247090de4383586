"""Fish S2 Load Model: a checkpoint folder under `models/fish_s2/` (or the hub download) → FISH_S2_MODEL."""

from __future__ import annotations

import os

from comfy_api.latest import io

from . import paths
from .types import CATEGORY, FishS2Model

DTYPES = ["auto", "bf16", "fp16", "fp32", "int8", "fp8"]
ATTENTION = ["fast", "official"]


class FishS2LoadModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        choices = paths.list_checkpoints() + [paths.DOWNLOAD_CHOICE]
        return io.Schema(
            node_id="FishS2LoadModel",
            display_name="Fish S2 Load Model",
            category=CATEGORY,
            description=(
                "Loads a Fish Audio S2 Pro checkpoint (LLM + tokenizer + codec) once for every Fish S2 node. "
                "ComfyUI moves it to the GPU when it is used and can offload it when other models need the memory."
            ),
            inputs=[
                io.Combo.Input(
                    "checkpoint",
                    options=choices,
                    default=choices[0],
                    tooltip=(
                        "A checkpoint folder in models/fish_s2/ (official layout: config.json, model*.safetensors, "
                        f"tokenizer.json, codec.pth), or '{paths.DOWNLOAD_CHOICE}' to download it into "
                        "models/fish_s2/s2-pro on first use."
                    ),
                ),
                io.Combo.Input(
                    "dtype",
                    options=DTYPES,
                    default="auto",
                    tooltip=(
                        "Weight precision of the LLM. auto: bf16 on GPUs that support it, else fp16; fp32 on CPU. "
                        "int8: int8 weights (about half the VRAM of bf16: fits 12 GB cards), activations as auto; "
                        "also the fastest on GPUs (H100: 205 against 148 frames/s), with a small loss of accuracy "
                        "(measured on random weights of the real architecture: logits 2.5% off bf16's). "
                        "fp8: float8 weights and matmuls, about int8's VRAM, for GPUs with fp8 tensor cores "
                        "(RTX 40xx/50xx, L4, L40, H100, H200); refused on other GPUs."
                    ),
                ),
                io.Combo.Input(
                    "attention",
                    options=ATTENTION,
                    default="fast",
                    tooltip=(
                        "fast: the KV cache is sized to each request and attention reads only its filled part. "
                        "official: the reference formulation (whole-context cache under a mask) - slower and far "
                        "more memory; for comparisons."
                    ),
                ),
                io.Boolean.Input(
                    "compile",
                    default=False,
                    optional=True,
                    tooltip=(
                        "Compile the model with torch.compile (CUDA GPUs; bf16, fp16 or int8 weights). The first "
                        "generation waits for the compile (25-40 s on an H100; cached on disk for later runs), and "
                        "on an H100 decoding is then no faster than without it (the default path's own decode "
                        "kernels do the same work): leave it off. For speed, pick dtype int8. Needs a working Triton."
                    ),
                ),
            ],
            outputs=[FishS2Model.Output(display_name="model", tooltip="The loaded S2 Pro model.")],
        )

    @classmethod
    def fingerprint_inputs(cls, checkpoint, dtype, attention="fast", compile=False):
        """Reload when the files of the checkpoint folder change (size and modification time)."""
        if checkpoint == paths.DOWNLOAD_CHOICE:
            return checkpoint
        try:
            folder = paths.checkpoint_path(checkpoint)
        except (ValueError, FileNotFoundError):
            return checkpoint
        stamp = []
        for name in sorted(os.listdir(folder)):
            st = os.stat(os.path.join(folder, name))
            stamp.append(f"{name}:{st.st_size}:{st.st_mtime_ns}")
        return "|".join(stamp)

    @classmethod
    def execute(cls, checkpoint, dtype, attention="fast", compile=False) -> io.NodeOutput:
        from .model_management import load_handle

        if checkpoint == paths.DOWNLOAD_CHOICE:
            handle = load_handle(paths.HUB_ID, dtype, attention, models_dir=paths.download_dir(), compile=compile)
        else:
            # models_root: a checkpoint folder that is a symlink out of the model folders is refused.
            handle = load_handle(paths.checkpoint_path(checkpoint), dtype, attention, models_root=paths.model_roots(),
                                 compile=compile)
        return io.NodeOutput(handle)
