#!/usr/bin/env bash
# Everything that needs a GPU, in one command (a lent GPU machine is billed per second, so it runs as one call):
# the CUDA tests, the int8 kernel against cuBLAS (bench/matvec.py), the real-architecture bench (bf16, with int8
# and fp8 side by side), the sampling bench, the same bench with compiled blocks, and the per-kernel breakdown.
# A step whose *_TIMEOUT is 0 is skipped (TEST, MATVEC, BENCH, COMPILE, SAMPLING, BREAKDOWN); BENCH_PATHS picks the
# bench's decode paths (default: all) and FRAMES its frames per run (default 256).
# Logs and the bench's markdown report go to $OUT (default /tmp/fishs2-gpu). Wheels in .whl/ (soundfile and its
# needs, for machines without them) are installed into /tmp/site first.
set -u
OUT=${OUT:-/tmp/fishs2-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,clocks.mem --format=csv \
    | tee "$OUT/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"

step() {  # step NAME TIMEOUT COMMAND…: run COMMAND under TIMEOUT seconds, or skip it when TIMEOUT is 0
    local name=$1 limit=$2
    shift 2
    if [ "$limit" = 0 ]; then
        echo "== $name: skipped"
        return
    fi
    echo "== $name"
    timeout "$limit" "$@"
}

step "CUDA tests" "${TEST_TIMEOUT:-180}" $PY -m pytest -q -rs -p no:cacheprovider \
    tests/test_cuda.py tests/test_perf_paths.py tests/test_memory.py -k cuda 2>&1 | tee "$OUT/tests.log"

step "matrix x vector at the real shapes: bf16 cuBLAS, the int8 kernel (autotuned here), int8 dequantise + GEMM" \
    "${MATVEC_TIMEOUT:-90}" $PY bench/matvec.py 2>&1 | tee "$OUT/matvec.log"

step "bench, real architecture" "${BENCH_TIMEOUT:-300}" $PY bench/run.py --real --frames "${FRAMES:-256}" --runs 2 \
    --paths "${BENCH_PATHS:-fishs2,official,static,int8,fp8}" --write "$OUT/RESULTS-gpu.md" 2>&1 | tee "$OUT/bench.log"

step "bench, real architecture, blocks compiled (torch.compile) inside the CUDA graph" "${COMPILE_TIMEOUT:-240}" \
    $PY bench/run.py --real --compile --paths static,int8 --no-codec --frames "${FRAMES:-256}" --runs 2 \
    --write "$OUT/RESULTS-gpu-compile.md" 2>&1 | tee "$OUT/compile.log"

step "sampling: the vocabulary sorted per draw against once per frame" "${SAMPLING_TIMEOUT:-60}" \
    $PY bench/sampling.py 2>&1 | tee "$OUT/sampling.log"

step "per-kernel breakdown, bf16" "${BREAKDOWN_TIMEOUT:-120}" \
    $PY bench/breakdown.py --frames 16 2>&1 | tee "$OUT/breakdown.log"
