"""Codec behaviour beyond golden parity: strict loading, input validation, chunked/streamed decoding, bf16."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import fishs2.codec.transformer as codec_transformer
from fishs2.codec import Codec, CodecConfig, load_codec
from fishs2.errors import AudioError, CheckpointError, CodesError

from .golden import Golden, golden_dir

GOLDEN = Golden(golden_dir(), "codec")
TINY_DIR = (GOLDEN.directory / GOLDEN.meta["config"]).parent
# decode_chunked / decode_stream with the default left context vs one `decode`: only float
# reordering differs. Observed max |diff| on 100 random frames: ~1.1e-6; one frame of context too
# few gives ~5e-4, none gives ~1.
CHUNK_TOL = 1e-5


@pytest.fixture(scope="module")
def codec() -> Codec:
    return load_codec(TINY_DIR)


@pytest.fixture(scope="module")
def random_codes(codec: Codec) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1234)
    codes = torch.randint(0, codec.codebook_size, (codec.num_codebooks, 100), generator=gen)
    codes[0] = torch.randint(0, codec.semantic_codebook_size, (100,), generator=gen)
    return codes


@pytest.fixture(scope="module")
def full_audio(codec: Codec, random_codes: torch.Tensor) -> torch.Tensor:
    return codec.decode(random_codes)


def tiny_state() -> dict[str, torch.Tensor]:
    return torch.load(TINY_DIR / "codec.pth", map_location="cpu", weights_only=True)


def save_codec_dir(tmp_path: Path, state) -> Path:
    directory = tmp_path / "codec"
    directory.mkdir()
    torch.save(state, directory / "codec.pth")
    shutil.copy(TINY_DIR / "modded_dac_vq.json", directory / "modded_dac_vq.json")
    return directory


# ---------------------------------------------------------------------------------------- loading


def test_loads_every_tensor_and_api(codec: Codec):
    state = tiny_state()
    pairs = sum(1 for key in state if key.endswith((".parametrizations.weight.original0", ".weight_g")))
    assert pairs > 60  # the file holds both spellings of a (g, V) pair
    assert len(codec.state_dict()) == len(state) - pairs  # each (g, V) pair is folded into one weight
    assert not any(p.is_meta or p.requires_grad for p in codec.parameters())
    assert not codec.training
    assert codec.sample_rate == 44100 and codec.frame_length == 2048 and codec.num_codebooks == 10


def test_load_from_pth_file_and_wrapped_dicts(tmp_path: Path, codec: Codec):
    from_file = load_codec(TINY_DIR / "codec.pth")  # config found beside the file
    state = tiny_state()
    wrapped = {"state_dict": {f"generator.{k}": v for k, v in state.items()}, "epoch": 3}
    wrapped["state_dict"]["discriminator.x"] = torch.zeros(1)  # dropped: not under generator.
    from_wrapped = load_codec(save_codec_dir(tmp_path, wrapped))
    expected = codec.state_dict()
    for other in (from_file, from_wrapped):
        assert all(torch.equal(v, expected[k]) for k, v in other.state_dict().items())


def test_stale_buffers_and_legacy_weight_norm_keys(tmp_path: Path, codec: Codec):
    state = tiny_state()
    state["quantizer.pre_module.freqs_cis"] = torch.zeros(3, 2)
    state["encoder.block.4.block.5.causal_mask"] = torch.ones(4, 4, dtype=torch.bool)
    for key in [k for k in state if k.endswith(".parametrizations.weight.original0")]:
        stem = key.removesuffix(".parametrizations.weight.original0")
        state[f"{stem}.weight_g"] = state.pop(key)
        state[f"{stem}.weight_v"] = state.pop(f"{stem}.parametrizations.weight.original1")
    loaded = load_codec(save_codec_dir(tmp_path, state))
    assert all(torch.equal(v, codec.state_dict()[k]) for k, v in loaded.state_dict().items())


def test_folded_weight_norm_is_bit_identical(codec: Codec, random_codes: torch.Tensor):
    """load_codec folds W = g · V / ‖V‖ once; an unfolded codec holding the same (g, V) computes it per call."""
    from fishs2.codec.layers import WNConv1d, WNConvTranspose1d
    from fishs2.codec.model import _match_state_dict

    assert not any(isinstance(m, (WNConv1d, WNConvTranspose1d)) for m in codec.modules())
    unfolded = Codec(codec.config).eval()
    unfolded.load_state_dict(_match_state_dict(unfolded, tiny_state(), TINY_DIR, torch.float32))
    assert sum(isinstance(m, (WNConv1d, WNConvTranspose1d)) for m in unfolded.modules()) > 0
    audio = torch.randn(1, 1, 3 * codec.frame_length, generator=torch.Generator().manual_seed(5)) * 0.3
    assert torch.equal(unfolded.decode(random_codes[:, :12]), codec.decode(random_codes[:, :12]))
    assert torch.equal(unfolded.decode_stream(random_codes[:, :5], 0), codec.decode_stream(random_codes[:, :5], 0))
    assert torch.equal(unfolded.encode(audio)[0], codec.encode(audio)[0])
    folded = unfolded.fold_weight_norm()
    assert not any(isinstance(m, (WNConv1d, WNConvTranspose1d)) for m in folded.modules())
    assert folded.dtype == torch.float32 and folded.device.type == "cpu"
    assert torch.equal(folded.decode(random_codes[:, :12]), codec.decode(random_codes[:, :12]))


def test_missing_path(tmp_path: Path):
    with pytest.raises(CheckpointError, match="not found.*nope"):
        load_codec(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="codec.pth"):
        load_codec(tmp_path)  # a directory without codec.pth


def test_truncated_and_garbage_files(tmp_path: Path):
    data = (TINY_DIR / "codec.pth").read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint" * 10)
    for path in (truncated, garbage):
        with pytest.raises(CheckpointError, match=path.name):
            load_codec(path, config=CodecConfig.from_json(TINY_DIR / "modded_dac_vq.json"))


def test_wrong_shape_unexpected_and_missing_keys(tmp_path: Path):
    state = tiny_state()
    state["decoder.model.0.conv.bias"] = torch.zeros(3)
    state["decoder.model.9.extra"] = torch.zeros(1)
    del state["encoder.block.5.alpha"]
    with pytest.raises(CheckpointError) as err:
        load_codec(save_codec_dir(tmp_path, state))
    message = str(err.value)
    for fragment in ("decoder.model.0.conv.bias [3]", "decoder.model.9.extra", "encoder.block.5.alpha", "1 missing"):
        assert fragment in message


def test_default_config_refuses_tiny_weights(tmp_path: Path):
    """Without its json the tiny file does not fit the real S2 Pro sizes: every mismatch is reported."""
    shutil.copy(TINY_DIR / "codec.pth", tmp_path / "codec.pth")
    with pytest.raises(CheckpointError, match="wrong shape.*more"):
        load_codec(tmp_path)


class _CreatesMarker:
    """A pickle payload that would create a file if it were ever unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickled_code_is_refused_not_run(tmp_path: Path):
    marker = tmp_path / "pwned"
    state = tiny_state()
    state["payload"] = _CreatesMarker(marker)
    directory = save_codec_dir(tmp_path, state)
    with pytest.raises(CheckpointError, match="codec.pth"):
        load_codec(directory)
    assert not marker.exists()


