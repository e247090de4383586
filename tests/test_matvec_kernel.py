"""The CUDA decode kernel (`fishs2.matvec_kernel`) and its dispatch (`fishs2.matvec`): the kernel's arithmetic on the
CPU through Triton's interpreter, its input checks, which rows go to it, and that the CPU path never imports it. The
same kernel on a GPU is in tests/test_cuda.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]

# Every (rows, N, K) is run with every autotuning config: N and K that are not multiples of the blocks, K shorter
# than one block, 1 … 4 rows (3 pads the row block to 4), and 7 and 16 rows (two and four row blocks).
INTERPRETED = textwrap.dedent("""
    import json, sys, torch
    from fishs2.matvec_kernel import CONFIGS, launch
    gen = torch.Generator().manual_seed(0)
    worst = {}
    for dtype in (torch.float32, torch.bfloat16):
        for m, n, k in ((1, 1, 5), (2, 37, 300), (3, 64, 512), (4, 130, 1000), (1, 19, 1030), (7, 40, 260),
                        (16, 33, 300)):
            x = torch.randn(m, k, generator=gen).to(dtype)
            w = torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int8)
            s = (torch.rand(n, generator=gen) / 127 + 1e-3).to(dtype)
            ref = (x.float() @ w.float().T) * s.float()
            if dtype == torch.bfloat16:  # bf16 weights without scales (bf16 models' decode rows)
                fw = torch.randn(n, k, generator=gen).to(dtype)
                ref16 = x.float() @ fw.float().T
                for config in CONFIGS[:: 4 if m < 4 else 1]:
                    out = launch(x, fw, None, config.kwargs["BLOCK_N"], config.kwargs["BLOCK_K"])
                    err = ((out.float() - ref16).abs() / ref16.abs().clamp(min=1e-3 * ref16.abs().max())).max().item()
                    worst["bf16 weights"] = max(worst.get("bf16 weights", 0.0), err)
            for config in CONFIGS:
                out = launch(x, w, s, config.kwargs["BLOCK_N"], config.kwargs["BLOCK_K"])
                assert out.dtype == dtype and out.shape == (m, n), (out.dtype, out.shape)
                err = ((out.float() - ref).abs() / ref.abs().clamp(min=1e-3 * ref.abs().max())).max().item()
                key = str(dtype)
                worst[key] = max(worst.get(key, 0.0), err)
    print(json.dumps(worst))
""")


def test_kernel_arithmetic_through_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", INTERPRETED], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    worst = json.loads(done.stdout.strip().splitlines()[-1])
    # fp32: summation order only (~1e-6). bf16: the fp32 sum rounded once to bf16, within one step (2^-7
    # relative): the interpreter's conversion truncates where the GPU rounds to nearest (half a step).
    assert worst["torch.float32"] < 1e-4
    assert worst["torch.bfloat16"] <= 2**-7
    assert worst["bf16 weights"] <= 2**-7


FUSED = textwrap.dedent("""
    import json, torch
    from fishs2 import dependent_launch
    from fishs2.matvec import gemm
    from fishs2.matvec_kernel import CONFIGS, launch
    from fishs2.quantize import quantize_rows
    # pdl=True's code path (the first K step taken before the loop) with no grid dependency to control here
    dependent_launch.gdc_wait = dependent_launch.gdc_launch_dependents = lambda: None
    dependent_launch.supported = lambda device: True
    gen = torch.Generator().manual_seed(1)
    worst = {"pdl outputs that differ": 0}
    for dtype in (torch.float32, torch.bfloat16):
        for m, n, k in ((1, 6, 40), (3, 37, 300), (4, 20, 260), (7, 10, 130), (16, 9, 64)):
            x = torch.randn(m, k, generator=gen).to(dtype) * 3
            dense = (torch.randn(2 * n, k, generator=gen) / k**0.5).to(dtype)
            norm = (torch.rand(k, generator=gen) + 0.5).to(dtype)
            options = {"norm": dict(norm_weight=norm, eps=1e-6), "norm swiglu": dict(norm_weight=norm, eps=1e-6, swiglu=True),
                       "residual": dict(residual=torch.randn(m, 2 * n, generator=gen).to(dtype))}
            weights = [quantize_rows(dense)] + ([(dense, None)] if dtype != torch.float32 else [])
            for (w, scales) in weights:
                for name, opts in options.items():
                    ref = gemm(x, w, scales, **opts).float()
                    for config in (CONFIGS[0], CONFIGS[2], CONFIGS[4]):
                        out = launch(x, w, scales, config.kwargs["BLOCK_N"], config.kwargs["BLOCK_K"], **opts)
                        assert out.shape == ref.shape and out.dtype == dtype, (name, out.shape)
                        err = ((out.float() - ref).abs().max() / ref.abs().max()).item()
                        key = f"{dtype} {name}"
                        worst[key] = max(worst.get(key, 0.0), err)
                        dependent = launch(x, w, scales, config.kwargs["BLOCK_N"], config.kwargs["BLOCK_K"], **opts,
                                           pdl=True)
                        worst["pdl outputs that differ"] += (dependent != out).sum().item()
    print(json.dumps(worst))
