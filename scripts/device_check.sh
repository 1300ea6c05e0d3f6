#!/usr/bin/env bash
# The one prepared GPU check, for a machine with a CUDA GPU. Once, in this checkout:
#   ../shared/gpu/fetch-wheels.sh .whl                      # MLflow, Optuna for the device
#   mkdir -p .devdata && cp -r ../shared/data/mnist-10k .devdata/
#   (both ignored: /.whl/ and /.devdata/ in .git/info/exclude)
# then, on the GPU machine with .whl/ and .devdata/ copied along: bash scripts/device_check.sh
# (allow it 590 s).
#
# Stages, most important first, each cut short by a shared deadline (BUDGET seconds) so
# that a slow stage cannot cost the later ones everything; every bench stage writes its
# JSON/Markdown after each case, so a stage cut short keeps what it measured.
#   1. the CUDA equivalence tests (fast scan vs plain loop, gradcheck, cached samplers,
#      CUDA-graph training and evaluation vs eager, graph-replayed samplers vs eager,
#      Triton scan);
#   2. the targets: pixel_cnn and pixel_rnn, setting [1], 28x28, batch 256, fp32 and bf16,
#      sampling 100 images (fast and naive);
#   3. pixel_rnn with model.impl=triton (the Triton scan) at batches 256 and 1024;
#   4. a profile of pixel_rnn's training step (scripts/profile_step.py);
#   5. batches 16 and 1024; 6. row_lstm and gated_pixel_cnn; 7. setting [2], 32x32 RGB;
#   8. bf16 vs fp32 test bits/dim of a short pixel_cnn training (scripts/bf16_check.py);
#   9. which switch buys what for pixel_rnn at batch 256 (compile / CUDA graphs).
# All of $OUT also lands in $OUT/device-check.tgz.
# $OUT/bench-* belong in reports/bench/, which the README's Speed section quotes.
set -u
OUT=${OUT:-/tmp/out}
BUDGET=${BUDGET:-400}
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
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"
B="python3 -m pixelexp bench --device cuda --images gray28 --settings 1"

stage tests 100 python3 -m pytest -q -p no:cacheprovider tests/test_fast_paths.py -k "cuda"
stage bench-targets 170 $B --models pixel_cnn,pixel_rnn --batches 256 --precisions fp32,bf16 --sample-n 100 \
  --out "$OUT/bench-targets"
stage bench-triton 60 $B --models pixel_rnn --batches 256,1024 --precisions fp32 --no-sample --impl triton \
  --out "$OUT/bench-triton"
stage profile 45 python3 scripts/profile_step.py pixel_rnn 256 fast
stage bench-batches 70 $B --models pixel_rnn,pixel_cnn --batches 16,1024 --precisions fp32,bf16 --no-sample \
  --out "$OUT/bench-batches"
stage bench-others 80 $B --models row_lstm,gated_pixel_cnn --batches 256 --precisions fp32,bf16 --sample-n 100 \
  --out "$OUT/bench-others"
stage bench-rgb 50 python3 -m pixelexp bench --device cuda --images rgb32 --settings 2 --models pixel_rnn,pixel_cnn \
  --batches 256 --precisions bf16 --no-sample --out "$OUT/bench-rgb"
stage bf16 60 python3 scripts/bf16_check.py "${PIXELEXP_MNIST10K:-../shared/data/mnist-10k}" pixel_cnn train.compile=off
for combo in "on off" "off on"; do
  set -- $combo
  stage "ablate-compile-$1-graphs-$2" 40 $B --models pixel_rnn --batches 256 --precisions fp32 --no-sample \
    --compile "$1" --graphs "$2" --out "$OUT/ablate-compile-$1-graphs-$2"
done
echo "done in $(( $(date +%s) - START ))s" | tee -a "$OUT/log.txt"
# Everything in one archive too, for transports that bring back only a few files.
tar czf /tmp/device-check.tgz -C "$OUT" . && mv /tmp/device-check.tgz "$OUT/"
