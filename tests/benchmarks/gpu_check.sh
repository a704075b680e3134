#!/bin/bash
# The GPU check of issue 4, as one prepared script (run on a GPU machine from the repository root).
#   MODEL=<TTM folder> OUT=<folder for the JSON results> bash tests/benchmarks/gpu_check.sh
# Wheels in .whl/ (granite-tsfm 0.3.2, transformers 4.56.0 and their missing needs) are installed first when present.
set -uo pipefail
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
MODEL=${MODEL:-ibm-granite/granite-timeseries-ttm-r2}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
bench() { name=$1; shift; python3 tests/benchmarks/bench_pipeline.py --synthetic 2000x260 --no-classical \
  --json "$OUT/$name.json" -- --PRETRAINED_MODEL="$MODEL" --PLOT_TOP_SERIES=0 "$@" 2>&1 | grep -v " INFO " | tail -25; }
# 1. throughput: every window (314k per epoch), 3 epochs, two batch sizes
bench gpu_b1024 --TRAIN_STRIDE=1 --MAX_TRAIN_WINDOWS=0 --NUM_TRAIN_EPOCHS=3 --BATCH_SIZE=1024
bench gpu_b4096 --TRAIN_STRIDE=1 --MAX_TRAIN_WINDOWS=0 --NUM_TRAIN_EPOCHS=3 --BATCH_SIZE=4096 --NUM_WORKERS=4
# 2. accuracy reference: every window, to early stopping (capped at 30 epochs), batch 512
timeout 330 bash -c "$(declare -f bench); OUT=$OUT MODEL=$MODEL bench gpu_every_window --TRAIN_STRIDE=1 --MAX_TRAIN_WINDOWS=0 --NUM_TRAIN_EPOCHS=30 --BATCH_SIZE=512"
