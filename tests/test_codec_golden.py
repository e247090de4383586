"""Golden parity of the codec against tensors from the official implementation.

The fixture directory (`FISHS2_GOLDEN_DIR`, default the shipped one) names its codec config in
`codec_cases.json`; the codec beside it is loaded with `load_codec` and every probe of
`codec_cases.safetensors` is recomputed: floats within atol = rtol = 1e-4, integers exact.
"""

from __future__ import annotations

import pytest
import torch

from fishs2.codec import Codec, EncodeIntermediates, load_codec

from .golden import Golden, golden_dir

TOL = dict(atol=1e-4, rtol=1e-4)
GOLDEN = Golden(golden_dir(), "codec")
INPUTS = {"codec/input_audio", "codec/input_length", "codec/out_of_range_codes"}


@pytest.fixture(scope="module")
def codec() -> Codec:
    codec_dir = (GOLDEN.directory / GOLDEN.meta["config"]).parent
    return load_codec(codec_dir)


@pytest.fixture(scope="module")
def encoded(codec: Codec) -> EncodeIntermediates:
    audio = GOLDEN["codec/input_audio"][None]  # [1, L]
    return codec.encode_intermediates(audio, lengths=GOLDEN["codec/input_length"])


def _out_of_range_decode(codec: Codec, encoded: EncodeIntermediates) -> torch.Tensor:
    codes = GOLDEN["codec/out_of_range_codes"]
    before = codes.clone()
    audio = codec.decode(codes)[0, 0]
    assert torch.equal(codes, before), "decode clamped the caller's codes in place"
    return audio


# probe key -> how this implementation computes it
PROBES = {
    "codec/encoder_out": lambda codec, enc: enc.encoder_out[0],
    "codec/encode_quantizer_z": lambda codec, enc: enc.quantizer_z[0],
    "codec/codes": lambda codec, enc: enc.codes[0],
    "codec/feature_length": lambda codec, enc: enc.lengths,
    "codec/decode_quantizer_z": lambda codec, enc: codec.quantizer.decode(GOLDEN["codec/codes"][None])[0],
    "codec/decoded_audio": lambda codec, enc: codec.decode(GOLDEN["codec/codes"])[0, 0],
    "codec/out_of_range_decoded_audio": _out_of_range_decode,
}


def test_every_fixture_tensor_is_checked():
    index = set(GOLDEN.meta["tensors"])
    assert index == set(GOLDEN.tensors), "json tensor index and safetensors keys differ"
    assert index - INPUTS <= set(PROBES), f"unchecked probes: {sorted(index - INPUTS - set(PROBES))}"


@pytest.mark.parametrize("key", sorted(k for k in PROBES if k in GOLDEN.meta["tensors"]))
def test_codec_probe(codec: Codec, encoded: EncodeIntermediates, key: str):
    expected = GOLDEN[key]
    actual = PROBES[key](codec, encoded).cpu()
    assert list(actual.shape) == GOLDEN.meta["tensors"][key]["shape"]
    if expected.is_floating_point():
        assert actual.dtype == torch.float32
        torch.testing.assert_close(actual, expected, **TOL)
    else:
        assert actual.dtype == expected.dtype
        assert torch.equal(actual, expected), f"{key}: {(actual != expected).sum().item()} entries differ"


def test_codec_constants_match_fixture(codec: Codec):
    meta = GOLDEN.meta["codec"]
    assert codec.sample_rate == meta["sample_rate"]
    assert codec.frame_length == meta["frame_length"]
    assert codec.config.hop_length == meta["hop_length"]
    n_frames = -(-meta["n_input_samples"] // meta["frame_length"])
    assert n_frames == meta["n_frames"] == GOLDEN["codec/codes"].shape[-1]
