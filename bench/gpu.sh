#!/usr/bin/env bash
# Everything that needs a GPU, in one command (a lent GPU machine is billed per second, so it runs as one call):
# the CUDA tests, the int8 kernel against cuBLAS (bench/matvec.py), the decode-attention kernels against PyTorch's
# ops (bench/attention.py), the real-architecture bench (bf16, with int8 and fp8 side by side), the sampling bench,
# the same bench with compiled blocks, and the per-kernel breakdown.
# A step whose *_TIMEOUT is 0 is skipped (TEST, MATVEC, ATTENTION, BENCH, COMPILE, SAMPLING, BREAKDOWN); BENCH_PATHS
# picks the bench's decode paths (default: all), COMPILE_PATHS the compiled run's (default: static,int8), FRAMES and
# RUNS its frames per run and runs per path (default 256 and 2), TEST_K the tests' -k expression (default cuda).
# Logs and the bench's markdown reports go to $OUT (default /tmp/fishs2-gpu). Wheels in .whl/ (soundfile and its
# needs, for machines without them) go into /tmp/site first.
set -u
OUT=${OUT:-/tmp/fishs2-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,clocks.mem --format=csv
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"

# At most 8 files come back from a lent machine: a skipped step writes none.
step() {  # step NAME TIMEOUT LOG COMMAND…: run COMMAND under TIMEOUT seconds into $OUT/LOG, or skip it when TIMEOUT is 0
    local name=$1 limit=$2 log=$3
    shift 3
    if [ "$limit" = 0 ]; then
        echo "== $name: skipped"
        return
    fi
    echo "== $name"
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$log"
}

step "CUDA tests" "${TEST_TIMEOUT:-330}" tests.log $PY -m pytest -q -rs -p no:cacheprovider --durations=12 \
    tests/test_cuda.py tests/test_perf_paths.py tests/test_memory.py -k "${TEST_K:-cuda}"

# A kernel whose test just failed is switched off for the benches that follow, so they time code that is right.
if [ -f "$OUT/tests.log" ]; then
    gate() {  # gate VARIABLE TEST_PATTERN
        if grep -Eq "^(FAILED|ERROR) tests/test_cuda.py::($2)" "$OUT/tests.log"; then
            export "$1=0"
            echo "== $1=0: its test failed"
        fi
    }
    gate FISHS2_DECODE_ATTENTION "test_decode_attention_kernels|test_short_attention_kernel"
    gate FISHS2_DECODE_HEADS "test_heads_kernel"
    gate FISHS2_DEPENDENT_LAUNCH "test_dependent_launch_waits|test_decode_layers_kernels_as_dependents"
fi

step "matrix x vector at the real shapes, in CUDA graphs: bf16 cuBLAS, the int8 kernel (autotuned here), int8 \
dequantise + GEMM, the kernel on bf16 weights" "${MATVEC_TIMEOUT:-90}" matvec.log $PY bench/matvec.py

step "decode attention at the real shapes, in CUDA graphs: PyTorch's ops against the Triton kernels" \
    "${ATTENTION_TIMEOUT:-60}" attention.log $PY bench/attention.py

step "bench, real architecture" "${BENCH_TIMEOUT:-300}" bench.log $PY bench/run.py --real --frames "${FRAMES:-256}" \
    --runs "${RUNS:-2}" --paths "${BENCH_PATHS:-fishs2,official,static,int8,fp8}" --write "$OUT/RESULTS-gpu.md"

step "bench, real architecture, blocks compiled (torch.compile) inside the CUDA graph" "${COMPILE_TIMEOUT:-240}" \
    compile.log $PY bench/run.py --real --compile --paths "${COMPILE_PATHS:-static,int8}" --no-codec --no-switches \
    --frames "${FRAMES:-256}" --runs "${RUNS:-2}" --write "$OUT/RESULTS-gpu-compile.md"

step "sampling: the vocabulary sorted per draw against once per frame" "${SAMPLING_TIMEOUT:-60}" sampling.log \
    $PY bench/sampling.py

# Default: the kernels inside the bf16 graph's replays, the default path on CUDA (BREAKDOWN_ARGS to change it).
step "per-kernel breakdown" "${BREAKDOWN_TIMEOUT:-120}" breakdown.log \
    $PY bench/breakdown.py ${BREAKDOWN_ARGS:---no-eager --frames 16 --rows 30}
