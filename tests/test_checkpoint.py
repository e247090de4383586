"""The real loader on checkpoints written in the official layout, good and bad."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from fishs2 import FishS2
from fishs2.checkpoint import parameter_sources
from fishs2.errors import CheckpointError
from fishs2.hub import missing_files, resolve
from fishs2.synthetic import Sizes, write_checkpoint

from .conftest import GOLDEN_CODEC, copy_tiny_checkpoint

SMALL = Sizes(dim=32, n_layer=1, n_head=2, n_local_heads=1, head_dim=16, intermediate_size=48, n_fast_layer=1,
              codebook_size=64, max_seq_len=512)


@pytest.mark.parametrize("shards", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_synthetic_checkpoint_loads_and_generates(tmp_path, shards, dtype):
    write_checkpoint(tmp_path, GOLDEN_CODEC, SMALL, dtype=dtype, shards=shards, seed=1)
    assert (tmp_path / ("model.safetensors" if shards == 1 else "model.safetensors.index.json")).is_file()
    tts = FishS2.from_pretrained(tmp_path, device="cpu", dtype="fp32")
    assert tts.dtype == torch.float32
    n_tensors = 2 + 9 * SMALL.n_layer + 4 + 7 * SMALL.n_fast_layer
    assert len(parameter_sources(tts.model)) == n_tensors  # every checkpoint tensor has its place
    assert len(list(tts.model.parameters())) == n_tensors - SMALL.n_layer - SMALL.n_fast_layer  # w1 + w3 = w13
    result = tts.generate("Hello world.", seed=0, max_frames=4)
    assert result.codes.shape[0] == 10 and 1 <= result.num_frames <= 4


def test_loads_in_bf16(tiny_checkpoint_dir):
    tts = FishS2.from_pretrained(tiny_checkpoint_dir, device="cpu", dtype="bf16")
    assert tts.model.dtype == torch.bfloat16
    assert tts.generate("Hello.", seed=0, max_frames=3).codes.dtype == torch.int64


def test_missing_shard(tmp_path):
    d = copy_tiny_checkpoint(tmp_path / "m")
    (d / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors"):
        FishS2.from_pretrained(d, device="cpu")


def test_truncated_shard(tmp_path):
    d = copy_tiny_checkpoint(tmp_path / "m")
    shard = d / "model-00001-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        FishS2.from_pretrained(d, device="cpu")


def test_hostile_header_length_is_refused_without_reading_it(tmp_path):
    d = copy_tiny_checkpoint(tmp_path / "m")
    shard = d / "model-00001-of-00002.safetensors"
    data = bytearray(shard.read_bytes())
    data[:8] = (len(data) - 8).to_bytes(8, "little")  # claims the whole file is header: not valid JSON
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        FishS2.from_pretrained(d, device="cpu")
    shard.write_bytes((2**40).to_bytes(8, "little") + bytes(data[8:]))  # 1 TiB header claim
    with pytest.raises(CheckpointError, match="header length"):
        FishS2.from_pretrained(d, device="cpu")


def _rewrite_shard(d, change):
    shard = d / "model-00002-of-00002.safetensors"
    tensors = load_file(str(shard))
    change(tensors)
    save_file(tensors, str(shard))


def test_wrong_shape_names_the_key(tmp_path):
    d = copy_tiny_checkpoint(tmp_path / "m")
    _rewrite_shard(d, lambda t: t.__setitem__("audio_decoder.norm.weight", torch.ones(7)))
    with pytest.raises(CheckpointError, match=r"audio_decoder.norm.weight \[7\]"):
        FishS2.from_pretrained(d, device="cpu")


def test_unexpected_key_is_named(tmp_path):
    d = copy_tiny_checkpoint(tmp_path / "m")
    _rewrite_shard(d, lambda t: t.__setitem__("audio_decoder.extra.weight", torch.ones(3)))
    with pytest.raises(CheckpointError, match="unexpected tensors: audio_decoder.extra.weight"):
        FishS2.from_pretrained(d, device="cpu")


def test_missing_key_is_named(tmp_path):
    d = copy_tiny_checkpoint(tmp_path / "m")
    _rewrite_shard(d, lambda t: t.pop("audio_decoder.output.weight"))
    with pytest.raises(CheckpointError, match="missing tensors: fast.output.weight"):
        FishS2.from_pretrained(d, device="cpu")


def test_swiglu_halves_are_checked_one_by_one(tmp_path):
    """w1 and w3 fill the two halves of one parameter (w13): each must be present with its own shape, and they land
    in the right order (w1's rows first)."""
    d = copy_tiny_checkpoint(tmp_path / "m")
    shard = load_file(str(d / "model-00002-of-00002.safetensors"))
    key = next(k for k in shard if k.endswith("feed_forward.w3.weight"))
    model = FishS2.from_pretrained(d, device="cpu").model
    layer = int(key.split(".layers.")[1].split(".")[0])
    blocks = model.slow.layers if key.startswith("text_model") else model.fast.layers
    assert torch.equal(blocks[layer].feed_forward.w13.weight.chunk(2)[1], shard[key].float())
    _rewrite_shard(d, lambda t: t.pop(key))
    with pytest.raises(CheckpointError, match=r"missing tensors: .*feed_forward\.w3\.weight"):
        FishS2.from_pretrained(d, device="cpu")
    rows, cols = shard[key].shape
    _rewrite_shard(d, lambda t: t.__setitem__(key, torch.ones(2 * rows, cols)))
    with pytest.raises(CheckpointError, match=rf"w3.weight \[{2 * rows}, {cols}\] \(expected \[{rows}, {cols}\]\)"):
        FishS2.from_pretrained(d, device="cpu")


def test_shard_of_another_model(tmp_path):
    d = copy_tiny_checkpoint(tmp_path / "m")
    other = write_checkpoint(tmp_path / "other", GOLDEN_CODEC, SMALL, shards=2)
    shutil.copy(other / "model-00002-of-00002.safetensors", d / "model-00002-of-00002.safetensors")
    with pytest.raises(CheckpointError, match="another model"):
        FishS2.from_pretrained(d, device="cpu")


def test_wrong_model_type(tmp_path):
    d = copy_tiny_checkpoint(tmp_path / "m")
    config = json.loads((d / "config.json").read_text())
    config["model_type"] = "llama"
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="model_type is 'llama'"):
        FishS2.from_pretrained(d, device="cpu")


