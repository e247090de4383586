"""`python -m fishs2` end to end on the tiny checkpoint, in a subprocess like a user runs it."""

from __future__ import annotations

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
