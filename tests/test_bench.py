"""bench/run.py end to end on the CPU with the smallest settings: the report a GPU session pays device time for must
not crash or lose a section. The figures themselves are measurements, not asserted; their shape is."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_writes_every_section(tmp_path: Path):
    report = tmp_path / "RESULTS.md"
    command = [sys.executable, str(ROOT / "bench" / "run.py"), "--threads", "1", "--frames", "4", "--runs", "2",
               "--contexts", "100,200", "--context-frames", "1", "--codec-frames", "4", "--first-audio", "2",
               "--cache", str(tmp_path / "cache"), "--write", str(report)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    text = report.read_text()
    for heading in ("## Decode", "## Per-frame time against context length", "## KV cache allocated per request",
                    "## Memory estimate, real architecture"):
        assert heading in text
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| fishs2")}
    assert set(rows) >= {"fishs2", "fishs2 static step (CUDA-graph code, eager)", "fishs2 int8"}
    assert "| official formulation |" in text and "| official / fishs2 |" in text
    # first audio: first request / later requests, both measured
    assert re.search(r"\| \d+\.\d{3} s / \d+\.\d{3} s \|", rows["fishs2"])
    assert re.search(r"first 2 frames via `decode_stream` in \d+\.\d{3} s the first time, \d+\.\d{3} s again", text)
    assert re.search(r"int8 error on this model .* relative L2 error \d+\.\d%", text)
    assert "fp8 path skipped" in done.stdout  # the CPU has no fp8 matmuls: said, not silently dropped
