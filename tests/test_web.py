"""The web extension's pure helpers (web/fishs2_script.js) agree with fishs2/script.py; the JS files parse.

Needs `node` (skipped without it)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from fishs2.errors import TextError
from fishs2.script import assign_slots, parse_script

WEB = Path(__file__).resolve().parents[1] / "web"
NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")

SCRIPTS = [
    "Alice: Hi.\nBob: Hello.",
    "[S1] a [S2] b\n@Voice3 c",
    "<|speaker:0|>a<|speaker:1|>b",
    "Intro.\nAlice: x\n  more\nCarol: y",
    "[S1] The list:\nNote: not a speaker",
    "小明：你好\n小红： 再见",
    "Speaker 2: two\nS1: one\nvoice3: three",
    "@Alice hi\n@Bob: there",
    "just text, no labels",
    "José María: ¡Hola!\nO'Neil: hey",
    "ALICE: hi\nBob: yo\nAlice: again",
    "Mrs. Green: Good morning.\nMr. Brown: Morning to you.",
    "Straße: hi\nSTRASSE: yo",
    "Alice: hi\u2028Bob: yo\x85Carol: hey",
    "Mr.\tBrown: hi\nAlice: yo",
    "S２: hi\nSpeaker ３: yo\n[S４] go",
]
VOICE_SETS = [
    [None] * 8,
    ["", ""] + [None] * 6,
    ["bob", "alice"] + [None] * 6,
    ["", None, ""] + [None] * 5,
    [""] * 8,
    ["Mr_ Brown", "Mrs_ Green", "O_Neil"] + [None] * 5,
    ["Alice", "Bob", "Carol"] + [None] * 5,
]


def run_js(code: str):
    module = (WEB / "fishs2_script.js").as_uri()
    out = subprocess.run(
        [NODE, "--input-type=module", "-e", f"import * as m from {json.dumps(module)};\n{code}"],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout)


def test_js_files_parse():
    for path in WEB.glob("*.js"):
        subprocess.run([NODE, "--check", str(path)], check=True)


def test_js_speakers_match_python():
    js = run_js(f"console.log(JSON.stringify({json.dumps(SCRIPTS)}.map(s => m.scriptSpeakers(s).speakers)))")
    assert js == [list(parse_script(s).speakers) for s in SCRIPTS]


def python_has_missing_voice(script: str, voices) -> bool:
    parsed = parse_script(script)
    connected = [v is not None for v in voices]
    if not any(connected):
        return True
    try:
        assign_slots(parsed.speakers, [v or None for v in voices], connected=connected)
    except TextError:
        return True
    return False


def test_js_missing_voice_warnings_match_python():
    cases = [(s, v) for s in SCRIPTS for v in VOICE_SETS]
    js = run_js(f"console.log(JSON.stringify({json.dumps(cases)}.map(([s, v]) => m.missingVoiceWarnings(s, v))))")
    for (script, voices), warnings in zip(cases, js):
        assert bool(warnings) == python_has_missing_voice(script, voices), (script, voices, warnings)


def test_js_highlight_and_suggestions():
    out = run_js(
        "console.log(JSON.stringify([m.highlightHtml('Alice: [whisper] hi ] <b>', true), "
        "m.highlightHtml('a [b', false), m.tagSuggestions('la'), m.tagSuggestions('')]))"
    )
    html, bad, la, all_tags = out
    assert '<mark class="fishs2-speaker">Alice:</mark>' in html
    assert '<mark class="fishs2-tag">[whisper]</mark>' in html
    assert '<mark class="fishs2-bad">]</mark>' in html and "&lt;b&gt;" in html
    assert '<mark class="fishs2-bad">[</mark>' in bad
    assert la[:2] == ["laughing", "laugh"]
    assert len(all_tags) == 12


# ── live-preview player (web/fishs2_player.js) ──────────────────────────────────────────────────────────────


def run_player_js(code: str):
    module = (WEB / "fishs2_player.js").as_uri()
    out = subprocess.run(
        [NODE, "--input-type=module", "-e", f"import * as m from {json.dumps(module)};\n{code}"],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout)


def test_player_reads_the_wav_chunks_the_engine_sends():
    """The player's WAV reader gives back the samples of `PreviewChunk.wav_bytes()` (16-bit PCM, mono, 44.1 kHz)."""
    import base64

    import torch

    from fishs2.preview import PreviewChunk

    audio = torch.linspace(-1.0, 1.0, 1001) * 0.9
    audio[10] = 1.5  # clipped to full scale
    chunk = PreviewChunk(take=0, segment=0, start=0, audio=audio, sample_rate=44100, segment_done=True)
    wav = base64.b64encode(chunk.wav_bytes()).decode("ascii")
    got = run_player_js(
        f"const w = m.wavToFloat32(m.decodeBase64({json.dumps(wav)}));"
        "console.log(JSON.stringify({rate: w.sampleRate, channels: w.channels, samples: Array.from(w.samples)}))"
    )
    assert got["rate"] == 44100 and got["channels"] == 1 and len(got["samples"]) == 1001
    expected = audio.clamp(-1, 1)
    assert max(abs(a - float(b)) for a, b in zip(got["samples"], expected)) <= 1 / 32768 + 1e-7
    errors = run_player_js(
        "const out = []; for (const b of [new Uint8Array(4), new TextEncoder().encode('RIFF\\0\\0\\0\\0WAVEjunk\\0\\0\\0\\0')])"
        " { try { m.wavToFloat32(b); out.push(null); } catch (e) { out.push(e.message); } } console.log(JSON.stringify(out))"
    )
    assert errors == ["not a WAV file", "WAV file without fmt or data chunk"]


def test_player_queue_orders_chunks_and_starts_a_new_run_per_prompt():
    got = run_player_js(
        """
const q = new m.ChunkQueue(0);
const c = (start, samples, extra = {}) => ({ node: "7", prompt_id: "p1", take: 0, segment: 0, start, samples,
  sample_rate: 44100, line_done: false, wav: "", ...extra });
const steps = [];
const s = (msg) => { const r = q.accept(msg, 0); steps.push([r.reset, r.ready.map(x => x.start)]); };
s(c(0, 100));                  // in order
s(c(300, 50, {line_done: true})); // early: waits for 100
s(c(100, 200));                // fills the gap: 100 and 300 are ready
s(c(0, 10, {take: 1}));        // another take: ignored
s(c(0, 40, {prompt_id: "p2"})); // a new prompt: reset, plays from 0
s({ nonsense: true });
console.log(JSON.stringify({ steps, chunks: q.chunks, received: q.receivedSamples, lines: q.linesDone,
  status: m.statusText({ phase: "generating", played: 1.25, received: 3, lines: 2, line: 3 }),
  done: m.statusText({ phase: "done", played: 3, received: 3, lines: 1 }), segment: q.segment,
  idle: m.statusText({ phase: "idle" }), long: m.formatSeconds(75.5) }));
"""
    )
    assert got["steps"] == [[False, [0]], [False, []], [False, [100, 300]], [False, []], [True, [0]], [False, []]]
    assert got["chunks"] == 1 and got["received"] == 40 and got["lines"] == 0
    assert got["status"] == "generating · 1.3 s / 3.0 s · line 3" and got["done"] == "generated · 3.0 s / 3.0 s · 1 line"
    assert got["segment"] == 0
    assert got["idle"].startswith("live preview") and got["long"] == "1:15.5"
