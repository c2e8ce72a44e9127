#!/usr/bin/env bash
# Every GPU check in one command, for a machine with a GPU (docs/devices.md, "Running the GPU
# checks"). Installs nothing; run from anywhere in the checkout.
#
#   scripts/gpu_check.sh              on the GPU machine: the parts below, one after another
#   scripts/gpu_check.sh --prepare    here, before the device call: copies the installed
#                                     test-tube into .gpu_deps/ (ignored by git); name
#                                     .gpu_deps in the call's carry (the GPU image has no
#                                     test-tube; without it the tests that need it skip and
#                                     the benchmark runs without a logger)
#
# part                                       time limit   expected on one H200
# 1. tests/test_gpu.py (one process)         120 s        about 1 min
# 2. tests/test_gpu_ddp.py (NCCL)            100 s        under 1 min (the 2-GPU tests skip)
# 3. benchmarks/gpu_overhead.py              150 s        about 1.5 min
# Each part runs under `timeout` (SIGTERM, SIGKILL 10 s later); a part that fails or is
# stopped does not stop the next. With pytest-timeout installed (the GPU image has it) every
# test also gets its own limit, so one hung test does not cost the whole part. Worst case
# about 7.5 minutes (a device call may last 10); usually about 3.5.
#
# Output: an environment header, each part's output, and a summary line per part (status,
# exit code, seconds). With $OUT set (the device tool sets it) the same text goes to
# $OUT/gpu_check.log and the tests' results to $OUT/junit-gpu.xml and $OUT/junit-gpu-ddp.xml.
# Exit status: 0 when every part passed, else 1.
set -u
cd "$(dirname "$0")/.."

PY=${PYTHON:-$(command -v python3 || command -v python)}
DEPS=.gpu_deps

prepare() {
    local src exclude
    if ! src=$("$PY" -c 'import os, test_tube; print(os.path.dirname(test_tube.__file__))'); then
        echo "test-tube is not installed for $PY: pip install test-tube, then run this again"
        return 1
    fi
    rm -rf "$DEPS/test_tube"
    mkdir -p "$DEPS"
    cp -r "$src" "$DEPS/"
    find "$DEPS" -name __pycache__ -prune -exec rm -rf {} +
    exclude=$(git rev-parse --git-path info/exclude)
    mkdir -p "$(dirname "$exclude")"
    grep -qx "/$DEPS/" "$exclude" 2>/dev/null || echo "/$DEPS/" >>"$exclude"
    echo "copied $src to $DEPS/ (ignored by git: $exclude); pass carry=['$DEPS'] to the device call"
}

summary=()
status=0
part() {  # part LIMIT_SECONDS NAME COMMAND...: run one part, record how it ended
    local limit=$1 name=$2 start rc how
    shift 2
    echo
    echo "== $name (time limit ${limit}s): $*"
    start=$SECONDS
    timeout --kill-after=10 "$limit" "$@"
    rc=$?
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        how="STOPPED at the time limit"
    elif [ "$rc" -ne 0 ]; then
        how="FAILED"
    else
        how="passed"
    fi
    [ "$rc" -eq 0 ] || status=1
    summary+=("$(printf '%-14s %-26s exit %3s  %4ss' "$name" "$how" "$rc" $((SECONDS - start)))")
    echo "== $name: $how (exit status $rc, $((SECONDS - start)) s)"
}

main() {
    export PYTHONUNBUFFERED=1
    # this checkout's package first (the GPU image has another pytorch_lightning installed),
    # then the carried test-tube
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    [ -d "$DEPS" ] && PYTHONPATH="$PYTHONPATH:$PWD/$DEPS"
    echo "== environment"
    timeout 10 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
        || echo "nvidia-smi did not run"
    timeout 30 "$PY" - <<'EOF' || echo "== the Python environment could not be read"
import importlib.util, sys, torch, pytorch_lightning
print(f'python {sys.version.split()[0]} ({sys.executable}), torch {torch.__version__} '
      f'(CUDA {torch.version.cuda}), {torch.cuda.device_count()} GPU(s)'
      + ''.join(f', {torch.cuda.get_device_name(i)}' for i in range(torch.cuda.device_count())))
print(f'pytorch_lightning from {pytorch_lightning.__file__}')
for name in ('test_tube', 'sklearn', 'pytest_timeout', 'cloudpickle'):
    print(f'{name}: {"yes" if importlib.util.find_spec(name) else "MISSING"}')
EOF
    # per-test limits need pytest-timeout; the signal method fails the test and goes on
    local timeout_ok=''
    "$PY" -c 'import pytest_timeout' 2>/dev/null && timeout_ok=1
    local tests=(-m pytest tests/test_gpu.py -q -rfEs --durations=8 -p no:cacheprovider)
    local ddp=(-m pytest tests/test_gpu_ddp.py -q -rfEs --durations=8 -p no:cacheprovider)
    if [ -n "$timeout_ok" ]; then
        tests+=(--timeout=90 --timeout-method=signal)
        # a spawned DDP fit: fresh interpreters, NCCL, a 60 s process group timeout
        ddp+=(--timeout=80 --timeout-method=signal)
    fi
    if [ -n "${OUT:-}" ]; then
        tests+=(--junitxml="$OUT/junit-gpu.xml")
        ddp+=(--junitxml="$OUT/junit-gpu-ddp.xml")
    fi
    part 120 'GPU tests' "$PY" "${tests[@]}"
    part 100 'GPU DDP tests' "$PY" "${ddp[@]}"
    part 150 'GPU benchmark' "$PY" benchmarks/gpu_overhead.py
    echo
    echo "== summary"
    printf '%s\n' "${summary[@]}"
    return $status
}

if [ "${1:-}" = --prepare ]; then
    prepare
    exit
fi
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    main 2>&1 | tee "$OUT/gpu_check.log"
    exit "${PIPESTATUS[0]}"
fi
main
