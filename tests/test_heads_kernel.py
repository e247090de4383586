"""The CUDA decode-heads kernel (`fishs2.heads_kernel`: QK-norm, RoPE, the KV-cache write) and its dispatch
(`fishs2.decode_attention`): the arithmetic on the CPU through Triton's interpreter against
`layers.Attention.split_heads` + `KVCache.write`, ahead-of-time compiles, and the decode step's wiring. The kernel on a
GPU is in tests/test_cuda.py."""

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

from fishs2 import decode_attention

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]

# The slow AR's layout (QK-norm) and the fast AR's (none), rotations shared by the batch and per sequence (left
# padding), the slot as an int and as a device tensor (the static decoder's), bf16 and fp16.
ARITHMETIC = textwrap.dedent("""
    import json, torch
    from fishs2.config import TransformerConfig
    from fishs2.heads_kernel import prepare_heads
    from fishs2.model.layers import Attention, KVCache, rope_rotation, rope_table
    gen = torch.Generator().manual_seed(0)
    same = total = 0
    worst = bf16_error = 0.0
    v_exact = others_untouched = True
    for norm, per_sequence, on_device, dtype in ((True, False, False, torch.bfloat16), (True, True, True, torch.bfloat16),
                                                (False, False, True, torch.float16), (False, True, False, torch.bfloat16),
                                                (True, False, True, torch.float16)):
        B, H, Hkv, D, capacity, slot = 3, 4, 2, 32, 12, 7
        config = TransformerConfig(dim=64, n_layer=1, n_head=H, n_local_heads=Hkv, head_dim=D,
                                   intermediate_size=96, qk_norm=norm)
        attention = Attention(config, 1e-6)
        if norm:
            with torch.no_grad():
                attention.q_norm.weight.copy_(1 + 0.3 * torch.randn(D, generator=gen))
                attention.k_norm.weight.copy_(1 + 0.3 * torch.randn(D, generator=gen))
        attention = attention.to(dtype)
        qkv = (torch.randn(B, 1, (H + 2 * Hkv) * D, generator=gen) * 3).to(dtype)
        positions = torch.tensor([[slot], [slot - 2], [slot - 5]]) if per_sequence else torch.tensor([slot])
        rotation = rope_rotation(rope_table(positions.flatten(), D, 1e6).view(*positions.shape, D // 2, 2)
                                 if per_sequence else rope_table(positions, D, 1e6))
        ops_cache, cache = (KVCache(B, Hkv, capacity, D, dtype, "cpu") for _ in range(2))
        for c in (ops_cache, cache):
            c.k.copy_(torch.randn(c.k.shape, generator=torch.Generator().manual_seed(1)))
            c.v.copy_(torch.randn(c.v.shape, generator=torch.Generator().manual_seed(2)))
        before = cache.k.clone()
        q_ops, k_ops, v_ops = attention.split_heads(qkv, rotation)
        ops_cache.write(torch.tensor([slot]) if on_device else slot, k_ops, v_ops)
        q = prepare_heads(qkv, rotation, cache.k, cache.v, torch.tensor([slot]) if on_device else slot, H,
                          attention.q_norm.weight if norm else None, attention.k_norm.weight if norm else None,
                          attention.eps)
        assert q.shape == (B, H, 1, D) and q.dtype == dtype
        for got, want in ((q, q_ops), (cache.k[:, :, slot], ops_cache.k[:, :, slot])):
            got, want = got.detach().float(), want.detach().float()
            if dtype == torch.float16:  # the interpreter rounds to fp16 as the GPU does
                same += int((got == want).sum())
                total += got.numel()
                step = 2.0 ** (torch.floor(torch.log2(want.abs().clamp(min=1e-4))) - 10)
                worst = max(worst, float(((got - want).abs() / step).max()))
            else:  # it truncates to bf16: within two steps of the head's largest value
                bf16_error = max(bf16_error, float((got - want).abs().max() / want.abs().max()))
        v_exact &= bool(torch.equal(cache.v, ops_cache.v))
        mask = torch.ones(capacity, dtype=torch.bool)
        mask[slot] = False
        others_untouched &= bool(torch.equal(cache.k[:, :, mask], before[:, :, mask]))
    print(json.dumps({"same": same, "total": total, "worst_steps": worst, "bf16_error": bf16_error, "v_exact": v_exact,
                      "others_untouched": others_untouched}))
""")


