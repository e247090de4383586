"""`python -m fishs2` end to end on the tiny checkpoint, in a subprocess like a user runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import soundfile as sf

from .golden import SHIPPED

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fishs2", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_encode_voice_then_say_with_it(tiny_checkpoint_dir, tmp_path):
    voice = tmp_path / "voices" / "ref.safetensors"
    enc = run_cli("encode-voice", str(SHIPPED / "codec_input.wav"), "--text", "This is the reference voice.",
                  "--out", str(voice), "--checkpoint", str(tiny_checkpoint_dir), "--device", "cpu")
    assert enc.returncode == 0, enc.stderr
    assert voice.is_file() and voice.with_suffix(".json").is_file()

    out = tmp_path / "out.wav"
    say = run_cli("say", "--text", "Hello [whisper] world.", "--voice", str(voice), "--seed", "3",
                  "--max-frames", "12", "--out", str(out), "--checkpoint", str(tiny_checkpoint_dir), "--device", "cpu")
    assert say.returncode == 0, say.stderr
    frames = int(re.search(r"(\d+) frames", say.stdout).group(1))
    info = sf.info(str(out))
    assert info.samplerate == 44100 and info.channels == 1
    assert info.frames == frames * 2048


def test_say_with_audio_reference_and_script(tiny_checkpoint_dir, tmp_path):
    script = tmp_path / "dialogue.txt"
    script.write_text("<|speaker:0|>First line.\n<|speaker:1|>Second line.", encoding="utf-8")
    out = tmp_path / "dialogue.wav"
    ref = str(SHIPPED / "codec_input.wav")
    result = run_cli("say", "--script", str(script), "--voice", ref, "--voice-text", "Reference one.",
                     "--voice", ref, "--voice-text", "Reference two.", "--max-frames", "6", "--chunk-length", "10",
                     "--out", str(out), "--checkpoint", str(tiny_checkpoint_dir), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    frames = int(re.search(r"(\d+) frames", result.stdout).group(1))
    assert sf.info(str(out)).frames == frames * 2048


def test_missing_model_is_a_clear_message(tmp_path):
    result = run_cli("say", "--text", "Hi", "--out", str(tmp_path / "x.wav"), "--checkpoint", str(tmp_path / "absent"))
    assert result.returncode == 2
    assert "error:" in result.stderr and "absent" in result.stderr and "Traceback" not in result.stderr


def test_offline_hub_id_is_a_clear_message(tmp_path):
    env_models = tmp_path / "models"
    result = subprocess.run(
        [sys.executable, "-m", "fishs2", "say", "--text", "Hi", "--out", str(tmp_path / "x.wav"),
         "--model", "fishaudio/s2-pro", "--models-dir", str(env_models)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 2
    assert "could not be downloaded" in result.stderr and "Traceback" not in result.stderr
    assert not (env_models / "s2-pro").exists()


def test_say_with_int8_weights_and_a_clear_fp8_refusal(tiny_checkpoint_dir, tmp_path):
    out = tmp_path / "int8.wav"
    say = run_cli("say", "--text", "Int8 weights.", "--seed", "1", "--max-frames", "6", "--dtype", "int8",
                  "--out", str(out), "--checkpoint", str(tiny_checkpoint_dir), "--device", "cpu")
    assert say.returncode == 0, say.stderr
    assert sf.info(str(out)).frames == int(re.search(r"(\d+) frames", say.stdout).group(1)) * 2048
    refused = run_cli("say", "--text", "fp8.", "--dtype", "fp8", "--out", str(tmp_path / "fp8.wav"),
                      "--checkpoint", str(tiny_checkpoint_dir), "--device", "cpu")
    assert refused.returncode == 2 and "fp8=True: the cpu has no fp8 matmuls" in refused.stderr
    assert "Traceback" not in refused.stderr and not (tmp_path / "fp8.wav").exists()


def test_bad_output_paths_are_refused_before_the_model_loads(tmp_path):
    """--out that cannot be written is refused up front, with the option named (no model: it never gets that far)."""
    folder = tmp_path / "taken.wav"
    folder.mkdir()
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for out, message in ((tmp_path / "o.mp3", "write .wav or .flac"), (tmp_path / "o", "write .wav or .flac"),
                         (folder, "is a folder"), (blocker / "x.wav", "cannot write into")):
        result = run_cli("say", "--text", "Hi.", "--out", str(out), "--checkpoint", str(tmp_path / "no-model"))
        assert result.returncode != 0 and f"error: --out {out}: {message}" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_voice_and_script_mistakes_are_refused_before_the_model_loads(tmp_path):
    ref = str(SHIPPED / "codec_input.wav")
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("Caf\xe9 au lait.".encode("latin-1"))
    out = str(tmp_path / "o.wav")
    for args, message in (
        (["--text", "Hi.", "--voice", ref], "1 audio --voice file(s) but 0 --voice-text"),
        (["--text", "Hi.", "--voice", str(tmp_path / "missing.wav"), "--voice-text", "t"], "no such audio file"),
        (["--script", str(latin)], "not UTF-8 text"),
        (["--script", str(tmp_path / "nowhere.txt")], "cannot read it"),
        (["--script", str(tmp_path)], "cannot read it"),
    ):
        result = run_cli("say", *args, "--out", out, "--checkpoint", str(tmp_path / "no-model"))
        assert result.returncode != 0 and message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_saved_voice_names_keep_their_dots_and_load_without_suffix(tiny_checkpoint_dir, tmp_path):
    """`Mr.Smith` and `Mr.Jones` are two voices (the dot is not a suffix to replace), readable by others like any
    written file, and `--voice voices/Mr.Smith` finds the saved voice without its .safetensors."""
    voices = tmp_path / "voices"
    for name in ("Mr.Smith", "Mr.Jones"):
        enc = run_cli("encode-voice", str(SHIPPED / "codec_input.wav"), "--text", f"I am {name}.",
                      "--out", str(voices / name), "--checkpoint", str(tiny_checkpoint_dir), "--device", "cpu")
        assert enc.returncode == 0, enc.stderr
    saved = sorted(p.name for p in voices.iterdir())
    assert saved == ["Mr.Jones.json", "Mr.Jones.safetensors", "Mr.Smith.json", "Mr.Smith.safetensors"]
    umask = os.umask(0)
    os.umask(umask)
    assert {p.stat().st_mode & 0o777 for p in voices.iterdir()} == {0o666 & ~umask}
    out = tmp_path / "out.flac"
    say = run_cli("say", "--text", "Hello.", "--voice", str(voices / "Mr.Smith"), "--max-frames", "4", "--seed", "1",
                  "--out", str(out), "--checkpoint", str(tiny_checkpoint_dir), "--device", "cpu")
    assert say.returncode == 0, say.stderr
    assert sf.info(str(out)).format == "FLAC"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.flac.")]  # no temporary file left
