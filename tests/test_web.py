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
]
VOICE_SETS = [
    [None] * 8,
    ["", ""] + [None] * 6,
    ["bob", "alice"] + [None] * 6,
    ["", None, ""] + [None] * 5,
    [""] * 8,
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
