#!/usr/bin/env bash
# The prepared GPU check, for a machine with a CUDA GPU, in two calls of under 10 minutes
# (one device session has 15). Once, in this checkout:
#   ../shared/gpu/fetch-wheels.sh .whl                      # MLflow, Optuna for the device
#   mkdir -p .devdata && cp -r ../shared/data/mnist-10k .devdata/
#   (both ignored: /.whl/ and /.devdata/ in .git/info/exclude)
# then, on the GPU machine with .whl/ and .devdata/ copied along:
#   PART=1 bash scripts/device_check.sh      # allow it 590 s
#   PART=2 bash scripts/device_check.sh      # allow it 590 s
#
# Stages, most important first, each cut short by a shared deadline (BUDGET seconds) so
# that a slow stage cannot cost the later ones everything; every bench stage writes its
# JSON/Markdown after each case, so a stage cut short keeps what it measured.
# Part 1:
#   1. the CUDA equivalence tests (fast scan vs plain loop, gradcheck, cached samplers,
#      CUDA-graph training and evaluation vs eager, graph-replayed samplers vs eager,
#      Triton scan);
#   2. the main job end to end: `pixelexp experiment experiments/rnn_vs_cnn.yaml` on the
#      mnist-10k digits with MLflow (SQLite), MAIN_EPOCHS epochs, the default fast paths;
#      its report comes back as $OUT/rnn_vs_cnn-gpu/ (commit it as reports/rnn_vs_cnn-gpu/);
#   3. the targets: pixel_cnn and pixel_rnn, setting [1], 28x28, batch 256, fp32 and bf16,
#      sampling 100 images (fast and naive).
# Part 2:
#   4. time to quality (`bench --quality`): pixel_cnn, pixel_rnn, gated_pixel_cnn to 100
#      and 95 test nats, bf16, batch 256;
#   5. pixel_rnn with model.impl=triton (the Triton scan) at batches 256 and 1024;
#   6. a profile of pixel_rnn's training step (scripts/profile_step.py);
#   7. batches 16 and 1024; 8. row_lstm and gated_pixel_cnn; 9. setting [2], 32x32 RGB;
#   10. bf16 vs fp32 test bits/dim of a short pixel_cnn training (scripts/bf16_check.py).
# All of $OUT also lands in $OUT/device-check.tgz.
# $OUT/bench-* belong in reports/bench/; then `python scripts/speed_table.py` rewrites the README's tables.
set -u
OUT=${OUT:-/tmp/out}
BUDGET=${BUDGET:-540}
PART=${PART:-1}
MAIN_EPOCHS=${MAIN_EPOCHS:-6}
DEVICE=${DEVICE:-cuda}  # a CPU dry run of the script: DEVICE=cpu with MAIN_ARGS/QUALITY_ARGS shrinking the data
MAIN_ARGS=${MAIN_ARGS:-}
QUALITY_ARGS=${QUALITY_ARGS:-}
START=$(date +%s)
mkdir -p "$OUT"
left() {  # seconds for the next stage: at most $1, never past the deadline
  local rest=$((BUDGET - ($(date +%s) - START)))
  if [ "$rest" -lt "$1" ]; then echo $((rest > 5 ? rest : 5)); else echo "$1"; fi
}
stage() {  # stage NAME MAX_SECONDS COMMAND...
  local name=$1 max=$2; shift 2
  local t=$(left "$max")
  echo "== $name (up to ${t}s, $(( $(date +%s) - START ))s in)" | tee -a "$OUT/log.txt"
  timeout -k 10 "$t" "$@" > "$OUT/$name.txt" 2>&1
  echo "   rc=$? after $(( $(date +%s) - START ))s" | tee -a "$OUT/log.txt"
  tail -n 25 "$OUT/$name.txt"
}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>&1 | tail -3
fi
export PYTHONPATH=/tmp/site:$PWD
[ -d .devdata/mnist-10k ] && export PIXELEXP_MNIST10K=$PWD/.devdata/mnist-10k
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>&1 | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"
B="python3 -m pixelexp bench --device $DEVICE --images gray28 --settings 1"

DATA=$(realpath "${PIXELEXP_MNIST10K:-../shared/data/mnist-10k}")
if [ "$PART" = 1 ]; then
  stage tests 100 python3 -m pytest -q -p no:cacheprovider tests/test_fast_paths.py -k "cuda"
  rm -rf /tmp/main-job && mkdir -p /tmp/main-job  # its own folder: store, runs and report
  stage main-job 260 env -C /tmp/main-job MLFLOW_TRACKING_URI="sqlite:////tmp/main-job/mlflow.db" \
    PIXELEXP_DATA="$DATA" python3 -m pixelexp experiment "$PWD/experiments/rnn_vs_cnn.yaml" \
    train.epochs="$MAIN_EPOCHS" track.sample_every=1 $MAIN_ARGS --quiet
  [ -d /tmp/main-job/reports/rnn_vs_cnn ] && cp -r /tmp/main-job/reports/rnn_vs_cnn "$OUT/rnn_vs_cnn-gpu"
  stage bench-targets 170 $B --models pixel_cnn,pixel_rnn --batches 256 --precisions fp32,bf16 --sample-n 100 \
    --out "$OUT/bench-targets"
else
  stage quality 150 env PIXELEXP_DATA="$DATA" python3 -m pixelexp bench --quality --device "$DEVICE" --batches 256 \
    --precisions bf16 --budget 40 $QUALITY_ARGS --out "$OUT/bench-quality"
  stage bench-triton 60 $B --models pixel_rnn --batches 256,1024 --precisions fp32 --no-sample --impl triton \
    --out "$OUT/bench-triton"
  stage profile 45 python3 scripts/profile_step.py pixel_rnn 256 fast
  stage bench-batches 70 $B --models pixel_rnn,pixel_cnn --batches 16,1024 --precisions fp32,bf16 --no-sample \
    --out "$OUT/bench-batches"
  stage bench-others 80 $B --models row_lstm,gated_pixel_cnn --batches 256 --precisions fp32,bf16 --sample-n 100 \
    --out "$OUT/bench-others"
  stage bench-rgb 50 python3 -m pixelexp bench --device "$DEVICE" --images rgb32 --settings 2 --models pixel_rnn,pixel_cnn \
    --batches 256 --precisions bf16 --no-sample --out "$OUT/bench-rgb"
  stage bf16 60 python3 scripts/bf16_check.py "$DATA" pixel_cnn train.compile=off
fi
echo "done in $(( $(date +%s) - START ))s" | tee -a "$OUT/log.txt"
# Everything in one archive too, for transports that bring back only a few files.
tar czf /tmp/device-check.tgz -C "$OUT" . && mv /tmp/device-check.tgz "$OUT/"
