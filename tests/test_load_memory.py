"""Loading needs the loaded weights plus one tensor in transit: peak host RAM during load ≤ 1.2 × the weights."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fishs2.synthetic import Sizes, write_checkpoint

from .conftest import GOLDEN_CODEC, GOLDEN_MODEL

ROOT = Path(__file__).resolve().parents[1]
MID = Sizes(dim=512, n_layer=8, n_head=8, n_local_heads=2, head_dim=64, intermediate_size=1536, n_fast_layer=2,
            codebook_size=1024, max_seq_len=4096)

# Runs in a fresh process: warm up the load path on the tiny checkpoint (so first-use library pages do not count),
# then sample the resident set every millisecond while the mid-size checkpoint loads.
MEASURE = """
import json, re, sys, threading, time, torch
from fishs2.checkpoint import load_model
from fishs2.config import ModelConfig

def rss():
    return int(re.search(r"VmRSS:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024

dtype = getattr(torch, sys.argv[3])
load_model(sys.argv[1], ModelConfig.from_file(sys.argv[1] + "/config.json"), dtype, "cpu")
base, peak, done = rss(), [0], [False]
def sample():
    while not done[0]:
        peak[0] = max(peak[0], rss())
        time.sleep(0.001)
thread = threading.Thread(target=sample)
thread.start()
model = load_model(sys.argv[2], ModelConfig.from_file(sys.argv[2] + "/config.json"), dtype, "cpu")
done[0] = True
thread.join()
peak[0] = max(peak[0], rss())
weights = sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps({"base": base, "peak": peak[0], "weights": weights}))
"""


@pytest.fixture(scope="module")
def mid_checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("mid"), GOLDEN_CODEC, MID, dtype=torch.bfloat16, shards=2)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_peak_ram_during_load(mid_checkpoint, dtype):
    out = subprocess.run([sys.executable, "-c", MEASURE, str(GOLDEN_MODEL), str(mid_checkpoint), dtype],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    m = json.loads(out.stdout.strip().splitlines()[-1])
    growth = m["peak"] - m["base"]
    print(f"load {dtype}: weights {m['weights'] / 2**20:.0f} MiB, peak RSS growth {growth / 2**20:.0f} MiB "
          f"({growth / m['weights']:.2f}×)")
    assert growth <= 1.2 * m["weights"]
