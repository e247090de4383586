"""Modded DAC codec of Fish Audio S2 Pro: 44.1 kHz audio ↔ codes [10, T] (spec §7)."""

from .config import CodecConfig, TransformerConfig
from .model import Codec, EncodeIntermediates, load_codec

__all__ = ["Codec", "CodecConfig", "EncodeIntermediates", "TransformerConfig", "load_codec"]
