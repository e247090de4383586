"""Headless Chromium (Playwright driving the system `chromium`) against a running ComfyUI frontend."""

from __future__ import annotations

import os
import re
import shutil
from contextlib import contextmanager

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 # a test cannot click before sound may play; a user's click on Queue allows it the same way
                 "--autoplay-policy=no-user-gesture-required"]
# Console errors ComfyUI's own frontend produces without network access or a user profile; nothing of the pack's.
BASELINE_ERRORS = [
    re.compile(r"/user\.css$"),
    re.compile(r"/favicon\.ico$"),
    re.compile(r"/api/userdata"),
    re.compile(r"^https?://(?!127\.0\.0\.1)"),  # the frontend's release/news checks; this machine is offline
]


def chromium_path() -> str | None:
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


class Page:
    """One page of the ComfyUI frontend with its console errors, failed requests and page errors recorded."""

    def __init__(self, page):
        self.page = page
        self.console_errors: list[str] = []
        self.failed: list[str] = []
        self.page_errors: list[str] = []
        page.on("console", self._console)
        self.failure_details: list[str] = []
        # ERR_ABORTED: a request cancelled because the page moved on (a new graph, closing) - not an error.
        page.on("requestfailed", lambda r: None if "ERR_ABORTED" in str(r.failure) else self._fail(r.url, f"failed ({r.failure})"))
        page.on("response", lambda r: self._fail(r.url, f"HTTP {r.status}") if r.status >= 400 else None)
        page.on("pageerror", lambda e: self.page_errors.append(str(e)))

    def _console(self, message) -> None:
        if message.type == "error":
            url = (message.location or {}).get("url", "")
            self.console_errors.append(f"{message.text} @ {url}" if url else message.text)

    def _fail(self, url: str, why: str) -> None:
        self.failed.append(url)
        self.failure_details.append(f"{why} {url}")

    def open(self, url: str) -> None:
        self.page.goto(url, wait_until="networkidle")
        self.page.wait_for_function("window.app && window.app.graph && window.LiteGraph", timeout=120_000)

    def unexpected_failures(self) -> list[str]:
        return [u for u in self.failed if not any(p.search(u) for p in BASELINE_ERRORS)]

    def unexpected_console_errors(self) -> list[str]:
        """Console errors other than the 'Failed to load resource' lines of the baseline requests above."""

        def baseline(error: str) -> bool:
            text, _, url = error.partition(" @ ")
            return text.startswith("Failed to load resource") and any(p.search(url) for p in BASELINE_ERRORS)

        return [e for e in self.console_errors if not baseline(e)]

    def evaluate(self, script: str, arg=None):
        return self.page.evaluate(script, arg)


@contextmanager
def browser_page(url: str, viewport=(1600, 1000)):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            page = Page(browser.new_page(viewport={"width": viewport[0], "height": viewport[1]}))
            page.open(url)
            yield page
        finally:
            browser.close()


# Lays the loaded graph out in columns by dependency depth and sizes the text nodes; returns nothing.
LAYOUT_JS = """(sizes) => {
  const g = window.app.graph;
  const nodes = [...g._nodes].sort((a, b) => a.id - b.id);
  const depth = new Map();
  const parents = (n) => (n.inputs || []).filter(i => i.link != null).map(i => {
    const l = g.links.get ? g.links.get(i.link) : g.links[i.link]; return g.getNodeById(l.origin_id); });
  const d = (n) => { if (depth.has(n.id)) return depth.get(n.id); const ps = parents(n);
    const v = ps.length ? 1 + Math.max(...ps.map(d)) : 0; depth.set(n.id, v); return v; };
  nodes.forEach(d);
  for (const n of nodes) { const s = sizes[n.type]; if (s) n.setSize([Math.max(n.size[0], s[0]), Math.max(n.size[1], s[1])]); }
  const cols = [];
  for (const n of nodes) { (cols[d(n)] ||= []).push(n); }
  let x = 40;
  for (const col of cols) {
    if (!col) continue;
    let y = 80; let w = 0;
    for (const n of col) { n.pos = [x, y]; y += n.size[1] + 70; w = Math.max(w, n.size[0]); }
    x += w + 60;
  }
  g.setDirtyCanvas(true, true);
}"""

SIZES = {
    "FishS2TaggedText": [420, 190],
    "FishS2DialogueAssembler": [470, 430],
    "FishS2EncodeVoice": [380, 210],
    "FishS2Generate": [320, 330],
    "FishS2Decode": [280, 110],
    "FishS2MixStems": [300, 170],
    "FishS2FitAudio": [320, 330],
    "FishS2SaveSubtitles": [340, 330],
}
