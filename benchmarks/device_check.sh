#!/usr/bin/env bash
# The whole check on a machine with a GPU and many cores, in one command and one time limit:
#   bash benchmarks/device_check.sh OUTDIR
# 1. installs this checkout (no network needed: no dependencies are fetched);
# 2. what the machine has (cores, GPU, NumPy, CuPy, PyTorch, MPI);
# 3. the GPU tests (`python -m pytest -m gpu`, failing rather than skipping: MINILEPTON_REQUIRE_GPU=1)
#    and the data-parallel GPU-worker tests (tests/test_device_runner.py);
# 4. benchmarks/gpu_step.py: minilepton vs hand-written CuPy vs PyTorch CUDA (TF32 off);
# 5. `minilepton bench scaling --workers 1,2,4,8,16 --hidden 1024,1024 --batch-size 1024`,
#    one BLAS thread per worker, world sizes capped at the machine's cores;
# 6. benchmarks/device_summary.py gathers OUTDIR/device.json from the parts.
# Without a GPU, parts 3-4 stop at once with one line saying so and the CPU part still runs.
# Everything is tee'd to OUTDIR/device_check.log under DEVICE_CHECK_TIMEOUT_S (default 420 s);
# the exit status is non-zero when any part failed.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ $# -ne 1 ]; then
    echo "usage: bash benchmarks/device_check.sh OUTDIR   (where the log, JSON and figure go)" >&2
    exit 2
fi
mkdir -p "$1" && OUTDIR="$(cd "$1" && pwd)" || exit 2
export OUTDIR LIMIT_S="${DEVICE_CHECK_TIMEOUT_S:-420}" PYTHONUNBUFFERED=1
export SCALING_WORKERS="${SCALING_WORKERS:-1,2,4,8,16}" SCALING_ROUNDS="${SCALING_ROUNDS:-3}"

run_all() {
    local status=0 gpu=1
    echo "== install ($(date -u '+%Y-%m-%d %H:%M:%S') UTC)"
    if ! python -m pip install -q --no-deps --no-build-isolation -e . 2>"$OUTDIR/pip.err"; then
        echo "pip install failed ($(tail -n 1 "$OUTDIR/pip.err")); using PYTHONPATH=$PWD"
        export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    fi
    echo "== machine"
    echo "cores: $(nproc); $(uname -srm)"
    lscpu 2>/dev/null | grep -E '^(Model name|Thread\(s\) per core|Core\(s\) per socket|Socket\(s\)|NUMA node\(s\)):' || true
    python -c "import sys, numpy; print('python', sys.version.split()[0], 'numpy', numpy.__version__)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
    python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())" 2>/dev/null \
        || echo "torch: not installed (the PyTorch column is skipped)"
    python -c "import mpi4py; print('mpi4py', mpi4py.__version__)" 2>/dev/null || echo "mpi4py: not installed"
    if ! python -c "import cupy; n = cupy.cuda.runtime.getDeviceCount(); assert n > 0; print('cupy', cupy.__version__, 'CUDA runtime', cupy.cuda.runtime.runtimeGetVersion(), 'GPUs', n)" 2>"$OUTDIR/cupy.err"; then
        echo "device_check: no GPU present ($(tail -n 1 "$OUTDIR/cupy.err")): GPU tests and GPU benchmark skipped"
        gpu=0
    fi
    if [ "$gpu" = 1 ]; then
        echo "== GPU tests (-m gpu) and the data-parallel GPU-worker tests"
        MINILEPTON_REQUIRE_GPU=1 timeout 200 python -m pytest -m gpu tests \
            -q -rs --tb=short -p no:cacheprovider --junitxml="$OUTDIR/gpu_tests.xml" || status=1
        timeout 120 python -m pytest tests/test_device_runner.py tests/test_device.py -q -rs \
            --tb=short -p no:cacheprovider --junitxml="$OUTDIR/device_tests.xml" || status=1
        echo "== GPU step benchmark"
        timeout 150 python benchmarks/gpu_step.py --repeats 9 --json "$OUTDIR/gpu_step.json" || status=1
    fi
    echo "== data-parallel scaling on $(nproc) cores"
    local cores workers
    cores=$(nproc)
    workers=$(python -c "import sys; print(','.join(w for w in sys.argv[1].split(',') if int(w) <= $cores))" "$SCALING_WORKERS")
    timeout 200 python -m minilepton bench scaling --workers "$workers" --hidden 1024,1024 \
        --batch-size 1024 --blas-threads 1 --rounds "$SCALING_ROUNDS" \
        --json "$OUTDIR/scaling.json" --figure "$OUTDIR/speedup_dp.png" || status=1
    echo "== summary"
    python benchmarks/device_summary.py "$OUTDIR" || status=1
    echo "== device_check exit status: $status"
    return "$status"
}

export -f run_all
timeout --kill-after=10 "$LIMIT_S" bash -c run_all 2>&1 | tee "$OUTDIR/device_check.log"
status=${PIPESTATUS[0]}
[ "$status" -eq 124 ] && echo "device_check: stopped after ${LIMIT_S} s (DEVICE_CHECK_TIMEOUT_S)" \
    | tee -a "$OUTDIR/device_check.log"
exit "$status"
