"""The CUDA decode-attention kernels (`fishs2.attention_kernel`) and their dispatch (`fishs2.decode_attention`): the
arithmetic on the CPU through Triton's interpreter against `layers.grouped_attention` (the slow AR's) and
`layers.manual_attention` (the fast AR's), the golden model's greedy codes with the kernels serving every decode-step
attention, the input checks, the chunking and the dispatch rule. The same kernels on a GPU are in
tests/test_cuda.py."""

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

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]


def interpreted(code: str) -> dict:
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# Group sizes 1, 2 and 4, lengths shorter than one step and spanning many chunks, a cache longer than the length,
# batches with a shared causal mask and with per-sequence (left-padding) masks.
ARITHMETIC = textwrap.dedent("""
    import json, torch
    from fishs2.attention_kernel import decode_attention
    from fishs2.model.layers import grouped_attention
    gen = torch.Generator().manual_seed(0)
    worst = {"fp32": 0.0, "bf16 excess": 0.0}
    for B, Hkv, G, L, capacity, mask_kind in ((1, 2, 4, 70, 80, None), (2, 2, 4, 150, 200, "padded"),
                                              (1, 1, 2, 5, 10, None), (3, 2, 1, 300, 300, "padded"),
                                              (1, 2, 4, 600, 640, "causal")):
        D = 32
        mask = None
        if mask_kind == "causal":  # a static step's: the first L − 40 slots visible
            mask = (torch.arange(L) < L - 40)[None, None, None]
        elif mask_kind == "padded":
            mask = torch.rand(B, 1, 1, L, generator=gen) < 0.7
            mask[..., -1] = True
        for dtype in (torch.float32, torch.bfloat16):
            q = (torch.randn(B, Hkv * G, 1, D, generator=gen) * 2).to(dtype)
            k, v = (torch.randn(B, Hkv, capacity, D, generator=gen).to(dtype) for _ in range(2))
            exact = grouped_attention(q.double(), k[:, :, :L].double(), v[:, :, :L].double(), mask)
            out = decode_attention(q, k, v, L, mask)
            assert out.dtype == dtype and out.shape == (B, Hkv * G, 1, D)
            scale = exact.abs().max()
            err = ((out.double() - exact).abs().max() / scale).item()
            if dtype == torch.float32:
                worst["fp32"] = max(worst["fp32"], err)
            else:  # beyond twice the error of the PyTorch ops in the same dtype
                ops = ((grouped_attention(q, k[:, :, :L], v[:, :, :L], mask).double() - exact).abs().max() / scale)
                worst["bf16 excess"] = max(worst["bf16 excess"], err - 2 * ops.item())
    print(json.dumps(worst))
""")


def test_kernels_match_grouped_attention_through_the_interpreter():
    """fp32: the same attention up to summation order. bf16: within twice the PyTorch ops' own error of the exact
    (float64) result, plus two bf16 steps of the largest output: the interpreter truncates at each of the kernels'
    four roundings where a GPU rounds to nearest (tests/test_cuda.py holds the GPU to the ops' error). A wrong mask,
    chunk or combination is off by tens of percent."""
    worst = interpreted(ARITHMETIC)
    assert worst["fp32"] < 1e-5, worst
    assert worst["bf16 excess"] < 2**-6, worst