def test_official_default_layout():
    """The default config has the official key count (weight norm folded) and parameter shapes."""
    with torch.device("meta"):
        state = Codec(CodecConfig()).state_dict()
    folded = {part: sum(1 for k in state if k.startswith(f"{part}.") and not k.endswith("weight_g"))
              for part in ("encoder", "quantizer", "decoder")}
    assert folded == {"encoder": 126, "quantizer": 240, "decoder": 89}
    shapes = {
        "encoder.block.4.block.4.conv.weight_v": (1024, 512, 16),
        "encoder.block.4.block.5.layers.3.attention.wqkv.weight": (3072, 1024),
        "encoder.block.4.block.5.layers.3.feed_forward.w2.weight": (1024, 3072),
        "quantizer.semantic_quantizer.quantizers.0.codebook.weight": (4096, 8),
        "quantizer.quantizer.quantizers.8.codebook.weight": (1024, 8),
        "quantizer.downsample.1.1.pwconv1.weight": (4096, 1024),
        "quantizer.post_module.layers.7.feed_forward.w1.weight": (3072, 1024),
        "decoder.model.1.block.1.conv.weight_g": (1536, 1, 1),
        "decoder.model.1.block.1.conv.weight_v": (1536, 768, 16),
        "decoder.model.6.conv.weight_v": (1, 96, 7),
    }
    assert {k: tuple(state[k].shape) for k in shapes} == shapes


# ---------------------------------------------------------------------------------------- decode


@pytest.mark.parametrize(
    "codes, match",
    [
        (torch.zeros(10, 4), "integer dtype"),
        (torch.zeros(10, 4, dtype=torch.bool), "integer dtype"),
        (torch.zeros(9, 4, dtype=torch.long), r"\[B, 10, T\]"),
        (torch.zeros(1, 1, 10, 4, dtype=torch.long), r"\[B, 10, T\]"),
        (torch.zeros(10, 0, dtype=torch.long), "at least one frame"),
        (torch.full((10, 3), -1, dtype=torch.long), "negative"),
        ([[0] * 3] * 10, "torch tensor"),
    ],
)
def test_decode_rejects_bad_codes(codec: Codec, codes, match: str):
    with pytest.raises(CodesError, match=match):
        codec.decode(codes)


