"""Operations in one decode step (`StaticDecoder.step`, what the CUDA graph records) for the real architecture's
layer structure (36 slow + 4 fast layers, qk-norm where the real config has it, the real vocabulary) in bf16, with
the widths shrunk so that it runs on the CPU in seconds. View-only operations are not counted; every other ATen call
is at least one kernel on a GPU, and in a graph each costs about the same few microseconds whatever its size, so the
count is the lever on a step's non-matmul time. Also lists where the calls come from.

    python bench/step_ops.py [--top 15]
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import traceback
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fishs2.config import ModelConfig  # noqa: E402
from fishs2.generate import StaticDecoder, slow_step  # noqa: E402
from fishs2.model import DualAR  # noqa: E402
from fishs2.sampling import SamplingParams, make_generators  # noqa: E402

REAL_CONFIG = ROOT / "tests" / "fixtures" / "golden" / "real_config_reference.json"
VIEWS = {"view", "_unsafe_view", "t", "transpose", "expand", "slice", "select", "unsqueeze", "squeeze", "as_strided",
         "alias", "detach", "split", "split_with_sizes", "unbind", "permute", "reshape", "view_as_real",
         "view_as_complex", "lift_fresh", "flatten", "chunk"}

NO_OPS_WHEN_SAME = {"to", "type_as", "contiguous"}  # these return their input when it already fits


class CountCalls(TorchDispatchMode):
    """Counts ATen calls by (operation, innermost fishs2 source line); a call that returns its input unchanged (a
    cast to the dtype it already has) launches nothing and is not counted."""

    def __init__(self):
        super().__init__()
        self.calls = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket.__name__ in NO_OPS_WHEN_SAME and out is args[0]:
            return out
        frames = [f for f in traceback.extract_stack() if "/fishs2/" in f.filename]
        where = f"{frames[-1].filename.split('fishs2/')[-1]}:{frames[-1].lineno}" if frames else "?"
        self.calls[func.overloadpacket.__name__, where] += 1
        return out


def narrow_real_config() -> ModelConfig:
    raw = json.loads(REAL_CONFIG.read_text())
    for part in ("text_config", "audio_decoder_config"):
        raw[part].update(dim=256, intermediate_size=512, n_head=8, n_local_heads=2, head_dim=32, text_dim=256,
                         audio_hidden_dim=512)
    raw["text_config"]["max_seq_len"] = 4096
    return ModelConfig.from_dict(raw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--top", type=int, default=15, help="source lines to list")
    args = parser.parse_args()
    config = narrow_real_config()
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        torch.manual_seed(0)
        model = DualAR(config).eval().requires_grad_(False)
    finally:
        torch.set_default_dtype(default)
    params = SamplingParams(0.8, 0.8, 30)
    with torch.inference_mode():
        decoder = StaticDecoder(model, 1, 1024, -1)
        state = decoder.begin(None)
        prompt = torch.randint(0, 100, (1, config.num_codebooks + 1, 20))
        logits, hidden = slow_step(model, prompt, state)
        generators = make_generators([1], model.device)
        decoder.start(params, generators)
        decoder.first_frame(logits, hidden)
        decoder()
        with CountCalls() as counter:
            decoder.step()
    counted = {key: n for key, n in counter.calls.items() if key[0] not in VIEWS}
    print(f"{config.slow.n_layer} slow + {config.fast.n_layer} fast layers × {config.num_codebooks} codebooks, bf16: "
          f"{sum(counted.values())} operations per decode step (views not counted)")
    by_line = collections.Counter()
    for (op, where), n in counted.items():
        by_line[where, op] += n
    for (where, op), n in by_line.most_common(args.top):
        print(f"{n:6d}  {op:24s} {where}")


if __name__ == "__main__":
    main()