SHORT = textwrap.dedent("""
    import json, torch
    from fishs2.attention_kernel import short_attention
    from fishs2.model.layers import manual_attention
    gen = torch.Generator().manual_seed(1)
    worst = {"fp32": 0.0, "bf16 excess": 0.0}
    for B, Hkv, G, L, capacity in ((1, 2, 4, 1, 10), (1, 2, 4, 7, 10), (2, 8, 4, 10, 10), (1, 1, 2, 33, 40),
                                   (1, 2, 1, 64, 64)):
        D = 64
        for dtype in (torch.float32, torch.bfloat16):
            q = (torch.randn(B, Hkv * G, 1, D, generator=gen) * 2).to(dtype)
            k, v = (torch.randn(B, Hkv, capacity, D, generator=gen).to(dtype) for _ in range(2))
            exact = manual_attention(q.double(), k[:, :, :L].double(), v[:, :, :L].double(), None)
            out = short_attention(q, k, v, L)
            assert out.dtype == dtype and out.shape == q.shape
            scale = exact.abs().max()
            err = ((out.double() - exact).abs().max() / scale).item()
            if dtype == torch.float32:
                worst["fp32"] = max(worst["fp32"], err)
            else:
                ops = ((manual_attention(q, k[:, :, :L], v[:, :, :L], None).double() - exact).abs().max() / scale)
                worst["bf16 excess"] = max(worst["bf16 excess"], err - 2 * ops.item())
    print(json.dumps(worst))
""")


def test_short_kernel_matches_manual_attention_through_the_interpreter():
    """The fast AR's kernel against `manual_attention` (the official hand-written attention): fp32 up to summation
    order; bf16 within twice the ops' own error plus two bf16 steps (the interpreter truncates at each of its four
    roundings; tests/test_cuda.py holds the GPU to ≥ 95% bit-identical outputs)."""
    worst = interpreted(SHORT)
    assert worst["fp32"] < 1e-5, worst
    assert worst["bf16 excess"] < 2**-6, worst


MODEL = textwrap.dedent("""
    import json, torch
    from fishs2 import decode_attention
    from tests.test_fused_decode import golden_engine
    from tests.test_perf_paths import GOLDEN, segments

    calls, short_calls = [], []
    decode, short = decode_attention._kernels()
    def counted(q, k, v, length, mask, pdl):
        assert pdl is False  # the CPU: no programmatic dependent launch
        calls.append((length, mask is None))
        return decode(q, k, v, length, mask, pdl)
    def counted_short(q, k, v, length, pdl):
        assert pdl is False
        short_calls.append(length)
        return short(q, k, v, length, pdl)

    # the golden model is fp32 on the CPU: let the kernels (interpreted) take its decode queries
    decode_attention.kernel_takes = lambda q, cache_k, length, mask, manual: q.shape[2] == 1
    decode_attention._kernels = lambda: (counted, counted_short)
    engine = golden_engine()
    equal = {}
    for name in ("plain", "dialogue"):
        for static in (False, True):
            got = segments(engine, name, "greedy", static=static)
            equal[f"{name} static={static}"] = all(
                torch.equal(g, GOLDEN[f"{name}/greedy/batch{b}.yielded_codes"]) for b, g in enumerate(got))
    print(json.dumps({"equal": equal, "calls": len(calls), "masked": sum(not none for _, none in calls),
                      "short": sorted(set(short_calls)), "failure": decode_attention._failure}))
""")


def test_kernels_in_the_model_give_the_official_codes():
    """The kernels (Triton's interpreter, fp32) serving every decode-step attention of the golden model — the slow
    AR's dynamic (no mask, the filled slots) and static (the whole cache under a mask), the fast AR's over its 1 … 10
    positions: the official greedy codes."""
    result = interpreted(MODEL)
    assert result["failure"] == [] and result["calls"] > 0 and 0 < result["masked"] < result["calls"]
    assert result["short"] == list(range(1, 11))
    assert all(result["equal"].values()), result["equal"]


