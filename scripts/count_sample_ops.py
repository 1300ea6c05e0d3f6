"""Tensor operations per subpixel of each model's fast sampler: python scripts/count_sample_ops.py [MODEL ...]

Counts the ATen operations that run kernels while `model.sample(4)` draws 28x28 binary
images (rnn_vs_cnn setting [1]), divided by the 784 subpixels. Views, slices and other
metadata-only operations are not counted. The count does not depend on the device, so
it measures on a CPU what bounds GPU sampling, where every operation is a kernel
launch. To count an older version: `git worktree add /tmp/old <commit>` and run this
script with PYTHONPATH=/tmp/old.
"""

import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import pixelexp
from pixelexp.models import build_model
from pixelexp.tools.bench import MODELS, settings

METADATA = {"aten.slice", "aten.view", "aten.select", "aten.t", "aten.permute", "aten.expand", "aten.alias",
            "aten.unsqueeze", "aten._unsafe_view", "aten.as_strided", "aten.transpose", "aten.detach",
            "aten.split", "aten.unbind", "aten.chunk", "aten.split_with_sizes", "aten.squeeze", "aten.lift_fresh"}


class CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += str(func.overloadpacket) not in METADATA
        return func(*args, **(kwargs or {}))


print(f"pixelexp from {pixelexp.__path__[0]}")
for name in sys.argv[1:] or MODELS:
    torch.manual_seed(0)
    model = build_model(name, image_shape=(1, 28, 28), levels=2, **settings()[1])
    with CountOps() as count:
        model.sample(4, generator=torch.Generator().manual_seed(0))
    print(f"{name:<16} {count.n / 784:6.1f} operations per subpixel")
