"""Soak: many consecutive generations in one process — alternating voices, texts and seeds, a cancelled run every
10th — checking that resident memory does not grow and that every repeated (text, voice, seed) gives identical
codes and audio.

    python bench/soak.py                                  # 200 generations on the tiny test checkpoint
    python bench/soak.py --checkpoint ~/models/s2-pro --device cuda --max-frames 64 --generations 200

Prints RSS at the start (after a warm-up), at the end, the least-squares slope in KiB per generation, and the
duration. `tests/test_soak.py` runs the same function and asserts the bounds.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

TEXTS = [
    "Hello there, this is a short line.",
    "[whisper] Keep it down. [excited] We did it!",
    "<|speaker:0|>First voice speaks.<|speaker:0|>And then again, a little longer.",
]
SEEDS = [1, 2, 3, 4, 5]
INTERRUPT_EVERY = 10


class Interrupted(Exception):
    """Stands in for ComfyUI's interrupt, raised from the progress callback."""


def rss_bytes() -> int:
    """Current resident set size of this process."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        pass
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # peak, KiB on Linux, bytes on macOS
        return peak if sys.platform == "darwin" else peak * 1024


@dataclass
class SoakReport:
    generations: int = 0
    interrupts: int = 0
    repeats_checked: int = 0
    mismatches: list = field(default_factory=list)
    rss: list = field(default_factory=list)  # (generation index, bytes) after each generation
    warmup: int = 0
    seconds: float = 0.0

    @property
    def start(self) -> int:
        """RSS after the warm-up (allocator pools and lazy imports settle in the first runs)."""
        return self.rss[self.warmup - 1][1] if self.warmup else self.rss[0][1]

    @property
    def end(self) -> int:
        return self.rss[-1][1]

    @property
    def peak(self) -> int:
        return max(b for _, b in self.rss[self.warmup :])

    @property
    def slope(self) -> float:
        """Least-squares RSS growth in bytes per generation, after the warm-up."""
        points = np.array(self.rss[self.warmup :], dtype=np.float64)
        if len(points) < 2:
            return 0.0
        return float(np.polyfit(points[:, 0], points[:, 1], 1)[0])

    def summary(self) -> str:
        mib = 1024 * 1024
        return (
            f"soak: {self.generations} generations ({self.interrupts} interrupted, {self.repeats_checked} repeats "
            f"checked, {len(self.mismatches)} mismatches) in {self.seconds:.1f} s; RSS start {self.start / mib:.1f} MiB "
            f"(after {self.warmup} warm-up runs), end {self.end / mib:.1f} MiB, peak {self.peak / mib:.1f} MiB, "
            f"slope {self.slope / 1024:+.2f} KiB/generation"
        )


def run_soak(tts, voices, generations: int = 200, max_frames: int = 6, warmup: int = 20, log=print) -> SoakReport:
    """`generations` runs of `tts.generate`, cycling texts, voices and seeds (each combination recurs every 30
    runs); every 10th is cancelled from `on_frame` after 2 frames. Repeated (text, voice, seed) must give identical
    codes; the first two complete runs of each combination are also decoded and must give identical audio."""
    report = SoakReport(warmup=min(warmup, generations))
    seen: dict[tuple, torch.Tensor] = {}
    heard: dict[tuple, torch.Tensor] = {}
    decoded_twice: set[tuple] = set()
    t0 = time.perf_counter()
    for i in range(generations):
        text, voice, seed = i % len(TEXTS), i % len(voices), SEEDS[(i // 2) % len(SEEDS)]
        key = (text, voice, seed)
        if i % INTERRUPT_EVERY == INTERRUPT_EVERY - 1:

            def on_frame(done):
                if done == 2:
                    raise Interrupted

            try:
                tts.generate(TEXTS[text], [voices[voice]], seed=seed, max_frames=max_frames, on_frame=on_frame)
            except Interrupted:
                report.interrupts += 1
        else:
            codes = tts.generate(TEXTS[text], [voices[voice]], seed=seed, max_frames=max_frames).codes
            if key in seen:
                report.repeats_checked += 1
                if not torch.equal(codes, seen[key]):
                    report.mismatches.append((i, key, "codes"))
            seen.setdefault(key, codes)
            if key not in decoded_twice:
                audio = tts.decode(codes)
                if key in heard:
                    decoded_twice.add(key)
                    if not torch.equal(audio, heard[key]):
                        report.mismatches.append((i, key, "audio"))
                heard.setdefault(key, audio)
        report.generations += 1
        report.rss.append((i, rss_bytes()))
        if log and (i + 1) % 50 == 0:
            log(f"  {i + 1:4d} generations, RSS {report.rss[-1][1] / 2**20:.1f} MiB, {time.perf_counter() - t0:.0f} s")
    gc.collect()
    report.seconds = time.perf_counter() - t0
    return report


def tiny_setup(directory: Path):
    """The tiny test checkpoint and two voices (the reference clip, and its second half)."""
    from fishs2 import FishS2
    from tests.conftest import copy_tiny_checkpoint
    from tests.golden import SHIPPED

    tts = FishS2.from_pretrained(copy_tiny_checkpoint(directory / "s2-pro"), device="cpu", dtype="fp32")
    return tts, reference_voices(tts, SHIPPED / "codec_input.wav")


def reference_voices(tts, wav: Path):
    import soundfile

    samples, rate = soundfile.read(str(wav), dtype="float32")
    first = tts.encode_voice(samples, "This is the reference voice.", sample_rate=rate, name="a")
    second = tts.encode_voice(np.concatenate([samples[rate // 3 :], samples[: rate // 3]]), "Another voice.",
                              sample_rate=rate, name="b")
    return [first, second]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="checkpoint directory (default: the tiny test checkpoint)")
    parser.add_argument("--voice", type=Path, default=REPO / "tests" / "fixtures" / "golden" / "codec_input.wav")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--generations", type=int, default=200)
    parser.add_argument("--max-frames", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args(argv)

    import logging

    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        if args.checkpoint:
            from fishs2 import FishS2

            tts = FishS2.from_pretrained(args.checkpoint, device=args.device, dtype=args.dtype)
            voices = reference_voices(tts, args.voice)
        else:
            tts, voices = tiny_setup(Path(tmp))
        print(f"soak on {tts.directory.name} ({tts.device}, {tts.dtype}); RSS at load {rss_bytes() / 2**20:.1f} MiB")
        report = run_soak(tts, voices, args.generations, args.max_frames, args.warmup)
    print(report.summary())
    return 1 if report.mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
