"""Does bf16 change what a short training reaches?
python scripts/bf16_check.py ROOT [MODEL ...] [key=value ...]

Trains each model (rnn_vs_cnn setting [1] sizes, real MNIST digits from ROOT, 3 epochs,
batch 256) twice on the same seed: fp32 and bf16 autocast, other fast paths as `auto`,
and prints both test bits/dim and their difference (the target: under 0.01).
"""

import sys
import time

from pixelexp.config import load_config
from pixelexp.runs.train import run

root = sys.argv[1]
models = [a for a in sys.argv[2:] if "=" not in a] or ["pixel_cnn"]
extra = [a for a in sys.argv[2:] if "=" in a]
for model in models:
    got = {}
    for precision in ("fp32", "bf16"):
        cfg = load_config(None, [f"model.name={model}", f"data.root={root}", "data.val_size=1000", "train.epochs=3",
                                 "train.batch_size=256", "model.hidden_dims=16", "model.recurrent_length=7",
                                 "model.out_hidden_dims=32", "model.out_recurrent_length=2", "track.sample_count=0",
                                 f"train.precision={precision}", *extra])
        t = time.perf_counter()
        got[precision] = run(cfg, None, progress=False).metrics["test_bpd"]
        print(f"{model} {precision}: test bpd {got[precision]:.5f} ({time.perf_counter() - t:.0f} s)", flush=True)
    print(f"{model}: |bf16 - fp32| = {abs(got['bf16'] - got['fp32']):.5f} bits/dim", flush=True)
