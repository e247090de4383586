"""Soak (issue 6): 200 consecutive generations in one process on the tiny checkpoint — alternating voices, texts and
seeds, a cancelled run every 10th — with bounded RSS and identical results for repeated seeds.

The work is `bench/soak.py` (also a script that prints the figures). Bounds: a request that leaked its KV caches
on the tiny model grows RSS by ~170 KiB per generation (measured by stashing the caches); a clean run stays
around +2 KiB per generation, from allocator noise.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

MAX_SLOPE = 32 * 1024  # bytes per generation, after the warm-up
MAX_GROWTH = 16 * 2**20  # bytes from the end of the warm-up to the last generation


def load_bench():
    path = Path(__file__).resolve().parents[1] / "bench" / "soak.py"
    spec = importlib.util.spec_from_file_location("fishs2_bench_soak", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_soak_200_generations(tiny_tts, capsys):
    soak = load_bench()
    voices = soak.reference_voices(tiny_tts, Path(__file__).parent / "fixtures" / "golden" / "codec_input.wav")
    report = soak.run_soak(tiny_tts, voices, generations=200, max_frames=6, warmup=20, log=None)
    with capsys.disabled():
        print(f"\n[fishs2] {report.summary()}")
    assert report.generations == 200 and report.interrupts == 20
    assert report.repeats_checked >= 150 and report.mismatches == []
    assert report.slope < MAX_SLOPE, report.summary()
    assert report.end - report.start < MAX_GROWTH, report.summary()


def test_soak_report_detects_growth_and_mismatches():
    """The figures the soak asserts on are computed right (a leak-shaped RSS series gives its slope)."""
    soak = load_bench()
    report = soak.SoakReport(warmup=2, rss=[(i, 1000 + (5000 if i >= 2 else 0) + 300 * i) for i in range(10)])
    assert report.start == 1000 + 300
    assert report.end == 1000 + 5000 + 2700
    assert report.slope == pytest.approx(300)
    assert report.peak == report.end
