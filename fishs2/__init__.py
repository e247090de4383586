"""fishs2: an independent PyTorch engine for Fish Audio S2 Pro text-to-speech.

`from fishs2 import FishS2, Voice` loads lazily, so importing the package does not import torch.
"""

__all__ = ["FishS2", "Voice"]


def __getattr__(name):
    if name == "FishS2":
        from .pipeline import FishS2

        return FishS2
    if name == "Voice":
        from .voice import Voice

        return Voice
    raise AttributeError(f"module 'fishs2' has no attribute {name!r}")
