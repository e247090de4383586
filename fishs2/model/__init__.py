"""Dual-AR transformer: `slow` (sequence) + `fast` (codebooks within a frame)."""

from .dual_ar import DualAR
from .layers import AttentionMode

__all__ = ["DualAR", "AttentionMode"]
