"""Write the example workflows: `workflows/api/<name>.json` (API format, from workflow_specs.py) and
`workflows/<name>.json` (UI format), made by loading the API prompt into a running ComfyUI's frontend
(`app.loadApiJson`), laying it out, adding a note, fixing the seed control to "fixed" and serialising the graph.

    python -m tests.comfyui.build_workflows --url http://127.0.0.1:8188
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .browser import LAYOUT_JS, SIZES, browser_page
from .workflow_specs import WORKFLOWS

ROOT = Path(__file__).resolve().parents[2] / "workflows"

NOTES = {
    "fishs2_text_to_speech": "Text to speech without a reference: the model picks a voice.\nPut an S2 Pro checkpoint in models/fish_s2/s2-pro (or choose 'fishaudio/s2-pro (download)' in Load Model).\nTags in [brackets] steer delivery. Output: output/fishs2/tts_*.flac",
    "fishs2_voice_cloning": "Voice cloning: a reference clip + its exact transcript → a voice.\nThe encoder runs once; ComfyUI caches the voice until the clip or transcript changes.",
    "fishs2_dialogue": "Two-speaker dialogue. Speakers are matched to voices by name (the 'name' of each encoder), then by order.\nLabels: 'Name:', [S1], @Voice1 or <|speaker:0|>. A speaker without a voice is flagged on the node.",
    "fishs2_voice_library_save": "Encodes the reference once and saves it as models/fish_s2/voices/fishs2_example_voice.safetensors.\nRun this before 'fishs2_voice_library_reuse'.",
    "fishs2_voice_library_reuse": "Reuses a saved voice: no reference audio, no encoding.\nRun 'fishs2_voice_library_save' first (press R to refresh the voice list).",
    "fishs2_dubbing_video": "Voice-over on an image sequence: Create Video muxes the 44.1 kHz audio with 60 frames at 10 fps.\nThe video length (frames / fps) sets the duration; longer speech is cut at the end of the video.",
    "fishs2_dialogue_video_subtitles": "Dialogue → video with side-car subtitles. Generate uses chunk_length 1 (one segment per line) so every line is timed.\nMix & Stems lays the lines out with gaps; Fit Audio makes the mix 48 kHz, -16 LUFS and exactly as long as the 150 frames at 10 fps.\nSave Subtitles writes output/fishs2/dialogue_video_NNNNN_.mp4 + .srt + .vtt + .json + .flac with one name (players load the .srt).\nThe stems (one track per speaker, same gain as the mix) go to output/fishs2/dialogue_stems_*.flac. Swap Load Image / Repeat for your video's frames.",
}

BUILD_JS = """async ([api, name, layoutSizes, note]) => {
  const app = window.app;
  await app.loadApiJson(api, name);
  (%LAYOUT%)(layoutSizes);
  const g = app.graph;
  for (const n of g._nodes) {
    const c = (n.widgets || []).find(w => w.name === 'control_after_generate');
    if (c) c.value = 'fixed';
    if (n.type.startsWith('FishS2')) n.properties = { cnr_id: 'fishs2', ...n.properties };
  }
  const maxY = Math.max(...g._nodes.map(n => n.pos[1] + n.size[1]));
  const noteNode = window.LiteGraph.createNode('Note');
  noteNode.widgets[0].value = note;
  noteNode.pos = [40, maxY + 80];
  noteNode.size = [640, 130];
  g.add(noteNode);
  return JSON.stringify(g.serialize());  // JSON drops undefined fields (page.evaluate would turn them into null)
}""".replace("%LAYOUT%", LAYOUT_JS)


def build(url: str) -> list[Path]:
    ROOT.joinpath("api").mkdir(parents=True, exist_ok=True)
    written = []
    with browser_page(url) as page:
        for stem, (title, api) in WORKFLOWS.items():
            api_path = ROOT / "api" / f"{stem}.json"
            api_path.write_text(json.dumps(api, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            graph = json.loads(page.evaluate(BUILD_JS, [api, stem, SIZES, f"{title}\n\n{NOTES[stem]}"]))
            graph.setdefault("extra", {})["fishs2"] = {"title": title, "api": f"api/{stem}.json"}
            ui_path = ROOT / f"{stem}.json"
            ui_path.write_text(json.dumps(graph, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            written += [api_path, ui_path]
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8188")
    for path in build(parser.parse_args().url):
        print(path)


if __name__ == "__main__":
    main()
