"""Integration with a real ComfyUI checkout: set `COMFYUI_DIR` and run with that ComfyUI's Python, e.g.

    COMFYUI_DIR=/path/to/ComfyUI /path/to/comfy-venv/bin/python -m pytest tests/test_comfyui_server.py -s

Starts ComfyUI on loopback (`--cpu`) with this pack in custom_nodes/fishs2 and the tiny checkpoint in
models/fish_s2/s2-pro, checks /object_info, runs every shipped API-format workflow through /prompt + /history and
checks the audio/video files, checks the executor's caching of the Fish S2 stages, then loads every UI-format
workflow in headless Chromium (no missing nodes, no console errors, the UI graph converts to the shipped API
prompt) and saves screenshots of the dialogue workflow and the live preview: to docs/images/ when
`FISHS2_UPDATE_DOCS_IMAGES=1` (each run renders slightly different bytes, so the committed ones change only on
purpose), else to the system temp folder.
"""

from __future__ import annotations

import copy
import json
import os
import re
import tempfile
import time
from pathlib import Path

import pytest

from .comfyui import browser
from .comfyui.harness import REPO
from .comfyui.server import ComfyServer, cached_nodes
from .comfyui.workflow_specs import (DUBBING_FPS, DUBBING_FRAMES, GEN, LIBRARY_VOICE, SUBTITLE_FPS, SUBTITLE_FRAMES,
                                     WORKFLOWS)

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
pytestmark = [pytest.mark.comfyui, pytest.mark.skipif(not COMFYUI_DIR, reason="set COMFYUI_DIR to a ComfyUI checkout to run these")]

NODE_IDS = ["FishS2LoadModel", "FishS2EncodeVoice", "FishS2SaveVoice", "FishS2LoadVoice", "FishS2TaggedText",
            "FishS2DialogueAssembler", "FishS2Generate", "FishS2Decode", "FishS2LoadScriptFile", "FishS2PickTake",
            "FishS2PickTakeCodes", "FishS2Timeline", "FishS2Subtitles", "FishS2SaveSubtitles", "FishS2MixStems",
            "FishS2FitAudio"]
WORKFLOW_DIR = REPO / "workflows"
SCREENSHOT_DIR = (REPO / "docs" / "images" if os.environ.get("FISHS2_UPDATE_DOCS_IMAGES") == "1"
                  else Path(tempfile.gettempdir()) / "fishs2-screenshots")
SCREENSHOT = SCREENSHOT_DIR / "fishs2_dialogue_workflow.png"
PREVIEW_SCREENSHOT = SCREENSHOT_DIR / "fishs2_live_preview.png"
RESULTS: dict[str, dict] = {}
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = ComfyServer(COMFYUI_DIR, tmp_path_factory.mktemp("comfyui-base"))
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()
        print(f"\n[fishs2] ComfyUI log: {srv.log_path}")


def api_workflow(stem: str) -> dict:
    return json.loads((WORKFLOW_DIR / "api" / f"{stem}.json").read_text(encoding="utf-8"))


def test_version_and_pack_loaded(server):
    log = server.log()
    version = re.search(r"ComfyUI version: (\S+)", log).group(1)
    m = re.search(r"^\s*([\d.]+) seconds(?: \(IMPORT FAILED\))?: \S*custom_nodes[/\\]fishs2$", log, re.M)
    assert m and "IMPORT FAILED" not in m.group(0), log[-3000:]
    print(f"\n[fishs2] ComfyUI {version}; pack import time reported by ComfyUI: {m.group(1)} s")


