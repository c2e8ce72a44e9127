#!/usr/bin/env bash
# Every GPU check in one command, for a machine with a GPU: the GPU tests, then the GPU
# benchmark when it exists. Each step runs under `timeout`, so the whole script stays under
# about 8 minutes (20 s + 240 s + 180 s). Installs nothing.
# Exit status: 0 when every step that ran passed, else 1.
set -u
cd "$(dirname "$0")/.."

status=0
run() {  # run LIMIT_SECONDS NAME COMMAND...: report how each step ended
    local limit=$1 name=$2
    shift 2
    echo "== $name (time limit ${limit}s)"
    timeout --kill-after=10 "$limit" "$@"
    local rc=$?
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        echo "== $name: stopped after ${limit}s"
        status=1
    elif [ "$rc" -ne 0 ]; then
        echo "== $name: failed (exit status $rc)"
        status=1
    else
        echo "== $name: passed"
    fi
}

echo "== nvidia-smi (for the record; not a check)"
timeout 20 nvidia-smi || echo "== nvidia-smi did not run (exit status $?)"
run 240 'GPU tests' python -m pytest tests/test_gpu.py tests/test_gpu_ddp.py -q -rs
if [ -f benchmarks/gpu_overhead.py ]; then
    run 180 'GPU benchmark' python benchmarks/gpu_overhead.py
else
    echo "== GPU benchmark: skipped, benchmarks/gpu_overhead.py does not exist yet"
fi
exit $status
