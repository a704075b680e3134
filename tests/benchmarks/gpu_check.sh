#!/bin/bash
# The GPU checks of issue 13 as one prepared script (run on a GPU machine from the repository root, ~8 minutes):
#   MODEL=<TTM folder> OUT=<folder for the JSON results> [DUNNHUMBY=<weekly.csv>] [FEEDS=1] \
#     bash tests/benchmarks/gpu_check.sh
# Wheels in .whl/ (granite-tsfm 0.3.2, transformers 4.56.0 and their missing needs) are installed first when present.
set -uo pipefail
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
MODEL=${MODEL:-ibm-granite/granite-timeseries-ttm-r2}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
bench() { name=$1; shift; source=$1; shift; timeout 280 python3 tests/benchmarks/bench_pipeline.py $source --no-classical \
  --json "$OUT/$name.json" -- --PRETRAINED_MODEL="$MODEL" --PLOT_TOP_SERIES=0 "$@" 2>&1 | grep -v " INFO " | tail -22; }
# 1. item 3: 50,000 series x 260 weeks end to end, default settings apart from batch size and workers (<= 60 s);
#    item 2: its training windows/s against the bare step (>= 0.85): panel on the GPU, windows cut there
#    (GATHER_ON_GPU; NUM_WORKERS then unused), validation bounded by MAX_VALID_WINDOWS
bench big "--synthetic 50000x260" --BATCH_SIZE=4096 --NUM_WORKERS=4
# 2. item 2's accuracy reference: the default dunnhumby run (WAPE within 1% of the CPU run's)
if [ -n "${DUNNHUMBY:-}" ]; then bench dunnhumby "--data $DUNNHUMBY" --HOLIDAY_COUNTRY=; fi
# 3. FEEDS=1: the same 50,000 series with windows cut on the CPU by 4 DataLoader workers, the feed before
if [ -n "${FEEDS:-}" ]; then bench big_workers "--synthetic 50000x260" --BATCH_SIZE=4096 --NUM_WORKERS=4 \
  --GATHER_ON_GPU=False; fi
