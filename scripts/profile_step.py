"""Where a training step's time goes: python scripts/profile_step.py [MODEL] [BATCH] [IMPL]

Profiles a few training steps of MODEL (rnn_vs_cnn setting [1], 28x28 binary; default
pixel_rnn, batch 256, model.impl fast) on the fast paths except CUDA graphs (a replayed
graph hides its kernels from the profiler), after warm-up, and prints the operations
and kernels that take the most device time (CUDA) or CPU time (CPU).
"""

import sys

import torch
from torch.profiler import ProfilerActivity, profile

from pixelexp.tools.bench import Case, Trainable, settings

model = sys.argv[1] if len(sys.argv) > 1 else "pixel_rnn"
batch = int(sys.argv[2]) if len(sys.argv) > 2 else 256
impl = sys.argv[3] if len(sys.argv) > 3 else "fast"
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
t = Trainable(Case(model, 1, "28x28 gray", batch, "fp32"), settings()[1], device, impl, "auto", graphs="off")
for _ in range(3):
    t.train_step()
cuda = device.type == "cuda"
with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
    for _ in range(2):
        t.train_step()
    if cuda:
        torch.cuda.synchronize()
key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
print(f"{model} batch {batch} impl {impl} on {device} ({t.paths.describe()}): 2 steps")
print(prof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=60))
