#!/usr/bin/env bash
# The one prepared GPU check (for a session that is lent the device machine):
#   ../shared/gpu/fetch-wheels.sh .whl          # here, once (MLflow, Optuna for the device)
#   run(command="bash scripts/device_check.sh", carry=[".whl"], timeout_s=590)
# 1. the fast-vs-plain and fast-vs-naive equivalence tests, on CUDA too;
# 2. the benchmark on the GPU (28x28 gray, settings 1 and 2, all batches, fp32 and bf16),
#    written to $OUT/bench/ (copy it into reports/bench/ and quote it in the note).
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_fast_paths.py -k "cuda" 2>&1 | tail -15 | tee "$OUT/tests.txt"
timeout 400 python3 -m pixelexp bench --device cuda --images gray28 --out "$OUT/bench" 2>&1 | tail -60 | tee "$OUT/bench.txt"