@pytest.mark.parametrize("part, key, value, message", [
    ("audio_decoder_config", "n_layer", 0, "audio_decoder_config.n_layer is 0"),
    ("text_config", "dim", -64, "text_config.dim is -64"),
    ("audio_decoder_config", "num_codebooks", 0, "audio_decoder_config.num_codebooks is 0"),
    ("audio_decoder_config", "n_local_heads", 3, r"audio_decoder_config.n_head \(4\) must be a multiple"),
])
def test_impossible_sizes_in_config_are_named(tmp_path, part, key, value, message):
    d = copy_tiny_checkpoint(tmp_path / "m")
    config = json.loads((d / "config.json").read_text())
    config[part][key] = value
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=message):
        FishS2.from_pretrained(d, device="cpu")


def test_pickled_codec_is_refused_and_not_executed(tmp_path):
    d = copy_tiny_checkpoint(tmp_path / "m")
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"weights": Exploit()}, d / "codec.pth")
    with pytest.raises(CheckpointError, match="codec.pth"):
        FishS2.from_pretrained(d, device="cpu")
    assert not marker.exists()


def test_incomplete_directory_and_unknown_source(tmp_path):
    d = copy_tiny_checkpoint(tmp_path / "m")
    (d / "tokenizer.json").unlink()
    assert missing_files(d) == ["tokenizer.json"]
    with pytest.raises(CheckpointError, match="missing tokenizer.json"):
        resolve(d)
    with pytest.raises(CheckpointError, match="not a hub id"):
        resolve(str(tmp_path / "nope" / "deeper" / "x"))


def test_failed_download_leaves_nothing_that_loads(tmp_path, monkeypatch):
    """An interrupted download stays in `.partial`; the target never appears."""
    import huggingface_hub

    def interrupted(repo_id, local_dir, **kwargs):
        (local_dir / "config.json").parent.mkdir(parents=True, exist_ok=True)
        (local_dir / "config.json").write_text("{}")
        raise ConnectionError("connection reset")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", interrupted)
    with pytest.raises(CheckpointError, match="could not be downloaded"):
        resolve("fishaudio/s2-pro", models_dir=tmp_path)
    assert not (tmp_path / "s2-pro").exists()


def test_completed_download_is_installed_and_reused_offline(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_download(repo_id, local_dir, **kwargs):
        calls.append(repo_id)
        copy_tiny_checkpoint(local_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    first = resolve("fishaudio/s2-pro", models_dir=tmp_path)
    assert first == tmp_path / "s2-pro" and not missing_files(first)
    assert resolve("fishaudio/s2-pro", models_dir=tmp_path) == first
    assert calls == ["fishaudio/s2-pro"]
    # another owner's model of the same name gets its own folder: never the official one, and never deletes it
    other = resolve("someone/s2-pro", models_dir=tmp_path)
    assert other == tmp_path / "someone--s2-pro" and calls == ["fishaudio/s2-pro", "someone/s2-pro"]
    assert not missing_files(first)
