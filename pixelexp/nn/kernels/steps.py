"""The step functions of the recurrent layers' scans, handed to the layers explicitly.

A recurrent layer (`RecurrentLayer`) runs its recurrence as a Python loop over rows or
diagonals whose body calls a few pure functions, its kernels: one frozen dataclass per
layer kind,

    RowStep(step)                  Row LSTM: one row's state convolution and gate math
    ScanCells(forward, backward)   Diagonal BiLSTM: the elementwise functions of one
                                   diagonal of its hand-written scan, forward and backward

A layer starts with the eager functions; `pixelexp.engine.fast.apply` compiles each of
them once and hands the compiled ones to every layer with `use_kernels` (the loops stay
in Python, which keeps compile times short).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Self

import torch.nn as nn


@dataclass(frozen=True)
class Kernels:
    """A layer's step functions (subclasses name them)."""

    def map(self, f: Callable[[Callable], Callable]) -> Self:
        """The same kernels, each function replaced by f(function) (e.g. compiled)."""
        return dataclasses.replace(self, **{k.name: f(getattr(self, k.name)) for k in dataclasses.fields(self)})


@dataclass(frozen=True)
class RowStep(Kernels):
    step: Callable  # (g_in (B, W, 4h), h, c (B, W, h), w_state (4h, h, k)) -> new (h, c)


@dataclass(frozen=True)
class ScanCells(Kernels):
    forward: Callable  # scan.cell_forward: one diagonal's gates -> its states
    backward: Callable  # scan.cell_backward: their gradients -> the gates' gradients


class RecurrentLayer(nn.Module):
    """A layer whose scan calls its `kernels`, set to the eager ones in `__init__`, and
    which runs its fast scan or the plain reference loop (`impl`, set by
    models.set_impl)."""

    kernels: Kernels
    impl: str = "fast"  # "fast", "plain" (nn/kernels/plain.py) or, Diagonal BiLSTM, "triton"

    def use_kernels(self, kernels: Kernels) -> None:
        """Run `kernels` from now on: of the type the layer started with."""
        if type(kernels) is not type(self.kernels):
            raise TypeError(f"{type(self).__name__} takes {type(self.kernels).__name__}, "
                            f"not {type(kernels).__name__}")
        self.kernels = kernels


__all__ = ["Kernels", "RowStep", "ScanCells", "RecurrentLayer"]
