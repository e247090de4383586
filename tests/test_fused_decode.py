"""Fused decode blocks (`TransformerBlock.fused_forward`): on CUDA a block's decode rows run its RMSNorms, SwiGLU and
residual adds inside the matvec kernel's four calls (`fishs2.matvec`). The CPU stands in for CUDA here by letting
`matvec.kernel_takes` accept its rows: through the GEMM fallback the fused path must be the unfused arithmetic bit for
bit, and through the kernel itself (Triton's interpreter) it must still give the official codes. The same path on a
GPU is in tests/test_cuda.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
import torch

from fishs2 import matvec
from fishs2.checkpoint import load_model
from fishs2.config import ModelConfig
from fishs2.prompt import PromptBuilder
from fishs2.tokenizer import Tokenizer

from .test_perf_paths import CASES, GOLDEN, MODES, segments

ROOT = Path(__file__).resolve().parents[1]


def take_cpu_rows(monkeypatch) -> Counter:
    """Let the dispatch treat CPU decode rows as the kernel's (any float dtype), with no kernel: every fused call
    then runs `matvec.gemm`. → a count of the fused options seen.

    Every loaded copy of the dispatch module is patched: the node-pack tests import the engine a second time under
    the pack's package name (the custom op `fishs2::linear` runs the copy that registered it, the first)."""
    seen = Counter()
    copies = [m for name, m in sys.modules.items() if name == "fishs2.matvec" or name.endswith(".fishs2.matvec")]
    for copy in copies:
        monkeypatch.setattr(copy, "kernel_takes", lambda x, weight: x.shape[0] <= matvec.MAX_ONE_PASS_ROWS)
        monkeypatch.setattr(copy, "cuda_kernel", lambda: None)

        def gemm(x, weight, scales, norm_weight=None, eps=0.0, swiglu=False, residual=None, real_gemm=copy.gemm):
            seen.update(["norm"] * (norm_weight is not None) + ["swiglu"] * swiglu
                        + ["residual"] * (residual is not None) + ["call"])
            return real_gemm(x, weight, scales, norm_weight, eps, swiglu, residual)

        monkeypatch.setattr(copy, "gemm", gemm)
    return seen


def golden_engine(compile_dir: Path | None = None):
    directory = GOLDEN.directory / "tiny_s2"
    tokenizer = Tokenizer(directory / "tokenizer.json")
    config = ModelConfig.from_file(directory / "config.json")
    config = config.with_semantic_range(tokenizer.semantic_begin_id, tokenizer.semantic_end_id)
    model = load_model(directory, config, torch.float32, "cpu")
    if compile_dir is not None:
        model.compile_blocks(compile_dir)
    return model, tokenizer, PromptBuilder(tokenizer, config.num_codebooks)


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_fused_blocks_reproduce_the_official_generation(monkeypatch, static):
    """Every golden case and sampling mode: the fused blocks give the official codes, and each fusion ran (per block
    2 norms, 1 SwiGLU, 2 residual adds; the fast head's norm)."""
    seen = take_cpu_rows(monkeypatch)
    engine = golden_engine()
    for name in CASES:
        for mode in MODES:
            got = segments(engine, name, mode, static=static)
            expected = [GOLDEN[f"{name}/{mode}/batch{b}.yielded_codes"] for b in range(len(got))]
            assert len(got) == len(GOLDEN.meta["cases"][name]["modes"][mode]["batches"])
            assert all(torch.equal(g, e) for g, e in zip(got, expected)), (name, mode)
    assert seen["swiglu"] > 0 and seen["residual"] == 2 * seen["swiglu"]
    assert seen["norm"] > 2 * seen["swiglu"]  # the fast AR's output norm besides the blocks' two


def test_fused_blocks_compile_through_the_op(monkeypatch, tmp_path):
    """Compiled blocks reach the fused calls through the custom op `fishs2::linear` (its schema with the norm
    weight, eps, swiglu and residual arguments), never traced: the official codes, eager and static."""
    if matvec.linear_op is None:
        pytest.skip("torch.library.custom_op needs PyTorch 2.4")
    seen = take_cpu_rows(monkeypatch)
    torch._dynamo.reset()  # blocks compiled by earlier tests hold no guard on the patched dispatch rule
    traced = []
    real_rows_linear = matvec.rows_linear
    monkeypatch.setattr(matvec, "rows_linear",
                        lambda *args: traced.append(torch.compiler.is_compiling()) or real_rows_linear(*args))
    engine = golden_engine(tmp_path / "inductor")
    name, mode = "dialogue_two_batches", "sampled"
    for options in ({}, dict(static=True)):
        got = segments(engine, name, mode, **options)
        assert all(torch.equal(g, GOLDEN[f"{name}/{mode}/batch{b}.yielded_codes"]) for b, g in enumerate(got))
    torch._dynamo.reset()  # nor would the code compiled here on the real rule, for later tests
    assert seen["swiglu"] > 0 and not any(traced)


INTERPRETED = textwrap.dedent("""
    import json, sys, torch
    from fishs2 import matvec, matvec_kernel
    from tests.test_fused_decode import golden_engine
    from tests.test_perf_paths import GOLDEN, segments

    calls = []
    def kernel(x, weight, scales, **options):
        calls.append(sorted(k for k, v in options.items() if v is not None and v is not False and k != "eps"))
        return matvec_kernel.launch(x, weight, scales, 64, 64, **options)  # few programs: the interpreter runs each

    matvec_kernel.WEIGHT_DTYPES = (*matvec_kernel.WEIGHT_DTYPES, torch.float32)  # the golden model is fp32
    matvec.kernel_takes = lambda x, weight: x.shape[0] <= matvec.MAX_ONE_PASS_ROWS
    matvec.cuda_kernel = lambda: kernel
    engine = golden_engine()
    equal = {}
    for name in ("plain", "dialogue"):
        got = segments(engine, name, "greedy", static=True)
        equal[name] = all(torch.equal(g, GOLDEN[f"{name}/greedy/batch{b}.yielded_codes"]) for b, g in enumerate(got))
    print(json.dumps({"equal": equal, "calls": len(calls), "kinds": sorted({" ".join(c) for c in calls}),
                      "failure": matvec._failure}))
""")


def test_fused_kernel_in_the_model_gives_the_official_codes():
    """The kernel itself (Triton's interpreter, fp32) serving every decode row of the golden model, fused: the
    official greedy codes."""
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", INTERPRETED], capture_output=True, text=True, env=env, timeout=900,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["failure"] == [] and result["calls"] > 0
    assert set(result["kinds"]) == {"norm_weight", "norm_weight swiglu", "residual"}
    assert result["equal"] == {"plain": True, "dialogue": True}