def interpreted(code: str) -> dict:
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_kernel_matches_the_ops_through_the_interpreter():
    """q and the cached k rounded as the ops round them. In fp16 (which the interpreter rounds as a GPU does) at
    least 98% bit-identical and the rest one step away (a sum of squares in another order); in bf16 (which it
    truncates) within two steps of each head's largest value. v copied exactly; only the written slot changes."""
    result = interpreted(ARITHMETIC)
    assert result["v_exact"] and result["others_untouched"], result
    assert result["same"] >= 0.98 * result["total"] and result["worst_steps"] <= 1.0, result
    assert result["bf16_error"] <= 2 * 2**-7, result  # a step is 2^-7 of the leading power of two


def test_kernel_compiles_for_gpus_without_spills(tmp_path: Path):
    """Ahead of time for Ampere and Hopper at the real architecture's heads (32 q heads, 8 KV heads, head_dim 128),
    with and without QK-norm, the slot on the device and as an argument: no register spills. On Hopper also as a
    programmatic dependent, which waits for the kernel before it ahead of any memory access (the slot too)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from fishs2.dependent_launch import TRITON_LAUNCHES_DEPENDENTS
    from fishs2.heads_kernel import _heads_kernel

    from .test_attention_kernel import assert_waits_before_any_memory_access

    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not ptxas.exists():
        pytest.skip("this Triton has no bundled ptxas")
    for arch in (80, 90):
        sm = f"sm_{arch}a" if arch == 90 else f"sm_{arch}"
        for dtype in ("bf16", "fp16"):
            for norm, on_device in ((True, True), (False, False)):
                signature = {"qkv_ptr": f"*{dtype}", "q_norm_ptr": f"*{dtype}", "k_norm_ptr": f"*{dtype}",
                             "rotation_ptr": "*fp32", "cache_k_ptr": f"*{dtype}", "cache_v_ptr": f"*{dtype}",
                             "q_ptr": f"*{dtype}", "slot_ptr": "*i64", "slot": "i32", "eps": "fp32",
                             **{name: "i32" for name in ("qkv_stride_b", "rotation_stride_b", "cache_stride_b",
                                                         "cache_stride_h", "cache_stride_l")},
                             **{name: "constexpr" for name in ("H", "HKV", "D", "NORM", "SLOT_ON_DEVICE", "PDL")}}
                pdl = arch >= 90 and TRITON_LAUNCHES_DEPENDENTS and on_device
                constants = {"H": 32, "HKV": 8, "D": 128, "NORM": norm, "SLOT_ON_DEVICE": on_device, "PDL": pdl}
                compiled = triton.compile(ASTSource(fn=_heads_kernel, signature=signature, constexprs=constants),
                                          target=GPUTarget("cuda", arch, 32),
                                          options={"num_warps": 1, **({"launch_pdl": True} if pdl else {})})
                ptx = compiled.asm["ptx"]
                if pdl:
                    assert_waits_before_any_memory_access(ptx, (arch, dtype, norm))
                else:
                    assert "griddepcontrol" not in ptx
                if norm:
                    assert re.search(r"sqrt\.rn(\.ftz)?\.f32", ptx), (arch, dtype)  # as the matvec kernel's RMSNorm
                (tmp_path / "kernel.ptx").write_text(ptx)
                report = subprocess.run([str(ptxas), "-v", f"-arch={sm}", str(tmp_path / "kernel.ptx"), "-o",
                                         str(tmp_path / "kernel.cubin")], capture_output=True, text=True)
                assert report.returncode == 0, report.stderr
                assert "0 bytes spill stores" in report.stderr, (arch, dtype, report.stderr)


def test_cpu_never_takes_the_kernel_and_the_switches_work():
    qkv = torch.zeros(1, 1, 256, dtype=torch.bfloat16)
    cache = torch.zeros(1, 2, 8, 32, dtype=torch.bfloat16)
    assert not decode_attention.heads_kernel_takes(qkv, cache, cache)
    code = "import fishs2.decode_attention as d, json; print(json.dumps(d._heads_enabled[0]))"
    env = dict(os.environ, PYTHONPATH=str(ROOT), FISHS2_DECODE_HEADS="0")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert json.loads(done.stdout) is False
    with decode_attention.heads_kernel_enabled(False):
        assert not decode_attention._heads_enabled[0]
    assert decode_attention._heads_enabled[0]


def test_decode_steps_prepare_every_layer_through_the_dispatch(monkeypatch):
    """With the dispatch taking every decode position (the ops standing in for the kernel's arithmetic), each
    layer of each decode step hands over its projection, caches, slot and norms — the static step its slot as a
    device tensor — and the codes equal the ops' own: nothing crossed, nothing written twice. A stand-in that
    returns None (a failed kernel) leaves the step to the ops, with the same codes."""
    from fishs2.checkpoint import load_model
    from fishs2.config import ModelConfig
    from fishs2.generate import generate_frames
    from fishs2.model.layers import KVCache
    from fishs2.prompt import PromptBuilder
    from fishs2.sampling import SamplingParams, make_generators
    from fishs2.tokenizer import Tokenizer

    from .golden import golden_dir

    directory = golden_dir() / "tiny_s2"
    tokenizer = Tokenizer(directory / "tokenizer.json")
    config = ModelConfig.from_file(directory / "config.json").with_semantic_range(tokenizer.semantic_begin_id,
                                                                                 tokenizer.semantic_end_id)
    model = load_model(directory, config, torch.float32, "cpu")
    prompt = PromptBuilder(tokenizer, config.num_codebooks).build("Hello there, one two three.", [])
    modules = {id(m.attention): m.attention for m in (*model.slow.layers, *model.fast.layers)}

    def codes(static: bool):
        return torch.stack(list(generate_frames(model, prompt, SamplingParams(0.9, 0.8, 20), 5,
                                                make_generators([3], "cpu"), tokenizer.im_end_id, static=static)))

    calls = []

    def stand_in(qkv, rotation, cache_k, cache_v, slot, n_head, q_norm, k_norm, eps):
        owner = next(m for m in modules.values() if m.config.n_head == n_head
                     and (q_norm is None) == (not m.config.qk_norm)
                     and (q_norm is None or q_norm.data_ptr() == m.q_norm.weight.data_ptr()))
        calls.append((isinstance(slot, torch.Tensor), q_norm is not None))
        q, k, v = owner.split_heads(qkv, rotation)
        cache = KVCache.__new__(KVCache)
        torch.nn.Module.__init__(cache)
        cache.k, cache.v = cache_k, cache_v
        cache.write(slot, k, v)
        return q

    for static in (False, True):
        expected = codes(static)
        monkeypatch.setattr(decode_attention, "heads_kernel_takes", lambda qkv, k, v: qkv.shape[1] == 1)
        monkeypatch.setattr(decode_attention, "prepare_heads", stand_in)
        calls.clear()
        assert torch.equal(codes(static), expected), static
        frames = expected.shape[0]
        slow, fast = config.slow.n_layer, config.fast.n_layer
        decoded = frames - 1  # the first frame comes from the prefill, which is not one position
        assert calls.count((static, True)) == slow * decoded  # the slow layers (QK-norm)
        assert calls.count((False, False)) == fast * config.num_codebooks * frames  # the fast layers, ints
        monkeypatch.setattr(decode_attention, "prepare_heads", lambda *args: None)
        assert torch.equal(codes(static), expected), static
        monkeypatch.undo()


def test_compiled_static_blocks_prepare_heads_through_the_op(monkeypatch, tmp_path):
    """Compiled blocks reach the heads kernel through `fishs2::decode_heads` (which writes the caches in place) when
    the slot lives on the device — the static step — and keep the ops with an int slot: the official codes either
    way, with the CPU standing in for CUDA (the dispatch accepts its projections; the "kernel" is the ops)."""
    from .test_fused_decode import golden_engine
    from .test_perf_paths import GOLDEN, segments

    if decode_attention.heads_op is None:
        pytest.skip("torch.library.custom_op needs PyTorch 2.4")
    calls = []
    copies = [m for name, m in sys.modules.items()
              if name == "fishs2.decode_attention" or name.endswith(".fishs2.decode_attention")]
    for copy in copies:  # the node-pack tests import the engine a second time under the pack's name
        def kernel(qkv, rotation, cache_k, cache_v, slot, n_head, q_norm, k_norm, eps, copy=copy):
            calls.append((torch.compiler.is_compiling(), isinstance(slot, torch.Tensor)))
            slot = slot if isinstance(slot, torch.Tensor) else torch.tensor([slot])
            return copy.reference_heads(qkv, rotation, cache_k, cache_v, slot, n_head, q_norm, k_norm, eps)

        monkeypatch.setattr(copy, "heads_kernel_takes", lambda qkv, k, v: qkv.shape[1] == 1)
        monkeypatch.setattr(copy, "_heads_kernel", lambda kernel=kernel: kernel)
    torch._dynamo.reset()  # blocks compiled by earlier tests hold no guard on the patched dispatch rule
    engine = golden_engine(tmp_path / "inductor")
    name, mode = "dialogue_two_batches", "sampled"
    for options in ({}, dict(static=True)):
        calls.clear()
        got = segments(engine, name, mode, **options)
        assert all(torch.equal(g, GOLDEN[f"{name}/{mode}/batch{b}.yielded_codes"]) for b, g in enumerate(got))
        assert not any(compiling for compiling, _ in calls)  # run time, never inside a trace
        if options:
            assert (False, True) in calls  # the static slow steps, through the op
    torch._dynamo.reset()  # nor would the code compiled here on the real rule, for later tests


def test_op_schema_and_fake_agree_with_the_real_op():
    """`fishs2::decode_heads` under `torch.library.opcheck` (schema, fake tensor, AOT dispatch, the declared cache
    mutations), with and without QK-norm, on a strided projection row as the wqkv output can be."""
    from fishs2.model.layers import rope_rotation, rope_table

    if decode_attention.heads_op is None:
        pytest.skip("torch.library.custom_op needs PyTorch 2.4")
    gen = torch.Generator().manual_seed(4)
    rotation = rope_rotation(rope_table(torch.tensor([5]), 32, 1e6))
    for batch in (2, 1):  # with one sequence q comes out contiguous: it must still not share the input's storage
        qkv = torch.randn(batch, 1, 8 * 32, generator=gen)
        for norms in ((torch.rand(32, generator=gen) + 0.5, torch.rand(32, generator=gen) + 0.5), (None, None)):
            cache_k, cache_v = torch.randn(batch, 2, 16, 32), torch.randn(batch, 2, 16, 32)
            args = (qkv, rotation, cache_k, cache_v, torch.tensor([5]), 4, *norms, 1e-6)
            result = torch.library.opcheck(decode_attention.heads_op, args)
            assert all(outcome == "SUCCESS" for outcome in result.values()), result
            assert decode_attention.heads_op(*args).untyped_storage().data_ptr() != qkv.untyped_storage().data_ptr()
