"""Errors raised for user mistakes: each names the input that was wrong and how to fix it."""


class FishS2Error(Exception):
    """Base class of every error the engine raises on purpose."""


class CheckpointError(FishS2Error):
    """A model directory, shard, config or codec file is missing, corrupt or does not match."""


class TextError(FishS2Error, ValueError):
    """Text, tags or a script could not be turned into a prompt."""


class AudioError(FishS2Error, ValueError):
    """Reference audio could not be read or is unusable (silent, too short, non-finite, ...)."""


class CodesError(FishS2Error, ValueError):
    """A code matrix has the wrong shape, dtype or out-of-range indices."""


class ParameterError(FishS2Error, ValueError):
    """A generation parameter (temperature, top_p, top_k, max_frames, seed, ...) is out of range."""


class VoiceError(FishS2Error, ValueError):
    """A saved voice is missing, corrupt, or does not fit the loaded model."""


class OutOfMemoryError(FishS2Error, MemoryError):
    """The device ran out of memory; the message names the setting to lower. Caches were freed before raising."""