def test_inputs_are_checked():
    from fishs2.attention_kernel import decode_attention

    q, k = torch.zeros(1, 8, 1, 32, dtype=torch.bfloat16), torch.zeros(1, 2, 64, 32, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="q \\[B, H, 1, D\\]"):
        decode_attention(torch.zeros(1, 8, 2, 32, dtype=torch.bfloat16), k, k, 10)
    with pytest.raises(ValueError, match="q \\[B, H, 1, D\\]"):
        decode_attention(q, k, k, 65)  # longer than the cache
    with pytest.raises(ValueError, match="q \\[B, H, 1, D\\]"):
        decode_attention(torch.zeros(1, 7, 1, 32, dtype=torch.bfloat16), k, k, 10)  # 7 heads over 2 KV heads
    with pytest.raises(ValueError, match="power of two"):
        decode_attention(torch.zeros(1, 8, 1, 24, dtype=torch.bfloat16), torch.zeros(1, 2, 64, 24,
                                                                                    dtype=torch.bfloat16),
                         torch.zeros(1, 2, 64, 24, dtype=torch.bfloat16), 10)
    with pytest.raises(ValueError, match="bf16 or fp16 on the GPU"):
        decode_attention(q.float(), k.float(), k.float(), 10)
    with pytest.raises(ValueError, match="share a dtype"):
        decode_attention(q, k, k.half(), 10)
    with pytest.raises(ValueError, match="mask must be bool"):
        decode_attention(q, k, k, 10, torch.ones(1, 1, 1, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask must be bool"):
        decode_attention(q, k, k, 10, torch.ones(1, 1, 1, 10))
    from fishs2.attention_kernel import SHORT_KEYS, short_attention

    long = torch.zeros(1, 2, 2 * SHORT_KEYS, 32, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=f"at most {SHORT_KEYS} keys"):
        short_attention(q, long, long, SHORT_KEYS + 1)
    with pytest.raises(ValueError, match="share a dtype"):
        short_attention(q, k, k.half(), 10)


def test_chunks_cover_the_keys_in_few_compiled_lengths():
    """Chunks are BLOCK_L × a power of two (one compiled kernel per chunk length), cover every key, give the GPU
    about TARGET_PROGRAMS programs, and number at most 2 × MAX_WANTED_CHUNKS (what the combine loads at once): a
    cache growing one key at a time compiles a handful of kernels."""
    from fishs2.attention_kernel import BLOCK_L, MAX_WANTED_CHUNKS, TARGET_PROGRAMS, split_chunks

    for heads in (1, 8, 24):  # the tiny model's KV heads, S2 Pro's, three takes of S2 Pro
        chunks = set()
        for length in range(1, 33000, 7):
            chunk, splits = split_chunks(length, heads)
            assert chunk % BLOCK_L == 0 and (chunk // BLOCK_L) & (chunk // BLOCK_L - 1) == 0
            assert (splits - 1) * chunk < length <= splits * chunk
            assert splits <= 2 * MAX_WANTED_CHUNKS and heads * splits <= 2 * max(TARGET_PROGRAMS, heads)
            chunks.add(chunk)
        assert len(chunks) <= 8, (heads, sorted(chunks))
    assert split_chunks(228, 8) == (BLOCK_L, 8)  # a short decode: one step per chunk


def assert_waits_before_any_memory_access(ptx: str, what) -> None:
    """A kernel launched as a programmatic dependent (PDL) may start before the kernel that writes its inputs ends:
    it must wait (griddepcontrol.wait) before its first global load or store, then let the next kernel launch."""
    wait = ptx.index("griddepcontrol.wait")
    assert not re.search(r"\b(ld|st|atom)\.global", ptx[:wait]), what
    assert ptx.index("griddepcontrol.launch_dependents") > wait, what


def test_kernels_compile_for_gpus_without_spills(tmp_path: Path):
    """The kernels compiled ahead of time for Ampere and Hopper at the real architecture's shapes (8 KV heads of 4
    query heads, head_dim 128), bf16 and fp16: the products on tensor cores (mma), no register spills (ptxas); the
    fast AR's softmax with the IEEE division its PyTorch kernel uses. On Hopper also as programmatic dependents,
    which wait for the kernel before them ahead of any memory access; without that, no grid dependency control."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from fishs2.attention_kernel import (BLOCK_L, COMBINE_BLOCK_D, MAX_WANTED_CHUNKS, _combine_kernel,
                                         _partial_kernel, _short_kernel)
    from fishs2.dependent_launch import TRITON_LAUNCHES_DEPENDENTS

    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not ptxas.exists():
        pytest.skip("this Triton has no bundled ptxas")
    for arch in (80, 90):
        sm = f"sm_{arch}a" if arch == 90 else f"sm_{arch}"
        for dtype in ("bf16", "fp16"):
            partial = {"q_ptr": f"*{dtype}", "k_ptr": f"*{dtype}", "v_ptr": f"*{dtype}", "mask_ptr": "*i8",
                       "m_ptr": "*fp32", "l_ptr": "*fp32", "o_ptr": "*fp32", "scale": "fp32",
                       **{name: "i32" for name in ("L", "SPLITS", "q_stride_b", "q_stride_h", "k_stride_b",
                                                   "k_stride_h", "k_stride_l", "mask_stride_b")},
                       **{name: "constexpr" for name in ("HKV", "G", "D", "HAS_MASK", "BLOCK_G", "BLOCK_L", "CHUNK",
                                                         "ON_GPU", "PDL")}}
            combine = {"m_ptr": "*fp32", "l_ptr": "*fp32", "o_ptr": "*fp32", "out_ptr": f"*{dtype}", "SPLITS": "i32",
                       "out_stride_b": "i32", "out_stride_h": "i32",
                       **{name: "constexpr" for name in ("HKV", "G", "D", "BLOCK_D", "BLOCK_S", "PDL")}}
            builds = [(_partial_kernel, partial, {"HKV": 8, "G": 4, "D": 128, "HAS_MASK": mask, "BLOCK_G": 16,
                                                  "BLOCK_L": BLOCK_L, "CHUNK": chunk, "ON_GPU": True})
                      for mask in (False, True) for chunk in (BLOCK_L, 8 * BLOCK_L)]
            builds.append((_combine_kernel, combine, {"HKV": 8, "G": 4, "D": 128, "BLOCK_D": COMBINE_BLOCK_D,
                                                      "BLOCK_S": 2 * MAX_WANTED_CHUNKS}))
            short = {"q_ptr": f"*{dtype}", "k_ptr": f"*{dtype}", "v_ptr": f"*{dtype}", "out_ptr": f"*{dtype}",
                     "scale": "fp32", **{name: "i32" for name in ("L", "q_stride_b", "q_stride_h", "k_stride_b",
                                                                 "k_stride_h", "k_stride_l", "out_stride_b",
                                                                 "out_stride_h")},
                     **{name: "constexpr" for name in ("HKV", "G", "D", "BLOCK_G", "BLOCK_L", "ON_GPU", "PDL")}}
            builds.append((_short_kernel, short, {"HKV": 8, "G": 4, "D": 128, "BLOCK_G": 16, "BLOCK_L": 16,
                                                  "ON_GPU": True}))
            builds = [(kernel, signature, {**constants, "PDL": pdl}) for kernel, signature, constants in builds
                      for pdl in ((False, True) if arch >= 90 and TRITON_LAUNCHES_DEPENDENTS else (False,))]
            for kernel, signature, constants in builds:
                aligned = {(i,): [["tt.divisibility", 16]] for i in range(7 if kernel is _partial_kernel else 4)}
                compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constants,
                                                    attrs=aligned), target=GPUTarget("cuda", arch, 32),
                                          options={"launch_pdl": True} if constants["PDL"] else {})
                ptx = compiled.asm["ptx"]
                if constants["PDL"]:
                    assert_waits_before_any_memory_access(ptx, (kernel.__name__, dtype))
                else:
                    assert "griddepcontrol" not in ptx
                if kernel is not _combine_kernel:
                    assert re.search(r"\bw?mma", ptx), (arch, dtype, constants)
                if kernel is _short_kernel:  # IEEE division as PyTorch's softmax, not div.full's approximation
                    assert re.search(r"div\.rn(\.ftz)?\.f32", ptx) and "div.full.f32" not in ptx, (arch, dtype)
                (tmp_path / "kernel.ptx").write_text(ptx)
                report = subprocess.run([str(ptxas), "-v", f"-arch={sm}", str(tmp_path / "kernel.ptx"), "-o",
                                         str(tmp_path / "kernel.cubin")], capture_output=True, text=True)
                assert report.returncode == 0, report.stderr
                assert "0 bytes spill stores" in report.stderr, (arch, dtype, constants, report.stderr)


def test_kernels_launch_as_dependents_under_the_matvec_setting(monkeypatch):
    """The heads and attention kernels are told to launch as programmatic dependents exactly when the matvec kernels
    are (`matvec.launches_dependents`: one setting for a decode step's kernels)."""
    from fishs2 import decode_attention, matvec

    seen = []
    monkeypatch.setattr(decode_attention, "kernel_takes", lambda *args: True)
    monkeypatch.setattr(decode_attention, "_kernels", lambda: (lambda *args: seen.append(("decode", args[-1])) or q,
                                                               lambda *args: seen.append(("short", args[-1])) or q))
    monkeypatch.setattr(decode_attention, "_heads_kernel", lambda: lambda *args: seen.append(("heads", args[-1])) or q)
    q = torch.zeros(1, 4, 1, 16)
    cache = torch.zeros(1, 2, 8, 16)
    for setting in (True, False):
        monkeypatch.setattr(matvec, "launches_dependents", lambda device, s=setting: s)
        seen.clear()
        decode_attention.attend(q, cache, cache, 3, None)
        decode_attention.attend(q, cache, cache, 3, None, manual=True)
        decode_attention.prepare_heads(torch.zeros(1, 1, 128), torch.zeros(1, 1, 1, 8, 2), cache, cache, 0, 4, None,
                                       None, 1e-6)
        assert seen == [("decode", setting), ("short", setting), ("heads", setting)]


class _CudaQuery:
    """Stands in for a query on CUDA (a CPU tensor can not claim to be on CUDA) in the dispatch rule."""

    def __init__(self, T: int, D: int, dtype: torch.dtype):
        self.shape, self.dtype, self.is_cuda = (1, 32, T, D), dtype, True


def test_kernel_takes_decode_queries_in_bf16_and_fp16_on_cuda():
    from fishs2 import decode_attention

    cache, mask = torch.zeros(1, 8, 4, 128, dtype=torch.bfloat16), torch.ones(1, 1, 1, 100, dtype=torch.bool)

    def takes(query, cache=cache, length=100, mask=None, manual=False):
        return decode_attention.kernel_takes(query, cache, length, mask, manual)

    assert takes(_CudaQuery(1, 128, torch.bfloat16)) and takes(_CudaQuery(1, 128, torch.bfloat16), mask=mask)
    assert takes(_CudaQuery(1, 128, torch.float16), cache.half())
    assert not takes(_CudaQuery(4, 128, torch.bfloat16))  # prefill: SDPA
    assert not takes(_CudaQuery(1, 128, torch.float32), cache.float())  # golden numerics
    assert not takes(_CudaQuery(1, 96, torch.bfloat16))
    assert not takes(torch.zeros(1, 32, 1, 128, dtype=torch.bfloat16))  # on the CPU
    # the fast AR's attention: unmasked, at most SHORT_KEYS keys
    assert takes(_CudaQuery(1, 128, torch.bfloat16), length=10, manual=True)
    assert not takes(_CudaQuery(1, 128, torch.bfloat16), length=decode_attention.SHORT_KEYS + 1, manual=True)
    assert not takes(_CudaQuery(1, 128, torch.bfloat16), length=10, mask=mask[..., :10], manual=True)
    with decode_attention.kernel_enabled(False):
        assert not takes(_CudaQuery(1, 128, torch.bfloat16))
    assert takes(_CudaQuery(1, 128, torch.bfloat16))


def test_short_keys_constant_matches_the_kernel():
    from fishs2 import attention_kernel, decode_attention

    assert decode_attention.SHORT_KEYS == attention_kernel.SHORT_KEYS


def test_cpu_decode_never_imports_triton():
    """The kernels' module imports Triton; a CPU model's decode (and ComfyUI's start-up) must not."""
    code = textwrap.dedent("""
        import sys, torch
        from fishs2.model.layers import Attention, AttentionMode, KVCache
        from fishs2.config import TransformerConfig
        c = TransformerConfig(dim=64, n_layer=1, n_head=4, n_local_heads=2, head_dim=16, intermediate_size=32,
                              qk_norm=False)
        rotation = torch.stack([torch.ones(1, 8), torch.zeros(1, 8)], dim=-1)[None, :, None]  # no rotation
        for dtype in (torch.float32, torch.bfloat16):
            attention = Attention(c, 1e-6).to(dtype)
            cache = KVCache(1, 2, 8, 16, dtype, "cpu")
            attention(torch.randn(1, 1, 64, dtype=dtype), rotation, cache, 0, AttentionMode(), None)
        print("triton" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"


def test_compiled_blocks_attend_through_the_op(monkeypatch, tmp_path):
    """Compiled blocks reach the decode attention through the custom op `fishs2::decode_attention`, which runs its
    Python at run time (never inside a trace): the official codes, dynamic and static, with the CPU standing in for
    CUDA (the dispatch accepts its queries and the "kernel" is the PyTorch reference)."""
    from fishs2 import decode_attention

    from .test_fused_decode import golden_engine
    from .test_perf_paths import GOLDEN, segments

    if decode_attention.attention_op is None:
        pytest.skip("torch.library.custom_op needs PyTorch 2.4")
    calls = []
    copies = [m for name, m in sys.modules.items()
              if name == "fishs2.decode_attention" or name.endswith(".fishs2.decode_attention")]
    for copy in copies:  # the node-pack tests import the engine a second time under the pack's name
        def kernel(q, k, v, length, mask=None, reference=copy.reference):
            calls.append(torch.compiler.is_compiling())
            return reference(q, k, v, length, mask)

        def short(q, k, v, length, reference=copy.reference):
            calls.append(torch.compiler.is_compiling())
            return reference(q, k, v, length, None, manual=True)

        monkeypatch.setattr(copy, "kernel_takes", lambda q, cache_k, length, mask, manual: q.shape[2] == 1)
        monkeypatch.setattr(copy, "_kernels", lambda kernel=kernel, short=short: (kernel, short))
    torch._dynamo.reset()  # blocks compiled by earlier tests hold no guard on the patched dispatch rule
    engine = golden_engine(tmp_path / "inductor")
    name, mode = "dialogue_two_batches", "sampled"
    for options in ({}, dict(static=True)):
        got = segments(engine, name, mode, **options)
        assert all(torch.equal(g, GOLDEN[f"{name}/{mode}/batch{b}.yielded_codes"]) for b, g in enumerate(got))
    torch._dynamo.reset()  # nor would the code compiled here on the real rule, for later tests
    assert calls and not any(calls)


def test_op_schema_and_fake_agree_with_the_real_op():
    """`fishs2::decode_attention` under `torch.library.opcheck` (schema, fake tensor, AOT dispatch), both modes, with
    the strided query `split_heads` produces."""
    from fishs2 import decode_attention

    if decode_attention.attention_op is None:
        pytest.skip("torch.library.custom_op needs PyTorch 2.4")
    q = torch.randn(2, 1, 8, 32)[:, :, :4].transpose(1, 2)  # [2, 4, 1, 32], a view of the wqkv output
    k, v = torch.randn(2, 2, 16, 32), torch.randn(2, 2, 16, 32)
    mask = torch.rand(2, 1, 1, 10) < 0.8
    mask[..., -1] = True
    for args in ((q, k, v, 10, mask, False), (q, k, v, 10, None, True)):
        result = torch.library.opcheck(decode_attention.attention_op, args)
        assert all(outcome == "SUCCESS" for outcome in result.values()), result
