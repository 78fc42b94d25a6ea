#!/usr/bin/env bash
# The whole GPU check in one command, for one short run on a machine with a CUDA GPU:
#   bash benchmarks/gpu_check.sh [LOG]        (default LOG: gpu_check.log)
# 1. what the machine has (nvidia-smi, CuPy, PyTorch);
# 2. the GPU tests (tests/test_gpu.py, tests/test_gpu_memory.py), which fail rather than skip here
#    (MINILEPTON_REQUIRE_GPU=1), plus the CPU-side device tests;
# 3. the step benchmark (benchmarks/gpu_step.py): minilepton vs hand-written CuPy vs PyTorch.
# Everything runs under one wall-clock limit (GPU_CHECK_TIMEOUT_S, default 480 s) and is
# tee'd to LOG; the exit status is non-zero when any part failed.
set -uo pipefail
cd "$(dirname "$0")/.."
LOG="${1:-gpu_check.log}"
LIMIT_S="${GPU_CHECK_TIMEOUT_S:-480}"
export MINILEPTON_REQUIRE_GPU=1 PYTHONUNBUFFERED=1

run_all() {
    local status=0
    echo "== machine"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || status=1
    if ! python -c "import cupy; print('cupy', cupy.__version__, 'CUDA runtime', cupy.cuda.runtime.runtimeGetVersion(), 'GPUs', cupy.cuda.runtime.getDeviceCount())"; then
        echo "gpu_check: CuPy cannot use a GPU on this machine; nothing else to check"
        echo "== gpu_check exit status: 1"
        return 1
    fi
    python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())" || echo "torch: not installed (the PyTorch column is skipped)"
    echo "== tests (-m gpu, then the device tests)"
    python -m pytest tests/test_gpu.py tests/test_gpu_memory.py tests/test_device.py tests/test_device_runner.py -q -rs --tb=short -p no:cacheprovider || status=1
    echo "== benchmark"
    python benchmarks/gpu_step.py || status=1
    echo "== gpu_check exit status: $status"
    return "$status"
}

export -f run_all
timeout --kill-after=10 "$LIMIT_S" bash -c run_all 2>&1 | tee "$LOG"
status=${PIPESTATUS[0]}
[ "$status" -eq 124 ] && echo "gpu_check: stopped after ${LIMIT_S} s (GPU_CHECK_TIMEOUT_S)" | tee -a "$LOG"
exit "$status"