def test_object_info_lists_every_node(server):
    info = server.get("/object_info")
    for node_id in NODE_IDS:
        assert node_id in info, node_id
        node = info[node_id]
        assert node["category"] == "audio/Fish S2 Pro"
        for section in ("required", "optional"):
            for name, spec in node["input"].get(section, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{node_id}.{name}"
    assert info["FishS2LoadModel"]["input"]["required"]["checkpoint"][1]["options"][0] == "s2-pro"
    assert info["FishS2Generate"]["input"]["required"]["seed"][1]["control_after_generate"] is True
    assert info["FishS2DialogueAssembler"]["input"]["required"]["script"][1]["dynamicPrompts"] is False


def check_audio(path: Path, max_frames: int) -> float:
    import soundfile as sf

    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    assert rate == 44100 and data.shape[1] == 1, (rate, data.shape)
    n = data.shape[0]
    assert n % 2048 == 0 and 1 <= n // 2048 <= max_frames, n  # whole codec frames, within the frame budget
    return n / rate


def check_video(path: Path, frames_expected: int = DUBBING_FRAMES, fps: float = DUBBING_FPS,
                rate: int = 44100) -> tuple[float, float]:
    import av

    with av.open(str(path)) as container:
        audio = container.streams.audio[0]
        frames = sum(1 for _ in container.decode(video=0))
        assert frames == frames_expected
        assert audio.rate == rate
        seconds = float(container.duration / av.time_base)
    return frames / fps, seconds


def check_subtitled_video(server, outputs: dict, prompt: dict) -> None:
    """Save Subtitles wrote <name>.mp4/.flac/.srt/.vtt/.json side by side; the subtitles end where the speech ends."""
    import numpy as np
    import soundfile as sf
    import srt
    import webvtt

    (save_id,) = [k for k, v in prompt.items() if v["class_type"] == "FishS2SaveSubtitles"]
    (item,) = outputs[save_id]["images"]
    video_path = server.output_file(item)
    base = video_path.with_suffix("")
    assert item["filename"].endswith("_.mp4") and outputs[save_id]["animated"] == [True]
    expected, seconds = check_video(video_path, SUBTITLE_FRAMES, SUBTITLE_FPS, 48000)
    assert abs(seconds - expected) < 0.2, (seconds, expected)
    audio, rate = sf.read(str(base) + ".flac", dtype="float32", always_2d=True)
    assert rate == 48000 and audio.shape[0] == round(SUBTITLE_FRAMES * rate / SUBTITLE_FPS)  # exactly the video's length
    length = audio.shape[0] / rate
    cues = list(srt.parse(Path(str(base) + ".srt").read_text(encoding="utf-8")))
    vtt = webvtt.read(str(base) + ".vtt")
    timeline = json.loads(Path(str(base) + ".json").read_text(encoding="utf-8"))
    heard = [line for line in timeline["lines"] if line["cut"] != "all"]  # lines trimmed away are not subtitled
    assert cues and len(cues) == len(vtt.captions) == len(heard)
    assert [c.content.split(":")[0] for c in cues] == [line["speaker"] for line in heard]
    assert {c.content.split(":")[0] for c in cues} == {"Alice", "Bob"}
    last_end = cues[-1].end.total_seconds()
    assert abs(last_end - min(heard[-1]["end"], length)) <= 0.001 and last_end <= length + 0.001
    assert timeline["total_samples"] == audio.shape[0] and timeline["sample_rate"] == rate
    # The speech ends at the last cue: after it there is only the padding (silence up to the video's end).
    loud = np.nonzero(np.abs(audio[:, 0]) > 1e-3)[0]
    speech_end = (loud[-1] + 1) / rate
    assert last_end - 0.15 <= speech_end <= last_end + 0.01, (speech_end, last_end)
    # The stems: one file per speaker, as long as the mix, adding up to it (same loudness gain).
    (stems_id,) = [k for k, v in prompt.items() if v["class_type"] == "SaveAudio"]
    stems = [sf.read(str(server.output_file(i)), dtype="float32", always_2d=True)[0][:, 0] for i in outputs[stems_id]["audio"]]
    assert len(stems) == 2 and all(s.shape[0] == audio.shape[0] for s in stems)
    assert np.abs(sum(stems) - audio[:, 0]).max() < 2e-4  # FLAC (24-bit) rounding
    print(f"[fishs2] subtitled video: {len(cues)} cues, last ends at {last_end:.3f} s, speech ends at "
          f"{speech_end:.3f} s, audio {length:.3f} s, video {seconds:.3f} s")


@pytest.mark.parametrize("stem", list(WORKFLOWS))
def test_every_shipped_workflow_runs(server, stem):
    t0 = time.perf_counter()
    entry = server.run(api_workflow(stem))
    TIMINGS[stem] = time.perf_counter() - t0
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"]["messages"])[-3000:]
    RESULTS[stem] = entry
    outputs = entry["outputs"]
    if stem == "fishs2_voice_library_save":
        assert outputs["4"]["text"] == [f"saved voice '{LIBRARY_VOICE}'"]
        assert (server.base / "models" / "fish_s2" / "voices" / f"{LIBRARY_VOICE}.safetensors").is_file()
    elif stem == "fishs2_dubbing_video":
        (item,) = outputs["10"]["images"]
        expected, seconds = check_video(server.output_file(item))
        assert abs(seconds - expected) < 0.2, (seconds, expected)
    elif stem == "fishs2_dialogue_video_subtitles":
        check_subtitled_video(server, outputs, api_workflow(stem))
    else:
        (save_id,) = [k for k, v in api_workflow(stem).items() if v["class_type"] == "SaveAudio"]
        (item,) = outputs[save_id]["audio"]
        seconds = check_audio(server.output_file(item), GEN["max_frames"])
        print(f"[fishs2] {stem}: {seconds:.2f} s of audio in {TIMINGS[stem]:.1f} s")


def test_changing_only_decode_options_does_not_regenerate(server):
    stem = "fishs2_dialogue"
    prompt = api_workflow(stem)
    # ComfyUI's cache holds one result per node id, so run the workflow itself right before the changed one.
    assert server.run(prompt)["status"]["status_str"] == "success"
    generated_before = server.log().count("fishs2: generated")
    encoded_before = server.log().count("fishs2: encoding reference audio")
    changed = copy.deepcopy(prompt)
    changed["8"]["inputs"]["gain_db"] = -3.0
    changed["8"]["inputs"]["peak_normalize"] = True
    entry = server.run(changed)
    assert entry["status"]["status_str"] == "success"
    cached = cached_nodes(entry)
    assert {"1", "4", "5", "6", "7"} <= cached, cached  # model, encoders, assembler and generate: reused
    assert "8" not in cached and "9" not in cached  # decode and save ran again
    assert server.log().count("fishs2: generated") == generated_before
    assert server.log().count("fishs2: encoding reference audio") == encoded_before


def test_loading_a_saved_voice_does_not_run_the_encoder(server):
    assert server.run(api_workflow("fishs2_voice_library_save"))["status"]["status_str"] == "success"
    prompt = api_workflow("fishs2_voice_library_reuse")
    prompt["4"]["inputs"]["seed"] = 4242  # force a fresh generation, so the graph really executes
    encoded_before = server.log().count("fishs2: encoding reference audio")
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "success"
    assert server.log().count("fishs2: encoding reference audio") == encoded_before
    assert not any(v["class_type"] == "FishS2EncodeVoice" for v in prompt.values())


def test_a_changed_seed_regenerates(server):
    prompt = api_workflow("fishs2_text_to_speech")
    before = server.log().count("fishs2: generated")
    prompt["3"]["inputs"]["seed"] = 123456
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "success" and "3" not in cached_nodes(entry)
    assert server.log().count("fishs2: generated") == before + 1


def test_takes_and_pick_take_in_a_graph(server):
    """Generate 2 takes once; Codec Decode gives an AUDIO batch; Pick Take returns take 1 without padding."""
    prompt = api_workflow("fishs2_dialogue")
    prompt["7"]["inputs"].update(takes=2, max_frames=40, seed=777)
    prompt["10"] = {"class_type": "FishS2PickTake", "inputs": {"audio": ["8", 0], "index": 1, "trim_padding": True}}
    prompt["9"]["inputs"]["audio"] = ["10", 0]
    prompt["11"] = {"class_type": "SaveAudio", "inputs": {"audio": ["8", 0], "filename_prefix": "fishs2/takes"}}
    before = server.log().count("fishs2: generated")
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"]["messages"])[-3000:]
    assert server.log().count("fishs2: generated") == before + 1  # both takes in one generation
    assert re.search(r"fishs2: generated \d+ frames in \d+ segment\(s\) x 2 take\(s\), seed 777", server.log())
    batch = [check_audio(server.output_file(i), 40) for i in entry["outputs"]["11"]["audio"]]
    (picked,) = [check_audio(server.output_file(i), 40) for i in entry["outputs"]["9"]["audio"]]
    assert len(batch) == 2 and batch[0] == batch[1]  # Save Audio writes the padded batch
    assert picked <= batch[1]


def test_bad_script_reports_a_clear_error(server):
    prompt = api_workflow("fishs2_text_to_speech")
    prompt["2"]["inputs"]["text"] = "unbalanced [whisper"
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "error"
    errors = [d for kind, d in entry["status"]["messages"] if kind == "execution_error"]
    assert errors and errors[0]["node_type"] == "FishS2TaggedText"
    assert errors[0]["exception_message"].startswith("text: the tag '[' opened at line 1, column 12 is never closed")


UI_CHECK_JS = """async ([wf, name]) => {
  const app = window.app;
  await app.loadGraphData(wf, true, true, name);
  await new Promise(r => setTimeout(r, 300));
  const g = app.graph;
  const missing = wf.nodes.map(n => n.type).filter(t => !window.LiteGraph.registered_node_types[t]);
  const prompt = (await app.graphToPrompt()).output;
  for (const k of Object.keys(prompt)) delete prompt[k]._meta;
  const d = g._nodes.find(n => n.comfyClass === 'FishS2DialogueAssembler');
  const t = g._nodes.find(n => n.comfyClass === 'FishS2TaggedText' || n.comfyClass === 'FishS2DialogueAssembler');
  const w = t && t.widgets.find(x => x.name === 'script' || x.name === 'text');
  const ta = w && (w.inputEl ?? w.element);
  const toasts = [...document.querySelectorAll('.p-toast-message')].map(e => e.textContent.trim());
  return { missing, prompt, nodes: g._nodes.length, toasts,
           highlighted: ta ? (ta.fishs2Highlighter?.content.innerHTML ?? null) : undefined,
           warnings: d ? d.fishs2Warnings : null };
}"""

WARNING_JS = """async () => {
  const g = window.app.graph;
  const d = g._nodes.find(n => n.comfyClass === 'FishS2DialogueAssembler');
  const w = d.widgets.find(x => x.name === 'script');
  const ta = w.inputEl ?? w.element;
  const old = ta.value;
  ta.value = old + "\\nCarol: And who am I?";
  ta.dispatchEvent(new Event('input', { bubbles: true }));
  const warnings = [...d.fishs2Warnings];
  ta.value = old + "\\n[laugh";
  ta.dispatchEvent(new Event('input', { bubbles: true }));
  const bad = ta.fishs2Highlighter.content.innerHTML;
  ta.value = old;
  ta.dispatchEvent(new Event('input', { bubbles: true }));
  ta.focus();
  ta.setSelectionRange(old.length, old.length);
  document.execCommand('insertText', false, ' [whi');
  await new Promise(r => setTimeout(r, 100));
  const popup = document.querySelector('.fishs2-complete');
  const suggestions = popup ? [...popup.children].map(c => c.textContent) : [];
  ta.dispatchEvent(new KeyboardEvent('keydown', { key: 'Enter', bubbles: true }));
  const completed = ta.value.endsWith(' [whisper]');
  const typed = async (text, key, init = {}) => {  // type `text` at the end, then press `key` → the new value
    ta.value = old;
    ta.setSelectionRange(old.length, old.length);
    document.execCommand('insertText', false, text);
    await new Promise(r => setTimeout(r, 50));
    ta.dispatchEvent(new KeyboardEvent('keydown', { key, bubbles: true, ...init }));
    return ta.value.slice(old.length);
  };
  const composing = await typed(' [whi', 'Enter', { isComposing: true });  // an input method's own Enter
  const oneLetter = await typed(' [a', 'Enter');  // more likely a new line than [angry]
  const oneLetterTab = await typed(' [a', 'Tab');
  ta.value = old + ' [wisper] hi';  // caret after "[w": completing replaces the tag's word, not splits it
  ta.setSelectionRange(old.length + 3, old.length + 3);
  ta.dispatchEvent(new Event('input', { bubbles: true }));
  await new Promise(r => setTimeout(r, 50));
  ta.dispatchEvent(new KeyboardEvent('keydown', { key: 'Tab', bubbles: true }));
  const inside = ta.value.slice(old.length);
  ta.value = old;
  ta.dispatchEvent(new Event('input', { bubbles: true }));
  return { warnings, after: [...d.fishs2Warnings], bad, suggestions, completed, composing, oneLetter, oneLetterTab,
           inside };
}"""


def normalise_prompt(prompt: dict, info: dict) -> dict:
    """class_type + the inputs the node declares (the frontend also sends view-only widgets such as audioUI)."""

    def declared(cls: str) -> set:
        spec = info[cls]["input"]
        return {*spec.get("required", {}), *spec.get("optional", {})}

    return {
        k: {"class_type": v["class_type"], "inputs": {n: x for n, x in v["inputs"].items() if n in declared(v["class_type"])}}
        for k, v in prompt.items()
    }


def test_ui_workflows_load_in_headless_chromium(server):
    pytest.importorskip("playwright")
    if not browser.chromium_path():
        pytest.skip("no chromium on this machine")
    info = server.get("/object_info")
    server.post_json("/settings/Comfy.TutorialCompleted", True)  # no first-run template browser over the canvas
    server.post_json("/settings/Comfy.Minimap.Visible", False)
    with browser.browser_page(server.url, viewport=(1700, 950)) as page:
        for stem in WORKFLOWS:
            wf = json.loads((WORKFLOW_DIR / f"{stem}.json").read_text(encoding="utf-8"))
            result = page.evaluate(UI_CHECK_JS, [wf, stem])
            assert result["missing"] == [], (stem, result["missing"])
            assert result["toasts"] == [], (stem, result["toasts"])  # e.g. "Invalid workflow against zod schema"
            assert normalise_prompt(result["prompt"], info) == normalise_prompt(api_workflow(stem), info), stem
            if result["highlighted"] is not None:
                assert '<mark class="fishs2-tag">' in result["highlighted"], stem
            if stem == "fishs2_dialogue":
                assert result["warnings"] == []
                assert '<mark class="fishs2-speaker">Alice:</mark>' in result["highlighted"]
                checks = page.evaluate(WARNING_JS)
                assert checks["warnings"] == ["'Carol' has no voice: connect another voice"], checks
                assert checks["after"] == []
                assert '<mark class="fishs2-bad">[</mark>' in checks["bad"]
                assert checks["suggestions"][:1] == ["whisper"] and checks["completed"], checks
                assert checks["composing"] == " [whi" and checks["oneLetter"] == " [a", checks
                assert checks["oneLetterTab"].startswith(" [a") and checks["oneLetterTab"].endswith("]"), checks
                assert checks["inside"] == " [whisper] hi", checks
                page.evaluate("() => { document.activeElement?.blur?.(); window.app.canvas.deselectAll?.(); window.app.canvas.ds.offset = [120, 150]; window.app.canvas.ds.scale = 0.62; window.app.graph.setDirtyCanvas(true, true); }")
                page.page.wait_for_timeout(500)
                SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
                page.page.screenshot(path=str(SCREENSHOT))
        assert page.page_errors == [], page.page_errors
        assert page.unexpected_failures() == [], [d for d in page.failure_details if any(d.endswith(u) for u in page.unexpected_failures())]
        assert page.unexpected_console_errors() == [], page.unexpected_console_errors()
    print(f"\n[fishs2] screenshot: {SCREENSHOT}")


LIVE_PREVIEW_JS = """async ([wf, seed]) => {
  const app = window.app;
  const api = window.comfyAPI.api.api;
  await app.loadGraphData(wf, true, true, 'fishs2_live_preview');
  const gen = app.graph._nodes.find(n => n.comfyClass === 'FishS2Generate');
  gen.widgets.find(w => w.name === 'seed').value = seed;  // a new seed: Generate really runs (no cached result)
  gen.widgets.find(w => w.name === 'live_preview').value = true;
  gen.widgets.find(w => w.name === 'chunk_length').value = 1;  // one segment per line: later lines still generate
  const events = [];
  window.__fishs2Events = events;
  for (const type of ['fishs2.preview', 'executing', 'execution_start', 'execution_success', 'execution_error',
                      'execution_interrupted']) {
    api.addEventListener(type, (e) => {
      const d = e.detail;
      const node = d == null ? null : typeof d === 'object' ? (d.node ?? d.display_node ?? null) : d;
      events.push({ type, t: performance.now(), node: node == null ? null : String(node) });
    });
  }
  app.canvas.ds.scale = 0.85;  // the script, Generate with its player, Decode and Save Audio in view
  app.canvas.ds.offset = [-gen.pos[0] + 612, -gen.pos[1] + 160];
  app.canvas.deselectAll?.();
  app.graph.setDirtyCanvas(true, true);
  await app.queuePrompt(0, 1);
  return String(gen.id);
}"""

LIVE_PREVIEW_RESULT_JS = """(genId) => {
  const gen = window.app.graph.getNodeById(genId);
  const p = gen.fishs2Preview;
  return { events: window.__fishs2Events, log: p.log, errors: p.errors, phase: p.phase,
           status: p.statusEl.textContent, buffers: p.buffers.length, played: p.playedSeconds(),
           received: p.queue.receivedSeconds,
           widget: gen.widgets.map(w => w.name), serialized: gen.serialize().widgets_values };
}"""


def test_live_preview_plays_in_the_browser_before_generation_ends(server):
    """Queue the dialogue from the real frontend with live_preview on: the player on Dual-AR Generate receives
    (and schedules) chunks before the node finishes, and the preview does not change the saved audio."""
    pytest.importorskip("playwright")
    if not browser.chromium_path():
        pytest.skip("no chromium on this machine")
    import soundfile as sf

    server.post_json("/settings/Comfy.TutorialCompleted", True)
    server.post_json("/settings/Comfy.Minimap.Visible", False)
    wf = json.loads((WORKFLOW_DIR / "fishs2_dialogue.json").read_text(encoding="utf-8"))
    with browser.browser_page(server.url, viewport=(1400, 800)) as page:
        gen_id = page.evaluate(LIVE_PREVIEW_JS, [wf, 90210])
        page.page.wait_for_function(
            f"() => (window.app.graph.getNodeById({gen_id}).fishs2Preview?.log.length ?? 0) >= 2 || "
            "window.__fishs2Events.some(e => e.type === 'execution_success' || e.type === 'execution_error')",
            timeout=600_000,
        )
        page.page.wait_for_timeout(400)  # let the progress bar and the player draw
        PREVIEW_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.page.screenshot(path=str(PREVIEW_SCREENSHOT))
        page.page.wait_for_function(
            "() => window.__fishs2Events.some(e => ['execution_success', 'execution_error', "
            "'execution_interrupted'].includes(e.type))", timeout=600_000)
        page.page.wait_for_timeout(300)
        result = page.evaluate(LIVE_PREVIEW_RESULT_JS, gen_id)
        assert page.page_errors == [], page.page_errors
        assert page.unexpected_console_errors() == [], page.unexpected_console_errors()
    events = result["events"]
    kinds = [e["type"] for e in events]
    assert "execution_success" in kinds, events[-5:]
    started = next(e["t"] for e in events if e["type"] == "executing" and e["node"] == gen_id)
    ended = next(e["t"] for e in events if e["t"] > started and (
        (e["type"] == "executing" and e["node"] != gen_id) or e["type"] == "execution_success"))
    chunks = [e for e in events if e["type"] == "fishs2.preview" and e["node"] == gen_id]
    assert chunks, "no fishs2.preview message reached the page"
    assert len(result["log"]) == len(chunks) and result["errors"] == []
    first = result["log"][0]["receivedAt"]
    assert first < ended, (first, ended)  # the player had audio before Dual-AR Generate finished
    assert result["buffers"] == len(chunks) and result["phase"] == "done"
    # Chunks are contiguous and add up to exactly the audio that was saved.
    starts = [c["start"] for c in result["log"]]
    ends = [c["start"] + c["samples"] for c in result["log"]]
    assert starts == [0, *ends[:-1]]
    history = server.get("/history")
    (entry,) = [h for h in history.values() if any(
        v["class_type"] == "FishS2Generate" and v["inputs"]["seed"] == 90210 for v in h["prompt"][2].values())]
    (save_id,) = [k for k, v in entry["prompt"][2].items() if v["class_type"] == "SaveAudio"]
    (item,) = entry["outputs"][save_id]["audio"]
    assert sf.info(str(server.output_file(item))).frames == ends[-1]
    assert "fishs2_live_preview" in result["widget"] and len(result["serialized"]) == 9  # view-only: not saved
    print(f"\n[fishs2] live preview in Chromium: {len(chunks)} chunk(s); first after {(first - started) / 1000:.2f} s, "
          f"Dual-AR Generate finished after {(ended - started) / 1000:.2f} s "
          f"({(ended - first) / 1000:.2f} s later); received {result['received']:.2f} s, played {result['played']:.2f} s; "
          f"status '{result['status']}'; screenshot {PREVIEW_SCREENSHOT}")


def test_workflow_templates_are_served(server):
    templates = server.get("/workflow_templates")
    assert sorted(templates.get("fishs2", [])) == sorted(WORKFLOWS)
    wf = server.get("/api/workflow_templates/fishs2/fishs2_dialogue.json")
    assert wf["nodes"] and wf["version"] == 0.4


def test_report_timings():
    for stem, seconds in TIMINGS.items():
        print(f"[fishs2] workflow {stem}: {seconds:.1f} s")
