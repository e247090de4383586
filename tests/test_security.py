"""Nothing runs that should not: files crafted to execute code on load (a `codec.pth`, a voice file, a Python file
in a model folder) are refused or ignored, and the code in them never runs — each test watches a marker file that
the payload would create. Also the voice library's file-name safety (sanitised names, symlinks, atomic writes).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pickle
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fishs2 import FishS2
from fishs2.codec import load_codec
from fishs2.errors import CheckpointError, VoiceError
from fishs2.voice import Voice

from .conftest import copy_tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]


class RunsCode:
    """A pickle payload: unpickling it executes `code` (here: it creates a marker file)."""

    def __init__(self, marker: Path):
        self.code = f"open({str(marker)!r}, 'w').write('code ran')"

    def __reduce__(self):
        return (exec, (self.code,))


def write_payload(path: Path, marker: Path, fmt: str) -> None:
    payload = {"decoder.model.0.conv.weight_v": RunsCode(marker), "state_dict": {"x": RunsCode(marker)}}
    if fmt == "torch-zip":
        torch.save(payload, path)
    else:  # the legacy raw-pickle format torch.load also reads
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)


def test_payload_really_runs_code_when_unpickled_unsafely(tmp_path):
    """The control experiment: the same file, loaded the unsafe way, does create the marker."""
    marker = tmp_path / "marker"
    write_payload(tmp_path / "codec.pth", marker, "torch-zip")
    torch.load(tmp_path / "codec.pth", weights_only=False)
    assert marker.read_text() == "code ran"


@pytest.mark.parametrize("fmt", ["torch-zip", "raw-pickle"])
def test_crafted_codec_pth_is_refused_and_not_executed(tmp_path, fmt):
    model = copy_tiny_checkpoint(tmp_path / "s2-pro")
    marker = tmp_path / "marker"
    write_payload(model / "codec.pth", marker, fmt)
    with pytest.raises(CheckpointError, match="codec.pth.*could run code.*nothing in it was executed"):
        FishS2.from_pretrained(model, device="cpu")
    with pytest.raises(CheckpointError):
        load_codec(model / "codec.pth")
    assert not marker.exists(), "loading codec.pth executed code"


def test_every_torch_load_is_weights_only(tmp_path, monkeypatch):
    """Loading a whole model never calls torch.load without weights_only=True."""
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    FishS2.from_pretrained(copy_tiny_checkpoint(tmp_path / "s2-pro"), device="cpu")
    assert calls and all(c is True for c in calls)


def test_python_files_in_a_model_folder_are_never_imported(tmp_path):
    """A shared model folder with `modeling_*.py` (Hugging Face remote code) loads without running it."""
    model = copy_tiny_checkpoint(tmp_path / "s2-pro")
    marker = tmp_path / "marker"
    code = f"open({str(marker)!r}, 'w').write('code ran')\n"
    for name in ("__init__.py", "modeling_fish.py", "configuration_fish.py", "tokenization_fish.py"):
        (model / name).write_text(code)
    config = model / "config.json"
    config.write_text(config.read_text().replace('"model_type"', '"auto_map": {"AutoModel": "modeling_fish.M"}, '
                                                               '"model_type"', 1))
    FishS2.from_pretrained(model, device="cpu").generate("Hello.", seed=0, max_frames=2)
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".pkl", ".bin", ".safetensors"])
def test_crafted_voice_file_is_refused_and_not_executed(tmp_path, suffix):
    marker = tmp_path / "marker"
    path = tmp_path / f"voice{suffix}"
    torch.save({"codes": RunsCode(marker), "text": "hi"}, path)
    with pytest.raises(VoiceError) as info:
        Voice.load(path)
    assert str(path) in str(info.value)
    assert not marker.exists(), "loading a voice executed code"


def test_voice_json_sidecar_is_never_executed_or_trusted(tmp_path):
    """The voice is read from the safetensors header only; a hostile sidecar changes nothing."""
    codes = torch.randint(0, 16, (10, 12))
    path = Voice(codes, "the real transcript", "v").save(tmp_path / "v")
    path.with_suffix(".json").write_text('{"format": "fishs2-voice/1", "text": "__import__(\'os\')", "codes": 1}')
    loaded = Voice.load(path)
    assert loaded.text == "the real transcript" and torch.equal(loaded.codes, codes)


def test_voice_header_with_hostile_json_stays_data(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "v.safetensors"
    header = '{"format": "fishs2-voice/1", "text": "hi", "name": "x", "metadata": {"__class__": "os.system", "a": [1]}}'
    save_file({"codes": torch.zeros(10, 3, dtype=torch.int64)}, str(path), metadata={"fishs2": header})
    voice = Voice.load(path)
    assert voice.metadata == {"__class__": "os.system", "a": [1]} and voice.text == "hi"


# ── the voice library (nodes/voice_library.py): names, symlinks ──────────────────────────────────────────────────
@pytest.fixture(scope="module")
def library():
    """nodes/voice_library.py imported as the pack sees it (a package named after its folder), without ComfyUI."""
    name = "fishs2_security_pack"
    if name not in sys.modules:
        spec = importlib.util.spec_from_loader(name, loader=None, is_package=True)
        package = importlib.util.module_from_spec(spec)
        package.__path__ = [str(REPO)]
        sys.modules[name] = package
    try:
        return importlib.import_module(f"{name}.nodes.voice_library")
    except ImportError as exc:  # the node pack is not part of this checkout
        pytest.skip(f"nodes/voice_library.py not importable: {exc}")


@pytest.mark.parametrize("raw, expected", [
    ("Narrator", "Narrator"), ("../../etc/passwd", "etc_passwd"), ("a/b\\c", "a_b_c"), ("CON", "CON_voice"),
    ("nul", "nul_voice"), ("com1", "com1_voice"), ("LPT9", "LPT9_voice"), ("voice.safetensors", "voice_safetensors"),
    ("  Alice  Smith ", "Alice Smith"), ("Zoë 李", "Zoë 李"), ("bell\x07name", "bellname"), ("x" * 100, "x" * 64),
])
def test_voice_names_are_sanitised(library, raw, expected):
    assert library.sanitize_voice_name(raw) == expected


@pytest.mark.parametrize("raw", ["", "   ", "..", "../", "///", "...", "\x00", None])
def test_unusable_voice_names_are_refused(library, raw):
    with pytest.raises(Exception) as info:
        library.sanitize_voice_name(raw, "name")
    assert type(info.value).__name__ == "VoiceError" and str(info.value).startswith("name: ")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=80) | st.lists(st.sampled_from(["..", "/", "\\", ".", "CON", "nul", "\x00", "a", " ", "ä"]),
                                         max_size=12).map("".join))
def test_any_name_is_sanitised_into_the_folder_or_refused(library, tmp_path, raw):
    try:
        name = library.sanitize_voice_name(raw)
    except Exception as exc:
        assert type(exc).__name__ == "VoiceError"
        return
    assert name and len(name) <= library.MAX_NAME and name == library.sanitize_voice_name(name)
    assert not any(c in name for c in "/\\\x00:") and name not in (".", "..") and not name.startswith(".")
    assert name.casefold() not in library._RESERVED
    target = os.path.realpath(os.path.join(tmp_path, f"{name}.safetensors"))
    assert os.path.dirname(target) == os.path.realpath(tmp_path)


def test_voice_path_refuses_symlinks_leading_out_of_the_library(library, tmp_path, monkeypatch):
    voices, outside = tmp_path / "voices", tmp_path / "elsewhere"
    voices.mkdir(), outside.mkdir()
    codes = torch.randint(0, 16, (10, 4))
    Voice(codes, "hi", "good").save(voices / "good")
    secret = Voice(codes, "hi", "secret").save(outside / "secret")
    os.symlink(secret, voices / "linked.safetensors")
    monkeypatch.setattr(library.paths, "voice_dirs", lambda: [str(voices)])
    assert library.voice_path("good") == str(voices / "good.safetensors")
    assert "linked" in library.list_voices()
    with pytest.raises(Exception, match="points outside the voices folder") as info:
        library.voice_path("linked")
    assert type(info.value).__name__ == "VoiceError"
    for bad in ("../elsewhere/secret", "good.safetensors", "/etc/passwd"):
        with pytest.raises(Exception, match="not a voice library name"):
            library.voice_path(bad)