""")


def test_fused_options_through_the_interpreter():
    """The kernel with the block's work around the matmul (RMSNorm before, SwiGLU or a residual add after) against
    the same ops unfused (`matvec.gemm`), int8 and bf16 weights, 1 … 16 rows, three block shapes. fp32: summation
    order only. bf16: within a few steps of the largest output (the interpreter truncates each of the unfused code's
    roundings where the GPU rounds to nearest: tests/test_cuda.py checks the GPU's outputs bit for bit). Launched
    as a programmatic dependent (pdl=True: its first K step before the loop), bit-identical to the plain launch."""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", FUSED], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    worst = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(worst) == 7
    assert worst.pop("pdl outputs that differ") == 0  # launched as a dependent: the same arithmetic, bit for bit
    assert all(err < 1e-5 for key, err in worst.items() if key.startswith("torch.float32")), worst
    assert all(err < 0.06 for key, err in worst.items() if key.startswith("torch.bfloat16")), worst


def test_inputs_are_checked():
    from fishs2 import matvec as dispatch
    from fishs2.matvec_kernel import MAX_ROWS, ROWS_PER_PROGRAM, matvec

    assert (MAX_ROWS, ROWS_PER_PROGRAM) == (dispatch.MAX_INT8_ROWS, dispatch.MAX_ONE_PASS_ROWS)
    w = torch.zeros(8, 16, dtype=torch.int8)
    with pytest.raises(ValueError, match=r"x must be \[1…16, K\]"):
        matvec(torch.zeros(17, 16), w, torch.ones(8))
    with pytest.raises(ValueError, match="weight must be int8, bf16 or fp16"):
        matvec(torch.zeros(1, 16), w.float())  # fp32 weights: their models use cuBLAS
    with pytest.raises(ValueError, match="weight must be int8, bf16 or fp16"):
        matvec(torch.zeros(1, 15), w, torch.ones(8))
    with pytest.raises(ValueError, match=r"scales must be \[8\]"):
        matvec(torch.zeros(1, 16), w, torch.ones(7))
    with pytest.raises(ValueError, match="int8 weights need scales"):
        matvec(torch.zeros(1, 16), w)
    with pytest.raises(ValueError, match="bf16/fp16 weights take none"):
        matvec(torch.zeros(1, 16, dtype=torch.bfloat16), w.bfloat16(), torch.ones(8))


def test_cpu_int8_never_imports_triton():
    """The kernel module imports Triton; a CPU model (and ComfyUI's start-up) must not pay for it."""
    code = textwrap.dedent("""
        import sys, torch
        from fishs2.quantize import Int8Linear
        layer = Int8Linear.from_float(torch.nn.Linear(32, 8, bias=False))
        layer(torch.randn(1, 32))
        print("triton" in sys.modules, "fishs2.matvec_kernel" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["False", "False"]


def test_linear_op_for_compile(monkeypatch):
    """Under torch.compile, matmuls that may reach the kernel go through the custom op `fishs2::linear` (int8: decode
    and prefill rows alike; bf16: decode rows): its schema, fake (shape) implementation and eager result are checked
    here with the GEMM fallback standing in for the kernel."""
    from fishs2 import matvec
    from fishs2.quantize import quantize_rows

    if matvec.linear_op is None:
        pytest.skip("torch.library.custom_op needs PyTorch 2.4")
    monkeypatch.setattr(matvec, "cuda_kernel", lambda: None)
    weight, scales = quantize_rows(torch.randn(24, 40, generator=torch.Generator().manual_seed(2)))
    dense = torch.randn(24, 40)
    for rows in (1, 4, 17, 40):
        x = torch.randn(rows, 40)
        torch.library.opcheck(matvec.linear_op, (x, weight, scales))
        torch.library.opcheck(matvec.linear_op, (x, dense, None))
        out = matvec.linear_op(x, weight, scales)
        assert out.shape == (rows, 24) and torch.equal(out, (x @ weight.float().T) * scales)
        assert torch.equal(matvec.linear_op(x, dense, None), x @ dense.T)


def test_kernel_compiles_for_gpus_with_vector_loads(tmp_path: Path):
    """Compiled ahead of time for Ampere and Hopper (Triton's bundled ptxas; no GPU needed), with the alignment
    Triton's JIT assumes for 16-byte-aligned tensors: every config must read the weights with 16-byte vector loads
    (scalar byte loads would cap the bandwidth), keep its accumulators in registers (ptxas: no spills), and leave
    the weight tile in the register layout it is loaded in: a layout conversion of the tile inside the K loop goes
    through shared memory at every step, which held an earlier version to about a third of the H200's bandwidth."""
    import re
    import subprocess

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from fishs2.matvec_kernel import CONFIGS, _fitting_configs, _matvec_kernel

    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not ptxas.exists():
        pytest.skip("this Triton has no bundled ptxas")
    aligned = {(i,): [["tt.divisibility", 16]] for i in (0, 1, 2, 3, 4, 5, 8)}  # the six pointers and N
    plain, fused_ffn = {}, {"NORM": True, "SWIGLU": True}  # w13 of a fused block: the most registers
    # int8 weights with every config in bf16 (the GPU default), fp16 and fp32 models (activations and scales) with
    # one config; bf16 weights without scales (bf16 models' decode rows) with every config; a fused block's calls
    # (norm + SwiGLU for w13 with every config, the norm alone for wqkv, the residual add for wo and w2)
    cases = ([("bf16", "i8", c, plain) for c in CONFIGS] + [(d, "i8", CONFIGS[0], plain) for d in ("fp16", "fp32")]
             + [("bf16", "bf16", c, plain) for c in CONFIGS] + [("bf16", w, c, fused_ffn) for w in ("i8", "bf16")
                                                                 for c in CONFIGS]
             + [("bf16", "i8", CONFIGS[2], {"NORM": True}), ("bf16", "bf16", CONFIGS[2], {"RESIDUAL": True})])
    for arch in (80, 90):
        for dtype, weights, config, fused in cases:
            int8 = weights == "i8"
            signature = {"x_ptr": f"*{dtype}", "w_ptr": f"*{weights}", "scale_ptr": f"*{dtype if int8 else weights}",
                         "norm_ptr": f"*{dtype}", "residual_ptr": f"*{dtype}", "out_ptr": f"*{dtype}", "eps": "fp32",
                         "M": "i32", "N": "i32", "K": "constexpr", "HAS_SCALES": "constexpr", "NORM": "constexpr",
                         "SWIGLU": "constexpr", "RESIDUAL": "constexpr", "PDL": "constexpr", "BLOCK_M": "constexpr",
                         "BLOCK_N": "constexpr", "BLOCK_K": "constexpr"}
            for rows in (1, 4):
                if config not in _fitting_configs(CONFIGS, {"K": 2560}, BLOCK_M=rows, **fused):
                    continue  # never built: its accumulators would spill
                constants = {"K": 2560, "HAS_SCALES": int8, "NORM": False, "SWIGLU": False, "RESIDUAL": False, "PDL": False,
                             **fused, "BLOCK_M": rows, **config.kwargs}
                source = ASTSource(fn=_matvec_kernel, signature=signature, constexprs=constants, attrs=aligned)
                compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                                          options={"num_warps": config.num_warps})
                ttgir = compiled.asm["ttgir"]
                loops = [ttgir[i:ttgir.index("scf.yield", i)] for i in (m.start() for m in re.finditer("scf.for", ttgir))]
                assert len(loops) == 1 + (rows if fused.get("NORM") else 0)  # the K loop, after each row's RMS loop
                moved = [t for loop in loops for t in re.findall(r"ttg\.convert_layout %\S+ : (tensor<[^,]+),", loop)]
                # only activation vectors change register layout inside the K loop, never a weight tile
                assert all(re.fullmatch(r"tensor<\d+x[a-z]+\d*", t) for t in moved), (arch, dtype, weights, config,
                                                                                  fused, moved)
                ptx = compiled.asm["ptx"]
                assert re.search(r"ld\.global(\.nc)?\.v4\.b32", ptx), (arch, dtype, config)
                assert not re.search(r"ld\.global(\.nc)?\.b8\b", ptx), (arch, dtype, config)  # no per-byte loads
                ptx_file = tmp_path / "kernel.ptx"
                ptx_file.write_text(ptx)
                sm = f"sm_{arch}a" if arch == 90 else f"sm_{arch}"  # Triton targets Hopper's sm_90a
                report = subprocess.run([str(ptxas), "-v", f"-arch={sm}", str(ptx_file), "-o",
                                         str(tmp_path / "kernel.cubin")], capture_output=True, text=True)
                assert report.returncode == 0, report.stderr
                assert "0 bytes spill stores" in report.stderr, (arch, dtype, config, fused, report.stderr)


def test_dependent_launch_reads_the_first_weight_tile_before_waiting():
    """Compiled for Hopper with programmatic dependent launch (`pdl=True`): the kernel loads its first weight tile,
    then waits for the previous kernel (griddepcontrol.wait) before it reads any activation, and lets the next
    kernel launch; no spills. Without it, no grid dependency instruction at all (Ampere cannot run one)."""
    import re
    import subprocess
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from fishs2.dependent_launch import TRITON_LAUNCHES_DEPENDENTS
    from fishs2.matvec_kernel import CONFIGS, _matvec_kernel

    if not TRITON_LAUNCHES_DEPENDENTS:
        pytest.skip("this Triton has no programmatic dependent launch")
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    signature = {"x_ptr": "*bf16", "w_ptr": "*i8", "scale_ptr": "*bf16", "norm_ptr": "*bf16", "residual_ptr": "*bf16",
                 "out_ptr": "*bf16", "eps": "fp32", "M": "i32", "N": "i32", **{k: "constexpr" for k in (
                     "K", "HAS_SCALES", "NORM", "SWIGLU", "RESIDUAL", "PDL", "BLOCK_M", "BLOCK_N", "BLOCK_K")}}
    aligned = {(i,): [["tt.divisibility", 16]] for i in (0, 1, 2, 3, 4, 5, 8)}
    for fused in ({"NORM": True, "SWIGLU": True}, {"RESIDUAL": True}):
        for pdl in (True, False):
            config = CONFIGS[2]
            constants = {"K": 2560, "HAS_SCALES": True, "NORM": False, "SWIGLU": False, "RESIDUAL": False, **fused,
                         "PDL": pdl, "BLOCK_M": 4 if fused.get("RESIDUAL") else 2, **config.kwargs}
            source = ASTSource(fn=_matvec_kernel, signature=signature, constexprs=constants, attrs=aligned)
            compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                                      options={"num_warps": config.num_warps, "launch_pdl": pdl})
            ptx = compiled.asm["ptx"]
            if not pdl:
                assert "griddepcontrol" not in ptx
                continue
            assert compiled.metadata.launch_pdl
            wait, trigger = ptx.index("griddepcontrol.wait"), ptx.index("griddepcontrol.launch_dependents")
            assert wait < trigger
            before = ptx[:wait]
            # the weight tile (16-byte loads; with SwiGLU gate and up rows) is in flight before the wait, and
            # nothing else is read: activations, the residual and the norm's input come after
            assert len(re.findall(r"ld\.global(\.nc)?\.v4\.b32", before)) == (2 if fused.get("SWIGLU") else 1)
            assert len(re.findall(r"ld\.global", before)) == len(re.findall(r"ld\.global(\.nc)?\.v4\.b32", before))
            if ptxas.exists():
                with tempfile.TemporaryDirectory() as folder:
                    (Path(folder) / "kernel.ptx").write_text(ptx)
                    report = subprocess.run([str(ptxas), "-v", "-arch=sm_90a", f"{folder}/kernel.ptx", "-o",
                                             f"{folder}/kernel.cubin"], capture_output=True, text=True)
                assert report.returncode == 0, report.stderr
                assert "0 bytes spill stores" in report.stderr, (fused, report.stderr)


def test_dependent_launch_needs_hopper_a_recent_driver_and_triton(monkeypatch):
    """Programmatic dependent launch only where all of it exists: compute capability ≥ 9.0, a CUDA driver ≥ 12.3
    (graphs keep the launches' programmatic edges) and a Triton with `launch_pdl`; never off CUDA."""
    from fishs2 import dependent_launch, matvec_kernel
    from fishs2.attention_kernel import decode_attention, short_attention
    from fishs2.heads_kernel import prepare_heads

    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(dependent_launch, "TRITON_LAUNCHES_DEPENDENTS", True)
    for capability, driver, expected in (((9, 0), 12080, True), ((10, 0), 13000, True), ((8, 9), 13000, False),
                                         ((9, 0), 12020, False), ((9, 0), 0, False)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device, c=capability: c)
        monkeypatch.setattr(dependent_launch, "cuda_driver_version", lambda d=driver: d)
        assert dependent_launch.supported(cuda) is expected, (capability, driver)
    assert not dependent_launch.supported(torch.device("cpu"))
    monkeypatch.setattr(dependent_launch, "TRITON_LAUNCHES_DEPENDENTS", False)
    assert not dependent_launch.supported(cuda)
    # every kernel refuses pdl=True where it cannot run, by name, before launching anything
    x = torch.zeros(1, 8, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="matvec: pdl=True needs a Hopper"):
        matvec_kernel.matvec(x, torch.zeros(4, 8, dtype=torch.bfloat16), pdl=True)
    q, cache = torch.zeros(1, 2, 1, 16, dtype=torch.bfloat16), torch.zeros(1, 1, 4, 16, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="short_attention: pdl=True needs a Hopper"):
        short_attention(q, cache, cache, 2, pdl=True)
    with pytest.raises(ValueError, match="decode_attention: pdl=True needs a Hopper"):
        decode_attention(q, cache, cache, 2, pdl=True)
    with pytest.raises(ValueError, match="prepare_heads: pdl=True needs a Hopper"):
        prepare_heads(torch.zeros(1, 1, 64, dtype=torch.bfloat16), torch.zeros(1, 1, 1, 8, 2), cache, cache, 0, 2,
                      pdl=True)


def test_autotuning_builds_only_configs_that_fit_the_rows():
    from fishs2.matvec_kernel import CONFIGS, _fitting_configs

    assert _fitting_configs(CONFIGS, {"K": 2560}) == CONFIGS
    assert _fitting_configs(CONFIGS, {"K": 2560}, BLOCK_M=4) == CONFIGS
    # SwiGLU holds two tiles per row: four rows keep only the configs of 16 values per thread per tile
    assert len(_fitting_configs(CONFIGS, {"K": 2560}, BLOCK_M=4, SWIGLU=True)) == 5
    assert _fitting_configs(CONFIGS, {"K": 2560}, BLOCK_M=2, SWIGLU=True) == CONFIGS
    assert {c.kwargs["BLOCK_K"] for c in _fitting_configs(CONFIGS, {"K": 300})} == {256, 512}
    tiny = _fitting_configs(CONFIGS, {"K": 64})
    assert len(tiny) == 1 and tiny[0].kwargs["BLOCK_K"] == min(c.kwargs["BLOCK_K"] for c in CONFIGS)


def test_linear_off_cuda_uses_the_gemm_without_triton():
    """Rows on a device that is neither the CPU nor CUDA (here the meta device stands in for MPS/XPU) take the GEMM
    and never touch Triton or the kernel's failure switch."""
    from fishs2 import matvec
    from fishs2.quantize import quantize_rows

    weight, scales = quantize_rows(torch.randn(24, 40))
    x = torch.randn(2, 40)
    out = matvec.linear(x.to("meta"), weight.to("meta"), scales.to("meta"))
    assert out.shape == (2, 24) and out.device.type == "meta"
    assert not matvec._failure


class _CudaRows:
    """Stands in for rows on CUDA (a CPU tensor can not claim to be on CUDA) in the dispatch rule."""

    def __init__(self, rows: int, dtype: torch.dtype):
        self.shape, self.dtype, self.is_cuda = (rows, 40), dtype, True


def test_kernel_takes_decode_rows_and_leaves_the_rest_to_gemms():
    """int8 weights: up to 16 rows (the kernel reads the weights once per 4 rows, still less than dequantising for a
    GEMM). bf16/fp16 weights: up to 4 rows, read once; more rows are a GEMM's, as are fp32 models (their golden
    numerics stay cuBLAS's) and rows whose dtype differs from the weights'."""
    from fishs2.matvec import kernel_takes

    int8 = torch.zeros(8, 40, dtype=torch.int8)
    bf16, fp16, fp32 = (torch.zeros(8, 40, dtype=d) for d in (torch.bfloat16, torch.float16, torch.float32))
    assert [kernel_takes(_CudaRows(r, torch.bfloat16), int8) for r in (1, 4, 16, 17)] == [True, True, True, False]
    assert [kernel_takes(_CudaRows(r, torch.bfloat16), bf16) for r in (1, 3, 4, 5, 16)] == [True] * 3 + [False] * 2
    assert kernel_takes(_CudaRows(2, torch.float16), fp16) and not kernel_takes(_CudaRows(2, torch.float16), bf16)
    assert not kernel_takes(_CudaRows(1, torch.float32), fp32)
    assert not kernel_takes(torch.zeros(1, 40, dtype=torch.bfloat16), bf16)  # on the CPU


def test_int8_layer_branches_off_the_cpu_keep_shapes():
    """Int8Linear off the CPU (the meta device runs its GPU-side code without a GPU): decode rows (≤ 16) and prefill
    rows (> 16), batched [B, T, K] inputs, come back as [B, T, N] in the activation dtype."""
    from fishs2.quantize import Int8Linear

    layer = Int8Linear.from_float(torch.nn.Linear(40, 24, bias=False)).to("meta")
    for shape in ((2, 1, 40), (1, 16, 40), (3, 7, 40), (1, 300, 40)):
        out = layer(torch.empty(shape, device="meta", dtype=torch.bfloat16))
        assert out.shape == (*shape[:-1], 24) and out.dtype == torch.bfloat16
