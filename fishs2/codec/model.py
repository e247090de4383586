"""`Codec`: the modded DAC as one module (encode audio → codes, decode codes → audio) and its loader."""

from __future__ import annotations

import math
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import AudioError, CheckpointError, CodesError
from .config import CodecConfig
from .decoder import Decoder
from .encoder import Encoder
from .layers import fold_weight_norm
from .quantizer import DownsampleResidualVectorQuantize

CODEC_WEIGHTS = "codec.pth"
CODEC_CONFIG = "modded_dac_vq.json"


@dataclass(frozen=True)
class EncodeIntermediates:
    """Every step of one encode call (the official `DAC.encode` internals)."""

    encoder_out: Tensor  # [B, latent_dim, 4T] encoder output for the right-padded audio
    quantizer_z: Tensor  # [B, latent_dim, 4T] quantised latent after post_module + upsample
    codes: Tensor  # [B, num_codebooks, T] int64
    lengths: Tensor  # [B] int64, valid frames per item


class Codec(nn.Module):
    """Fish Audio S2 Pro codec: 44.1 kHz mono audio ↔ codes [B, 10, T], 2048 samples per frame.

    Every layer is causal, so frame t of the audio depends only on codes 0 … t.
    """

    def __init__(self, config: CodecConfig | None = None) -> None:
        super().__init__()
        self.config = config or CodecConfig()
        self.encoder = Encoder(self.config)
        self.quantizer = DownsampleResidualVectorQuantize(self.config)
        self.decoder = Decoder(self.config)

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def frame_length(self) -> int:
        return self.config.frame_length

    @property
    def num_codebooks(self) -> int:
        return self.config.num_codebooks

    @property
    def semantic_codebook_size(self) -> int:
        return self.config.semantic_codebook_size

    @property
    def codebook_size(self) -> int:
        """Size of each residual codebook (rows 1 … 9)."""
        return self.config.codebook_size

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.model[0].conv.bias.dtype

    @property
    def device(self) -> torch.device:
        return self.decoder.model[0].conv.bias.device

    def fold_weight_norm(self) -> "Codec":
        """Compute every weight-normed conv's weight once instead of at each call (`layers.fold_weight_norm`);
        outputs are unchanged. `load_codec` does this after loading; a folded codec cannot load (g, V) weights."""
        fold_weight_norm(self)
        return self

    # ------------------------------------------------------------------ encode

    @torch.no_grad()
    def encode(self, audio: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Audio [B, 1, L] or [B, L] at 44.1 kHz → (codes int64 [B, 10, ceil(L/2048)], lengths int64 [B]).

        `lengths` gives the valid samples of each item of a zero-padded batch (default: all L);
        the returned lengths are the matching frame counts.
        """
        padded, lengths = self._pad_audio(audio, lengths)
        _, codes = self.quantizer.quantize(self.encoder(padded))
        return codes, lengths

    @torch.no_grad()
    def encode_intermediates(self, audio: Tensor, lengths: Tensor | None = None) -> EncodeIntermediates:
        """Like `encode`, also returning the encoder output and the quantizer's re-upsampled latent."""
        padded, lengths = self._pad_audio(audio, lengths)
        encoder_out = self.encoder(padded)
        quantizer_z, codes = self.quantizer(encoder_out)
        return EncodeIntermediates(encoder_out, quantizer_z, codes, lengths)

    def _pad_audio(self, audio: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
        """Check audio, add the channel axis, right-pad with zeros to whole frames; frame lengths."""
        if not isinstance(audio, Tensor) or not audio.is_floating_point():
            raise AudioError("codec input audio must be a floating-point torch tensor")
        if audio.dim() == 2:
            audio = audio[:, None]
        if audio.dim() != 3 or audio.shape[1] != 1:
            raise AudioError(f"codec input audio must be [B, 1, L] or [B, L] (mono), got {list(audio.shape)}")
        batch, _, length = audio.shape
        if batch == 0 or length == 0:
            raise AudioError(f"codec input audio is empty: {list(audio.shape)}")
        if lengths is None:
            lengths = torch.full((batch,), length, dtype=torch.long)
        lengths = torch.as_tensor(lengths, dtype=torch.long).cpu()
        if lengths.shape != (batch,) or bool((lengths < 1).any()) or bool((lengths > length).any()):
            raise AudioError(f"lengths must be [B={batch}] values in 1..{length}, got {lengths.tolist()}")
        padded = torch.nn.functional.pad(audio, (0, -length % self.frame_length))
        frames = torch.div(lengths + self.frame_length - 1, self.frame_length, rounding_mode="floor")
        return padded.to(self.device, self.dtype), frames

    # ------------------------------------------------------------------ decode

    def prepare_codes(self, codes: Tensor) -> Tensor:
        """Validate codes [B, 10, T] or [10, T]; return a clamped int64 copy [B, 10, T] on the codec device.

        Like the official decoder, codes above a codebook's size are clamped to its last entry
        (row 0 to semantic_codebook_size − 1, rows 1 … to codebook_size − 1); the caller's tensor is
        never modified.
        """
        if not isinstance(codes, Tensor):
            raise CodesError(f"codes must be a torch tensor, got {type(codes).__name__}")
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise CodesError(f"codes must have an integer dtype, got {codes.dtype}")
        if codes.dim() == 2:
            codes = codes[None]
        if codes.dim() != 3 or codes.shape[1] != self.num_codebooks:
            raise CodesError(
                f"codes must be [B, {self.num_codebooks}, T] or [{self.num_codebooks}, T], "
                f"got {list(codes.shape)}"
            )
        if codes.shape[0] == 0 or codes.shape[2] == 0:
            raise CodesError(f"codes must hold at least one frame, got {list(codes.shape)}")
        if bool((codes < 0).any()):
            raise CodesError(f"codes must not be negative (min {int(codes.min())})")
        limits = torch.tensor(
            [self.semantic_codebook_size - 1] + [self.codebook_size - 1] * (self.num_codebooks - 1),
            device=codes.device,
        )
        return torch.minimum(codes.long(), limits[:, None]).to(self.device)

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """Codes [B, 10, T] or [10, T] → float32 audio [B, 1, 2048·T] in [−1, 1] (B = 1 for 2-D codes)."""
        return self.decode_latent(self.quantizer.decode(self.prepare_codes(codes)))

    @torch.no_grad()
    def decode_latent(self, z: Tensor) -> Tensor:
        """Decoder input [B, latent_dim, 4T] (from `quantizer.decode`) → float32 audio [B, 1, 2048·T]."""
        return self.decoder(z.to(self.dtype)).float()

    @property
    def conv_context_frames(self) -> int:
        """Past code frames that the convolutions after the transformer (upsample + decoder) can see.

        Decoding a window with at least this many frames of left context gives the same audio for
        the rest of the window as decoding everything.
        """
        return _conv_receptive_field_frames(self.config)

    @torch.no_grad()
    def decode_chunked(
        self, codes: Tensor, chunk_frames: int = 128, left_context_frames: int | None = None
    ) -> Tensor:
        """`decode` with bounded memory for long code sequences.

        The latent and the post-transformer run over the whole sequence (cheap; attention memory is
        bounded by its window), then the convolution stack runs on windows of `chunk_frames` new
        frames plus `left_context_frames` earlier ones (default `conv_context_frames`, which makes
        the result equal to `decode` up to float rounding). A smaller context trades accuracy at
        chunk seams for speed.
        """
        if chunk_frames < 1:
            raise ValueError(f"chunk_frames must be ≥ 1, got {chunk_frames}")
        context = self._check_context(left_context_frames)
        codes = self.prepare_codes(codes)
        z = self.quantizer.post_module(self.quantizer.embed(codes))  # [B, D, T]
        pieces = []
        for start in range(0, z.shape[-1], chunk_frames):
            first = max(0, start - context)
            pieces.append(self._render(z[..., first : start + chunk_frames], skip_frames=start - first))
        return torch.cat(pieces, dim=-1)

    @torch.no_grad()
    def decode_stream(
        self, codes: Tensor, emitted_samples: int, left_context_frames: int | None = None
    ) -> Tensor:
        """Incremental decoding for live playback: the audio after the first `emitted_samples`.

        `codes` are all frames so far ([B, 10, T] or [10, T]); `emitted_samples` (a multiple of
        frame_length) is how much audio earlier calls returned. Only the transformer's receptive
        field and the conv context are recomputed, so cost does not grow with T, and the pieces of
        successive calls concatenate to `decode(codes)` up to float rounding. Returns float32
        [B, 1, 2048·T − emitted_samples].
        """
        codes = self.prepare_codes(codes)
        total = codes.shape[-1]
        if emitted_samples < 0 or emitted_samples % self.frame_length or emitted_samples > total * self.frame_length:
            raise ValueError(
                f"emitted_samples must be a multiple of {self.frame_length} in 0..{total * self.frame_length}, "
                f"got {emitted_samples}"
            )
        start = emitted_samples // self.frame_length
        if start == total:
            return torch.zeros(codes.shape[0], 1, 0)
        conv_first = max(0, start - self._check_context(left_context_frames))
        # The transformer output at conv_first depends on this many earlier frames.
        first = max(0, conv_first - self.quantizer.post_module.receptive_field)
        z = self.quantizer.embed(codes[..., first:])
        z = self.quantizer.post_module(z, start_pos=first)[..., conv_first - first :]
        return self._render(z, skip_frames=start - conv_first)

    def _check_context(self, left_context_frames: int | None) -> int:
        if left_context_frames is None:
            return self.conv_context_frames
        if left_context_frames < 0:
            raise ValueError(f"left_context_frames must be ≥ 0, got {left_context_frames}")
        return left_context_frames

    def _render(self, z: Tensor, skip_frames: int) -> Tensor:
        """Post-transformer latent [B, D, n] → float32 audio of its frames after the first `skip_frames`."""
        audio = self.decoder(self.quantizer.upsample(z))
        return audio[..., skip_frames * self.frame_length :].float()


def _conv_receptive_field_frames(cfg: CodecConfig) -> int:
    """Receptive field of upsample + decoder convolutions into the past, in whole code frames."""
    # Counted in output audio samples; `step` = output samples per sample at the current stage.
    step = cfg.frame_length
    past = 0
    for factor in reversed(cfg.downsample_factor):
        step //= factor  # transposed conv with kernel == stride: no past
        past += 6 * step  # ConvNeXt depthwise conv, kernel 7
    past += 6 * step  # decoder input conv, kernel 7
    for stride in cfg.decoder_rates:
        past += step  # transposed conv with kernel 2·stride also sees the previous input step
        step //= stride
        past += 6 * (1 + 3 + 9) * step  # residual units: kernel 7, dilations 1, 3, 9
    past += 6 * step  # output conv, kernel 7
    return math.ceil(past / cfg.frame_length)


# ---------------------------------------------------------------------- loading

# Stale non-persistent buffers some official checkpoints still carry; they hold no weights.
_STALE_SUFFIXES = ("freqs_cis", "causal_mask")
# `torch.nn.utils.parametrizations.weight_norm` key names → this implementation's (and the legacy
# `torch.nn.utils.weight_norm`) names.
_PARAMETRIZATION_KEYS = {
    ".parametrizations.weight.original0": ".weight_g",
    ".parametrizations.weight.original1": ".weight_v",
}


def remap_key(key: str) -> str:
    """Map an official codec.pth key to this implementation's parameter name."""
    for old, new in _PARAMETRIZATION_KEYS.items():
        if key.endswith(old):
            return key[: -len(old)] + new
    return key


def load_codec(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    config: CodecConfig | None = None,
) -> Codec:
    """Load the codec from a directory holding `codec.pth`, or from the .pth file itself.

    Sizes come from `config`, else a `modded_dac_vq.json` beside the weights, else the official
    S2 Pro defaults. The file is read with `weights_only=True` (a pickle holding code is refused,
    never run). Every tensor must match a parameter by name and shape, otherwise CheckpointError.
    """
    weights_path, config_path = _resolve(Path(path))
    if config is None:
        config = CodecConfig.from_json(config_path) if config_path else CodecConfig()
    state = _read_state_dict(weights_path)
    with torch.device("meta"):  # no memory for the random init; weights are assigned below
        codec = Codec(config)
    codec.load_state_dict(_match_state_dict(codec, state, weights_path, dtype), assign=True)
    codec = codec.to(device).eval().requires_grad_(False)
    codec.fold_weight_norm()
    return codec


def _resolve(path: Path) -> tuple[Path, Path | None]:
    weights = path / CODEC_WEIGHTS if path.is_dir() else path
    if not weights.is_file():
        raise CheckpointError(f"codec weights not found: {weights}; copy codec.pth from the model's download")
    config = weights.with_name(CODEC_CONFIG)
    return weights, config if config.is_file() else None


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """torch.load(weights_only=True), unwrap `state_dict` / `generator.` like the official loader."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message suggests weights_only=False; name only the offending object instead.
        found = re.search(r"GLOBAL (\S+)", str(e))
        what = f"it references {found.group(1)}" if found else "it is not a plain state dict"
        raise CheckpointError(
            f"refusing to load {path}: it holds pickled objects other than tensors, which could run code ({what}); "
            "nothing in it was executed — use the official codec.pth (download the model again)"
        ) from e
    except Exception as e:  # truncated zip, not a torch file, I/O error …
        raise CheckpointError(
            f"cannot read codec weights {path} (corrupt or truncated?): {e}; download the model again"
        ) from e
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path} does not hold a state dict (got {type(obj).__name__}); use the official codec.pth"
        )
    if any("generator." in key for key in obj):
        obj = {key.replace("generator.", "", 1): v for key, v in obj.items() if "generator." in key}
    return dict(obj)


def _match_state_dict(
    codec: Codec, state: dict[str, Tensor], path: Path, dtype: torch.dtype
) -> dict[str, Tensor]:
    """Rename, check and cast the file's tensors; raise listing every key that does not fit."""
    expected = {name: tuple(t.shape) for name, t in codec.state_dict().items()}
    matched: dict[str, Tensor] = {}
    seen: set[str] = set()
    unexpected, wrong = [], []
    for key, value in state.items():
        if key.endswith(_STALE_SUFFIXES):
            continue
        name = remap_key(key)
        if name not in expected or name in seen:  # unknown, or the same weight under two names
            unexpected.append(key)
            continue
        seen.add(name)
        if not isinstance(value, Tensor) or not value.is_floating_point():
            wrong.append(f"{key} (not a float tensor)")
        elif tuple(value.shape) != expected[name]:
            wrong.append(f"{key} {list(value.shape)} (expected {list(expected[name])})")
        else:
            matched[name] = value.to(dtype)
    missing = [name for name in expected if name not in seen]
    problems = [
        _listing("missing", missing),
        _listing("unexpected", unexpected),
        _listing("with a wrong shape or type", wrong),
    ]
    problems = [p for p in problems if p]
    if problems:
        raise CheckpointError(
            f"codec weights {path} do not fit the codec config: {'; '.join(problems)}. "
            f"Is {CODEC_CONFIG} missing, or from another codec?"
        )
    return matched


def _listing(label: str, keys: list[str], shown: int = 5) -> str:
    """'3 missing: a, b, c' with at most `shown` keys named; '' when there are none."""
    if not keys:
        return ""
    more = f", … ({len(keys) - shown} more)" if len(keys) > shown else ""
    return f"{len(keys)} {label}: {', '.join(keys[:shown])}{more}"
