"""Start a real ComfyUI (`COMFYUI_DIR`) on loopback with this pack and the tiny checkpoint, and talk to its API."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from .harness import REPO, make_checkpoint


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """`python main.py --cpu --base-directory <tmp>`: custom_nodes/fishs2 → this repository (a symlink named like
    the engine package, as a `git clone` would be), models/fish_s2/s2-pro = the tiny checkpoint."""

    def __init__(self, comfyui_dir: str, base: Path, python: str = sys.executable):
        self.comfyui_dir = comfyui_dir
        self.base = base
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "server.log"
        for d in ("custom_nodes", "input", "output", "temp", "user", "models/fish_s2"):
            (base / d).mkdir(parents=True, exist_ok=True)
        (base / "custom_nodes" / "fishs2").symlink_to(REPO, target_is_directory=True)
        make_checkpoint(base / "models" / "fish_s2" / "s2-pro")
        self._log = open(self.log_path, "w", encoding="utf-8")
        self.proc = subprocess.Popen(
            [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
             "--base-directory", str(base), "--disable-auto-launch"],
            cwd=comfyui_dir, stdout=self._log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                self.get("/object_info/FishS2LoadModel")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(1)
        raise TimeoutError(f"ComfyUI did not answer within {timeout} s:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.load(r)

    def post_json(self, path: str, value) -> None:
        req = urllib.request.Request(self.url + path, data=json.dumps(value).encode(),
                                     headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=30).close()

    def post_prompt(self, prompt: dict) -> str:
        body = json.dumps({"prompt": prompt, "client_id": str(uuid.uuid4())}).encode()
        req = urllib.request.Request(self.url + "/prompt", data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.load(r)["prompt_id"]
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"/prompt refused the workflow: {exc.read().decode()}") from exc

    def run(self, prompt: dict, timeout: float = 600) -> dict:
        """POST a prompt and wait on /history until it finished; returns its history entry."""
        prompt_id = self.post_prompt(prompt)
        deadline = time.time() + timeout
        while time.time() < deadline:
            history = self.get(f"/history/{prompt_id}")
            entry = history.get(prompt_id)
            if entry and entry.get("status", {}).get("status_str") in ("success", "error"):
                return entry
            time.sleep(0.5)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout} s")

    def output_file(self, item: dict) -> Path:
        folder = {"output": "output", "temp": "temp"}[item["type"]]
        return self.base / folder / item.get("subfolder", "") / item["filename"]


def cached_nodes(entry: dict) -> set[str]:
    for kind, data in entry["status"]["messages"]:
        if kind == "execution_cached":
            return set(data["nodes"])
    return set()
