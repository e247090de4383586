"""A reference voice: codec codes of a clip + its transcript, stored as plain data (safetensors + json).

A voice file never holds code: the codes are a safetensors tensor, the transcript and metadata live in the
safetensors header and in a readable json sidecar. Files are written to a temporary name and renamed, so a crash
never leaves a half-written voice.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import AudioError, VoiceError

log = logging.getLogger(__name__)

FORMAT = "fishs2-voice/1"
MIN_SECONDS = 1.0
LONG_SECONDS = 30.0
MAX_SECONDS = 120.0  # longer clips are refused: they fill the context and cost minutes to encode
MAX_PEAK = 2.0  # float samples far outside [-1, 1] are integer PCM passed as float, not a loud recording
# Files that can carry pickled code; a voice is only ever read from safetensors.
PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt", ".npy", ".npz", ".joblib"}


def check_reference(mono: torch.Tensor, sample_rate: int) -> dict:
    """Reject reference audio that cannot carry a voice; returns its stats (duration s, peak, rms, clipped).

    Raises AudioError for clips shorter than 1 s or longer than 120 s, silence, a constant (DC) signal, samples
    far outside [−1, 1], or a clipped-only signal; warns above 30 s (longer clips cost context and rarely help).
    """
    x = mono.float()
    duration = x.numel() / sample_rate
    if duration < MIN_SECONDS:
        raise AudioError(f"reference audio: {duration:.2f} s is too short; give at least {MIN_SECONDS:.0f} s (10–30 s is best).")
    if duration > MAX_SECONDS:
        raise AudioError(
            f"reference audio: is {duration / 60:.1f} min long; at most {MAX_SECONDS:.0f} s can be used and 10–30 s "
            "is best — cut a clip of clean speech (and give its transcript)."
        )
    peak = float(x.abs().max())
    if peak > MAX_PEAK:
        raise AudioError(
            f"reference audio: samples reach {peak:.4g}, but float audio must lie in [−1, 1]; if these are 16-bit "
            "integer values stored as floats, divide them by 32768 (or pass the int16 array itself)."
        )
    centered = x - x.mean()
    rms = float(centered.pow(2).mean().sqrt())
    clipped = float((x.abs() >= 0.999).float().mean())
    if peak < 1e-4:
        raise AudioError("reference audio: is silent; record or pick a clip where the speaker talks.")
    if rms < 1e-4:
        raise AudioError("reference audio: is a constant (DC) signal with no sound; pick a clip with speech.")
    if clipped > 0.5:
        raise AudioError(
            f"reference audio: {clipped:.0%} of samples are clipped at full scale; it is distortion, not speech — "
            "use an unclipped recording."
        )
    if duration > LONG_SECONDS:
        log.warning("reference audio is %.1f s; 10–30 s is recommended, longer clips use more context", duration)
    return {"duration": duration, "peak": peak, "rms": rms, "clipped": clipped}


@dataclass
class Voice:
    codes: torch.Tensor  # [num_codebooks, T] int64
    text: str  # transcript of the reference clip
    name: str = ""
    metadata: dict = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return self.codes.shape[1]

    @property
    def label(self) -> str:
        return f"voice {self.name!r}" if self.name else "voice"

    def check_tensor(self) -> None:
        """Raise VoiceError unless the codes are an integer tensor [codebooks, frames ≥ 1] of values ≥ 0."""
        c = self.codes
        if not isinstance(c, torch.Tensor):
            raise VoiceError(f"{self.label}: codes must be a torch tensor [codebooks, frames], got "
                             f"{type(c).__name__}; make voices with encode_voice or Voice.load.")
        if c.dtype.is_floating_point or c.is_complex() or c.dtype == torch.bool or c.dim() != 2:
            raise VoiceError(f"{self.label}: codes must be an integer tensor [codebooks, frames], got {c.dtype} "
                             f"{list(c.shape)}; re-encode the voice with this model.")
        if c.shape[1] < 1:
            raise VoiceError(f"{self.label}: holds no frames; re-encode it from a longer clip.")
        if int(c.min()) < 0:
            raise VoiceError(f"{self.label}: holds negative codes ({int(c.min())}); re-encode the voice.")

    def check_codes(self, num_codebooks: int, codebook_size: int) -> None:
        """Raise VoiceError unless the codes fit a model with `num_codebooks` codebooks whose prompt embeds codes
        0 … codebook_size − 1 in each (the fast AR's vocabulary: the codec's residual codes stop at 1024 in S2 Pro,
        but a generated take, which may hold residual codes up to 4095, is a voice too)."""
        label = self.label
        self.check_tensor()
        c = self.codes
        if c.shape[0] != num_codebooks:
            raise VoiceError(f"{label}: has {c.shape[0]} codebooks, the model uses {num_codebooks}; re-encode the voice with this model.")
        if int(c.max()) >= codebook_size:
            raise VoiceError(
                f"{label}: code values {int(c.min())} … {int(c.max())} are out of range for this model (0 … "
                f"{codebook_size - 1}); re-encode the voice with this model."
            )

    def save(self, path: str | Path) -> Path:
        """Write `<path>` (.safetensors) and a `.json` sidecar atomically; returns the safetensors path."""
        from safetensors.torch import save_file

        self.check_tensor()
        for field_name, value in (("text", self.text), ("name", self.name)):
            if not isinstance(value, str):
                raise VoiceError(f"{self.label}: {field_name} must be a string, got {type(value).__name__}.")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise VoiceError(f"{self.label}: the {field_name} holds U+{ord(value[exc.start]):04X}, half of a "
                                 "character (broken unicode); type or paste it again.") from None
        path = voice_file(path)
        info = {"format": FORMAT, "name": self.name, "text": self.text, "metadata": self.metadata,
                "frames": self.num_frames, "codebooks": int(self.codes.shape[0])}
        try:
            header = {"fishs2": json.dumps(info, ensure_ascii=False, allow_nan=False)}
        except (TypeError, ValueError) as exc:
            raise VoiceError(f"{self.label}: metadata must be plain JSON data (text, finite numbers, lists, dicts): "
                             f"{exc}.") from exc
        try:
            if path.is_dir():
                raise IsADirectoryError(f"{path} is a folder")
            path.parent.mkdir(parents=True, exist_ok=True)
            codes = self.codes.to(torch.int64).contiguous()
            _atomic_write(path, lambda tmp: save_file({"codes": codes}, tmp, metadata=header))
            sidecar = path.with_suffix(".json")
            _atomic_write(sidecar, lambda tmp: Path(tmp).write_text(json.dumps(info, ensure_ascii=False, indent=2),
                                                                    encoding="utf-8"))
        except OSError as exc:
            raise VoiceError(f"{self.label}: cannot write {path} ({exc.strerror or exc}); pick a folder you can "
                             "write to.") from exc
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Voice":
        """Read a voice saved by `save` (only the safetensors file is needed)."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise VoiceError(
                f"{path}: refusing to load a {path.suffix} file as a voice — such files can run code when opened. "
                "fishs2 voices are .safetensors files (data only); encode the voice again from its audio."
            )
        path = voice_file(path)
        if not path.is_file():
            raise VoiceError(f"{path}: voice file not found; check the path or save the voice first.")
        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
                if "codes" not in f.keys():
                    raise VoiceError(f"{path}: not a fishs2 voice (no 'codes' tensor); encode the voice again.")
                codes = f.get_tensor("codes")
            if "fishs2" not in header:
                raise VoiceError(f"{path}: not a fishs2 voice (the file has no fishs2 header); encode the voice again "
                                 "and save it with fishs2.")
            info = json.loads(header["fishs2"])
        except VoiceError:
            raise
        except (SafetensorError, OSError, KeyError, ValueError, TypeError) as exc:  # JSONDecodeError is a ValueError
            raise VoiceError(f"{path}: not a readable fishs2 voice file ({exc}); save the voice again.") from exc
        if not isinstance(info, dict) or info.get("format") != FORMAT:
            found = info.get("format") if isinstance(info, dict) else type(info).__name__
            raise VoiceError(f"{path}: unknown voice format {found!r} (expected {FORMAT!r}); save the voice again.")
        text, name, metadata = info.get("text", ""), info.get("name", ""), info.get("metadata") or {}
        if not isinstance(text, str) or not isinstance(name, str) or not isinstance(metadata, dict):
            raise VoiceError(f"{path}: the voice header is damaged (text, name or metadata of the wrong type); "
                             "save the voice again.")
        if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool or codes.dim() != 2:
            raise VoiceError(f"{path}: codes must be an integer [codebooks, frames] tensor, got {codes.dtype} "
                             f"{list(codes.shape)}; save the voice again.")
        if codes.numel() == 0 or int(codes.min()) < 0:
            raise VoiceError(f"{path}: codes are empty or negative; the file is damaged — save the voice again.")
        return cls(codes=codes.to(torch.int64), text=text, name=name, metadata=dict(metadata))


def voice_file(path: str | Path) -> Path:
    """The .safetensors file of a voice path: `x.safetensors` as given, the sidecar `x.json` → `x.safetensors`, and
    any other name gets `.safetensors` appended: a dot inside a name is not a suffix (`Mr.Smith` →
    `Mr.Smith.safetensors`, never `Mr.safetensors`, which another voice may own)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return path
    if suffix == ".json":
        return path.with_suffix(".safetensors")
    return path.with_name(path.name + ".safetensors")


def _new_file_mode() -> int:
    """The mode a plain `open(path, "w")` would give a new file (0o666 less the umask): `mkstemp` makes 0o600."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _new_file_mode())  # readable like any other file the user writes (mkstemp's are private)
        with open(tmp, "rb+") as f:  # the data must be on disk before the rename makes it visible
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
