#!/usr/bin/env bash
# Issue 6's GPU evidence in one command, for a machine with a CUDA GPU and a python3 that has a
# CUDA build of torch plus fusioncli's dependencies (typer, rich, pandas, pyarrow, pillow,
# safetensors, psutil; pytest and hypothesis for the tests). fusioncli itself need not be
# installed: it is imported from this checkout.
#
#   bash benchmarks/gpu_evidence.sh            # logs under $OUT (default benchmarks/_work/gpu)
#
# Steps, each under its own time limit (seconds, overridable) so one slow step cannot eat the
# others' time; every log is written as it goes, so a step cut off still shows how far it got:
#   1. env.txt          nvidia-smi, torch/CUDA versions
#      data.txt         synth 2 x 9,999 + prepare (seed split) into $DATA, shared by the steps
#   2. grid.txt/.json   the seed grid (24 runs x 15 epochs x 19,358 samples), stacked executor,
#                       plus 2 runs one at a time for the per-run ratio  (GRID_LIMIT, 240)
#   3. pytest_gpu.txt   the CUDA tests: pytest -m gpu                     (PYTEST_LIMIT, 120)
#   4. grid_compile.txt the seed grid's `late` group (6 runs) with --compile, to set against
#                       its group in grid.txt                              (COMPILE_LIMIT, 100)
#   5. stacked.txt      bench_stacked.py: K=6 lrs, stacked vs one at a time (STACKED_LIMIT, 60)
# Total at most ~9 min. Exit status: the number of steps that failed or ran out of time.
# SMOKE=1 runs the same steps on the CPU at toy sizes (checks the script, not the GPU).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/_work/gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 FUSIONCLI_NO_PROGRESS=1
failed=0
DATA=${DATA:-/tmp/fusioncli-gpu-evidence}  # the dataset (~0.7 GB): never under $OUT, which travels back
DEVICE=cuda PER_CLASS=9999 GRID_SIZE=() STACKED_SIZE=(--limit-per-class 2000 --epochs 3)
if [ "${SMOKE:-0}" = 1 ]; then
    DEVICE=cpu PER_CLASS=400 GRID_SIZE=(--epochs 1 --strategies late --lrs 1e-4) STACKED_SIZE=(--limit-per-class 40 --epochs 2)
fi

step() {  # step NAME LIMIT COMMAND...: run under a time limit, log to $OUT/NAME.txt
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s): $*"
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.txt" 2>&1
    local rc=$?
    echo "== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$OUT/$name.txt"
    [ "$rc" -eq 0 ] || failed=$((failed + 1))
}

step env 30 bash -c "nvidia-smi; $PY -c 'import torch, sys; print(sys.version); print(torch.__version__, torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name(0))'"
# The library, not the CLI: the machine's own typer version does not matter for the figures.
rm -rf "$DATA"
step data 90 "$PY" -c "from pathlib import Path; from fusioncli.data.synth import write_dataset; \
from fusioncli.data.cache import prepare; d = Path('$DATA'); print(write_dataset(d / 'raw', per_class=$PER_CLASS)); \
print(prepare(d / 'raw', d / 'cache'))"
step grid "${GRID_LIMIT:-240}" "$PY" benchmarks/bench_grid.py --cache-dir "$DATA/cache" --device "$DEVICE" \
    --executor stacked "${GRID_SIZE[@]}" --json "$OUT/grid.json"
step pytest_gpu "${PYTEST_LIMIT:-120}" "$PY" -m pytest -m gpu -p no:cacheprovider -rs tests
step grid_compile "${COMPILE_LIMIT:-100}" "$PY" benchmarks/bench_grid.py --cache-dir "$DATA/cache" \
    --device "$DEVICE" --executor stacked "${GRID_SIZE[@]}" --strategies late --compile --baseline-runs 0 \
    --json "$OUT/grid_compile.json"
step stacked "${STACKED_LIMIT:-60}" "$PY" benchmarks/bench_stacked.py --cache-dir "$DATA/cache" --device "$DEVICE" \
    "${STACKED_SIZE[@]}" --lrs 1e-3,3e-4,1e-4,3e-5,1e-5,3e-6
rm -rf "$DATA"
tail -n 25 "$OUT/grid.txt"
exit "$failed"
