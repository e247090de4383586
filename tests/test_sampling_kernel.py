"""The CUDA sampling kernel (`fishs2.sampling_kernel`) and its dispatch (`fishs2.sampling`): the arithmetic on the CPU
through Triton's interpreter against `sampling.sample`, ahead-of-time compiles for Ampere and Hopper, the dispatch
rule, the fallback, and the decode step's wiring (which draws go to the kernel, with which arguments). The kernel
on a GPU is in tests/test_cuda.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from fishs2 import sampling
from fishs2.sampling import SamplingParams, make_generators

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]

# Rows of 256 and 300 entries (a power of two and padding), bf16 and fp16, settings from greedy (top_k 1) to no
# cut at all, rows with many exact ties, and draws over a subset of columns. The reference is `sample` on a stable
# ranking: the order the kernel's keys give ties, and CUDA's radix sort.
ARITHMETIC = textwrap.dedent("""
    import json, torch
    from fishs2.sampling import clamp_temperature, cut_thresholds, sample
    from fishs2.sampling_kernel import draw

    def stable_rank(logits):
        values, ids = torch.sort(logits, dim=-1, descending=True, stable=True)
        return torch.cumsum(torch.softmax(values, dim=-1), dim=-1), ids

    same = total = 0
    greedy_ok = True
    for dtype in (torch.bfloat16, torch.float16):
        for seed in range(24):
            gen = torch.Generator().manual_seed(seed)
            width = (256, 300)[seed % 2]
            logits = (torch.randn(2, width, generator=gen) * (1, 3, 8)[seed % 3]).to(dtype)
            if seed % 4 == 1:
                logits = logits.round()  # many exact ties, at the cut too
            uniforms = torch.rand(2, width, generator=gen, dtype=dtype)
            temperature = clamp_temperature(0.3 + seed / 14, dtype, "cpu")
            top_p, top_k = ((0.5, 30), (0.8, 1), (0.95, 200), (1.0, 5000))[seed % 4]
            cut = cut_thresholds(width, top_p, top_k, dtype, "cpu")
            columns = torch.sort(torch.randperm(width, generator=gen)[: width // 2]).values
            for subset in (None, columns):
                rows = logits if subset is None else logits[:, subset]
                u = uniforms if subset is None else uniforms[:, subset]
                expected = sample(rows, temperature, cut[: rows.shape[-1]], None, u, stable_rank(rows))
                if subset is not None:
                    expected = subset[expected]
                got = draw(logits, temperature, cut, uniforms, subset)
                assert got.dtype == torch.long and got.shape == (2,)
                same += int((got == expected).sum())
                total += 2
                if top_k == 1:  # no randomness left: the first of the largest logits, exactly
                    greedy_ok &= bool(torch.equal(got, expected))
    print(json.dumps({"same": same, "total": total, "greedy": greedy_ok}))
""")


def interpreted(code: str) -> dict:
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_kernel_draws_the_ops_tokens_through_the_interpreter():
    """The interpreter's exp and log are numpy's, not PyTorch's, and the softmaxes sum in another order: a quotient
    at a rounding boundary may flip a token now and then, nothing more. A kernel that cut at the wrong rank, read
    a wrong uniform or a wrong column, or broke ties out of index order would disagree on most draws."""
    result = interpreted(ARITHMETIC)
    assert result["greedy"]
    assert result["same"] >= 0.95 * result["total"], result


def test_kernel_compiles_for_gpus_without_spills(tmp_path: Path):
    """Ahead of time for Ampere and Hopper at the decode step's widths — 4096 codes, and the 4097 allowed ids of a
    wider row (8192 entries, columns) — bf16 and fp16, with the launch's warps: no register spills (ptxas), IEEE
    division as PyTorch's kernels use, not `div.full`'s approximation."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from fishs2.sampling_kernel import _draw_kernel, _warps

    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not ptxas.exists():
        pytest.skip("this Triton has no bundled ptxas")
    for arch in (80, 90):
        sm = f"sm_{arch}a" if arch == 90 else f"sm_{arch}"
        for dtype in ("bf16", "fp16"):
            for block, columns in ((4096, False), (8192, True)):
                signature = {"logits_ptr": f"*{dtype}", "uniforms_ptr": f"*{dtype}",
                             "columns_ptr": "*i64" if columns else f"*{dtype}", "cut_ptr": f"*{dtype}",
                             "temperature_ptr": f"*{dtype}", "out_ptr": "*i64", "V": "i32", "logits_stride": "i32",
                             "uniforms_stride": "i32",
                             **{name: "constexpr" for name in ("BLOCK", "INDEX_BITS", "HAS_COLUMNS", "ON_GPU")}}
                constants = {"BLOCK": block, "INDEX_BITS": block.bit_length() - 1, "HAS_COLUMNS": columns,
                             "ON_GPU": True}
                compiled = triton.compile(ASTSource(fn=_draw_kernel, signature=signature, constexprs=constants),
                                          target=GPUTarget("cuda", arch, 32), options={"num_warps": _warps(block)})
                ptx = compiled.asm["ptx"]
                assert re.search(r"div\.rn(\.ftz)?\.f32", ptx) and "div.full.f32" not in ptx, (arch, dtype, block)
                (tmp_path / "kernel.ptx").write_text(ptx)
                report = subprocess.run([str(ptxas), "-v", f"-arch={sm}", str(tmp_path / "kernel.ptx"), "-o",
                                         str(tmp_path / "kernel.cubin")], capture_output=True, text=True)
                assert report.returncode == 0, report.stderr
                assert "0 bytes spill stores" in report.stderr, (arch, dtype, block, report.stderr)


class _CudaRow:
    """Stands in for a row of logits on CUDA (a CPU tensor can not claim to be on CUDA) in the dispatch rule."""

    def __init__(self, dtype: torch.dtype, stride: int = 1):
        self.dtype, self.is_cuda, self._stride = dtype, True, stride

    def stride(self, dim: int) -> int:
        return self._stride


def test_dispatch_rule():
    bf16, fp16 = _CudaRow(torch.bfloat16), _CudaRow(torch.float16)
    assert sampling.kernel_takes(bf16, bf16, 4097) and sampling.kernel_takes(fp16, fp16, 4096)
    assert not sampling.kernel_takes(bf16, bf16, sampling.KERNEL_ENTRIES + 1)  # the whole vocabulary: the ops
    assert not sampling.kernel_takes(_CudaRow(torch.float32), _CudaRow(torch.float32), 4096)
    assert not sampling.kernel_takes(bf16, fp16, 4096)
    assert not sampling.kernel_takes(_CudaRow(torch.bfloat16, stride=2), bf16, 4096)
    cpu = torch.zeros(1, 8, dtype=torch.bfloat16)
    assert not sampling.kernel_takes(cpu, cpu, 8)
    with sampling.kernel_enabled(False):
        assert not sampling.kernel_takes(bf16, bf16, 4096)
    assert sampling.kernel_takes(bf16, bf16, 4096)


def test_environment_switches_the_kernel_off():
    code = "import fishs2.sampling as s, json; print(json.dumps(s._enabled[0]))"
    env = dict(os.environ, PYTHONPATH=str(ROOT), FISHS2_SAMPLING_KERNEL="0")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert json.loads(done.stdout) is False


def test_a_failing_kernel_falls_back_to_the_ops(monkeypatch):
    """A Triton that cannot build the kernel for a GPU must cost speed, not the request: the draw goes through the
    ops, the same tokens, and the kernel stays off for the rest of the process."""
    monkeypatch.setattr(sampling, "kernel_takes", lambda *args: True)
    monkeypatch.setattr(sampling, "_failure", [])

    def broken(*args):
        raise RuntimeError("no kernel image for this GPU")

    monkeypatch.setattr(sampling, "_kernel", lambda: broken)
    logits = torch.randn(2, 50)
    uniforms = torch.rand(2, 50)
    cut = sampling.cut_thresholds(50, 0.8, 30, torch.float32, "cpu")
    temperature = sampling.clamp_temperature(0.8, torch.float32, "cpu")
    drawn = sampling.sample(logits, temperature, cut, None, uniforms)
    assert torch.equal(drawn, sampling.sample(logits, temperature, cut, None, uniforms, sampling.rank(logits)))
    assert sampling._failure and "no kernel image" in sampling._failure[0]


def test_decode_step_sends_its_eleven_draws_to_the_kernel(monkeypatch):
    """The wiring of `sample_frame` on the kernel's path, with the ops standing in for the kernel's arithmetic: per
    frame the main token and the RAS alternative over the allowed ids (`columns`, the full-width uniforms and cuts),
    then one draw per fast codebook; the same codes as the ops' path, so no argument is crossed."""
    from fishs2.checkpoint import load_model
    from fishs2.config import ModelConfig
    from fishs2.generate import generate_frames
    from fishs2.prompt import PromptBuilder
    from fishs2.tokenizer import Tokenizer

    from .golden import golden_dir

    directory = golden_dir() / "tiny_s2"
    tokenizer = Tokenizer(directory / "tokenizer.json")
    config = ModelConfig.from_file(directory / "config.json").with_semantic_range(tokenizer.semantic_begin_id,
                                                                                 tokenizer.semantic_end_id)
    model = load_model(directory, config, torch.float32, "cpu")
    prompt = PromptBuilder(tokenizer, config.num_codebooks).build("Hello there, one two three.", [])

    def codes(**options):
        return torch.stack(list(generate_frames(model, prompt, SamplingParams(0.9, 0.8, 20), 6,
                                                make_generators([7], "cpu"), tokenizer.im_end_id, **options)))

    expected = {name: codes(static=name == "static") for name in ("dynamic", "static")}
    calls = []

    def stand_in(logits, temperature, cut, uniforms, columns=None):
        calls.append(logits.shape[-1] if columns is None else ("columns", columns.shape[0], cut.shape[0]))
        rows, u = (logits, uniforms) if columns is None else (logits[:, columns], uniforms[:, columns])
        assert u.shape == rows.shape and cut.shape[0] >= rows.shape[-1]
        picked = sampling.sample(rows, temperature, cut[: rows.shape[-1]], None, u, sampling.rank(rows))
        return picked if columns is None else columns[picked]

    monkeypatch.setattr(sampling, "kernel_takes", lambda logits, uniforms, entries: entries <= sampling.KERNEL_ENTRIES)
    monkeypatch.setattr(sampling, "_kernel_draw", stand_in)
    for name, codes_expected in expected.items():
        calls.clear()
        assert torch.equal(codes(static=name == "static"), codes_expected), name
        frames = codes_expected.shape[0]  # [frames, B, K+1]
        allowed = config.codebook_size + 1
        main = ("columns", allowed, config.vocab_size)
        assert calls.count(main) == 2 * frames, name  # main + RAS per frame, the prefill's frame included
        assert calls.count(config.codebook_size) == (config.num_codebooks - 1) * frames, name
