"""Fast training paths, each a switch with a default that suits the device:

    train.precision      auto | fp32 | bf16   auto: bf16 autocast on a CUDA device that has it, else fp32
    train.compile        auto | on | off      auto: on for CUDA, off on CPUs (compiling costs minutes there)
    train.channels_last  auto | on | off      auto: on for CUDA (faster convolutions)
    model.impl           fast | plain         the recurrent layers' fused scan, or the plain loop

Compilation covers the whole network for the convolutional models; for the recurrent
ones it fuses the gate math of one step (the loops over rows / diagonals stay in
Python, which keeps compile times short). Where compilation fails, training goes on
eager with a warning. The plain path (fp32, eager, contiguous, model.impl=plain) is the
reference the fast one is tested and benchmarked against.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass(frozen=True)
class FastPaths:
    bf16: bool = False
    compile: bool = False
    channels_last: bool = False

    def describe(self) -> str:
        on = [n for n, v in (("bf16", self.bf16), ("compile", self.compile), ("channels_last", self.channels_last))
              if v]
        return ", ".join(on) or "fp32 eager"


PLAIN = FastPaths()


def resolve(precision: str, compile: str, channels_last: str, device: torch.device) -> FastPaths:
    cuda = device.type == "cuda"
    bf16_ok = cuda and torch.cuda.is_bf16_supported()
    bf16 = precision == "bf16" or (precision == "auto" and bf16_ok)
    return FastPaths(bf16=bf16, compile=compile == "on" or (compile == "auto" and cuda),
                     channels_last=channels_last == "on" or (channels_last == "auto" and cuda))


def autocast(paths: FastPaths, device: torch.device):
    """Where the forward pass runs in bf16 (losses and softmaxes stay fp32: autocast's lists)."""
    if not paths.bf16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def apply(model: nn.Module, net: nn.Module, paths: FastPaths, warn=None):
    """-> the module to call in training: `net` (the model, or DDP of it) made channels-last
    and compiled as the paths ask. The model's parameters are shared, not copied."""
    warn = warn or (lambda msg: print(msg, file=sys.stderr))
    if paths.channels_last:
        model.to(memory_format=torch.channels_last)
    if not paths.compile:
        return net
    recurrent = [m for m in model.modules() if hasattr(type(m), "cell")]
    if not recurrent:
        return _Fallback(torch.compile(net), net, warn)
    cells = {}  # one compiled cell per layer class, shared by its layers (and one warning)
    for m in recurrent:
        eager = type(m).cell
        if type(m) not in cells:
            cells[type(m)] = _Fallback(torch.compile(eager, dynamic=False), eager, warn)
        m.cell = cells[type(m)]
    return net


class _Fallback:
    """Calls the compiled function; if compiling or running it fails, warns once and
    calls the eager one from then on."""

    def __init__(self, compiled, eager, warn):
        self.compiled, self.eager, self.warn, self.failed = compiled, eager, warn, False

    def __call__(self, *args, **kwargs):
        if not self.failed:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - any compiler failure: fall back, keep training
                self.failed = True
                self.warn(f"warning: torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
                          f"training continues eager (set train.compile=off to skip the attempt)")
        return self.eager(*args, **kwargs)

    def __getattr__(self, name):  # .train(), .parameters(), ... of the eager module
        return getattr(self.__dict__["eager"], name)


__all__ = ["FastPaths", "PLAIN", "resolve", "autocast", "apply"]