def test_decode_shapes_and_clamp_copy(codec: Codec):
    codes = torch.full((10, 2), 10_000, dtype=torch.int32)
    audio = codec.decode(codes)
    assert audio.shape == (1, 1, 2 * codec.frame_length) and audio.dtype == torch.float32
    assert bool((codes == 10_000).all()), "the caller's codes were modified"
    clamped = codec.prepare_codes(codes)
    assert clamped[0, 0].unique().tolist() == [codec.semantic_codebook_size - 1]
    assert clamped[0, 1:].unique().tolist() == [codec.codebook_size - 1]
    assert torch.equal(audio, codec.decode(clamped))


def test_decode_chunked_matches_decode(codec: Codec, random_codes: torch.Tensor, full_audio: torch.Tensor):
    chunked = codec.decode_chunked(random_codes, chunk_frames=7)
    assert chunked.shape == full_audio.shape
    diff = (chunked - full_audio).abs().max().item()
    assert diff <= CHUNK_TOL, f"chunked decode differs by {diff}"
    # The check is sensitive: no left context gives clearly different audio at every seam.
    no_context = codec.decode_chunked(random_codes, chunk_frames=7, left_context_frames=0)
    assert (no_context - full_audio).abs().max().item() > 100 * CHUNK_TOL


def test_decode_stream_concatenates_to_decode(codec: Codec, random_codes: torch.Tensor, full_audio: torch.Tensor):
    pieces, emitted = [], 0
    for frames in (1, 2, 30, 31, 100, 100):  # the tiny post-transformer sees 7 frames back
        piece = codec.decode_stream(random_codes[:, :frames], emitted)
        assert piece.shape[-1] == frames * codec.frame_length - emitted
        pieces.append(piece)
        emitted += piece.shape[-1]
    diff = (torch.cat(pieces, dim=-1) - full_audio).abs().max().item()
    assert diff <= CHUNK_TOL, f"streamed decode differs by {diff}"
    with pytest.raises(ValueError, match="multiple of 2048"):
        codec.decode_stream(random_codes, 100)


def test_blocked_attention_matches_single_block(
    codec: Codec, random_codes: torch.Tensor, full_audio: torch.Tensor, monkeypatch
):
    """Long inputs run attention in query blocks; the result must not depend on the block size."""
    monkeypatch.setattr(codec_transformer, "QUERY_BLOCK", 16)
    torch.testing.assert_close(codec.decode(random_codes), full_audio, atol=CHUNK_TOL, rtol=0)
    codes, _ = codec.encode(GOLDEN["codec/input_audio"][None])
    assert torch.equal(codes[0], GOLDEN["codec/codes"])


def test_decode_is_causal(codec: Codec, random_codes: torch.Tensor, full_audio: torch.Tensor):
    changed = random_codes[:, :40].clone()
    changed[:, 30:] = 0
    audio = codec.decode(changed)
    cut = 30 * codec.frame_length
    torch.testing.assert_close(audio[..., :cut], full_audio[..., :cut], atol=CHUNK_TOL, rtol=0)
    assert (audio[..., cut:] - full_audio[..., cut : 40 * codec.frame_length]).abs().max() > 1e-2


# ---------------------------------------------------------------------------------------- encode


def test_encode_pads_and_batches(codec: Codec):
    audio = GOLDEN["codec/input_audio"]
    codes, lengths = codec.encode(torch.stack([audio, audio])[:, None])  # [B, 1, L]
    n_frames = GOLDEN["codec/codes"].shape[-1]
    assert codes.shape == (2, codec.num_codebooks, n_frames) and codes.dtype == torch.int64
    assert lengths.tolist() == [n_frames, n_frames]
    assert torch.equal(codes[0], GOLDEN["codec/codes"]) and torch.equal(codes[1], codes[0])
    _, short = codec.encode(torch.stack([audio, audio]), lengths=torch.tensor([len(audio), 2049]))
    assert short.tolist() == [n_frames, 2]


@pytest.mark.parametrize(
    "audio",
    [torch.zeros(1, 100, dtype=torch.int16), torch.zeros(1, 2, 100), torch.zeros(1, 0), torch.zeros(100)],
)
def test_encode_rejects_bad_audio(codec: Codec, audio: torch.Tensor):
    with pytest.raises(AudioError):
        codec.encode(audio)


# ---------------------------------------------------------------------------------------- bf16


def test_bfloat16_codec_runs():
    codec = load_codec(TINY_DIR, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in codec.parameters())
    codes, _ = codec.encode(GOLDEN["codec/input_audio"][None])
    assert codes.shape == (1, *GOLDEN["codec/codes"].shape)
    assert int(codes[:, 0].max()) < codec.semantic_codebook_size and int(codes[:, 1:].max()) < codec.codebook_size
    audio = codec.decode(GOLDEN["codec/codes"])
    reference = GOLDEN["codec/decoded_audio"]
    assert audio.dtype == torch.float32 and bool(torch.isfinite(audio).all())
    # bf16 weights and activations: close to the fp32 reference, not equal.
    assert torch.corrcoef(torch.stack([audio[0, 0], reference]))[0, 1] > 0.99
