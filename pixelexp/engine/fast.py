"""Fast training paths, each a switch with a default that suits the device:

    train.precision      auto | fp32 | bf16   auto: bf16 autocast on a CUDA device that has it, else fp32
                                              (training only: evaluation is always fp32)
    train.compile        auto | on | off      auto: on for CUDA, off on CPUs (whole-network compiles
                                              cost minutes there; `on` pays off for PixelRNN runs)
    train.channels_last  auto | on | off      auto: on for CUDA (faster convolutions)
    train.cuda_graphs    auto | on | off      auto: on for CUDA in a single process: forward and
                                              backward of a full batch replayed as one CUDA graph
                                              (the recurrent models launch thousands of small
                                              kernels per step; a graph launches them at once),
                                              and so are the evaluation's full batches and
                                              each epoch's sample grid (`SamplerGraphs`)
    model.impl           fast | plain | triton  the recurrent layers' fast scans, the plain loops, or
                                              (Diagonal BiLSTM, CUDA) the scan as Triton kernels

Compilation covers the whole network for the convolutional models; for the recurrent
ones (`model.recurrent_layers()`) it compiles the step functions their scans are handed
(`pixelexp.nn.kernels.steps`: the Row LSTM's `RowStep`, one row's state convolution and
gate math; the Diagonal BiLSTM's `ScanCells`, the forward and backward elementwise
functions of its hand-written scan, one kernel each), each function once, and gives
them to the layers with `use_kernels`; the loops over rows / diagonals stay in Python,
which keeps compile times short. Where the compiler fails (an error of torch._dynamo or
torch._inductor: `pixelexp.engine.compiled`), training goes on eager with a warning;
any other error (out of memory, a shape bug) is raised as it is. Where capturing a CUDA
graph fails, that step runs eager with a warning; the captured graphs live in the step
objects (`GradStep`, `EvalStep`) and in the `SamplerGraphs` their caller keeps. The plain path (fp32, eager, contiguous,
model.impl=plain) is the reference the fast one is tested and benchmarked against.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from pixelexp.console import log
from pixelexp.engine.compiled import Fallback, allow_recompiles, compiler_errors, eager_only
from pixelexp.errors import cause
from pixelexp.models.base import AutoregressiveModel, Draws


@dataclass(frozen=True)
class FastPaths:
    bf16: bool = False
    compile: bool = False
    channels_last: bool = False
    graphs: bool = False

    def describe(self) -> str:
        on = [n for n, v in (("bf16", self.bf16), ("compile", self.compile), ("channels_last", self.channels_last),
                             ("cuda_graphs", self.graphs)) if v]
        return ", ".join(on) or "fp32 eager"


PLAIN = FastPaths()


def resolve(precision: str, compile: str, channels_last: str, device: torch.device,
            cuda_graphs: str = "off", distributed: bool = False) -> FastPaths:
    cuda = device.type == "cuda"
    bf16_ok = cuda and torch.cuda.is_bf16_supported()
    bf16 = precision == "bf16" or (precision == "auto" and bf16_ok)
    # CUDA graphs need a CUDA device; with DDP its gradient hooks would have to be captured too.
    graphs = cuda and not distributed and cuda_graphs in ("on", "auto")
    return FastPaths(bf16=bf16, compile=compile == "on" or (compile == "auto" and cuda),
                     channels_last=channels_last == "on" or (channels_last == "auto" and cuda), graphs=graphs)


def autocast(paths: FastPaths, device: torch.device, cache: bool = True):
    """Where the forward pass runs in bf16 (losses and softmaxes stay fp32: autocast's lists).
    Inside a CUDA graph capture the cast-weight cache must be off (cache=False)."""
    if not paths.bf16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=cache)


def on_side_stream(device: torch.device, fn) -> None:
    """Run fn on a side CUDA stream, ordered after and before the current one: warm-ups
    before a graph capture must not run on the stream being captured later."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream(device).wait_stream(side)


class _GraphedStep:
    """A per-batch function (x, labels or None, *args) -> a tensor, which with
    `paths.graphs` runs full batches (`batch_size` images; without it, the first shape
    seen) as a CUDA graph: captured on the first full batch (after three warm-up passes
    on a side stream, which also compile), then replayed with the batch copied into its
    static input. Other shapes (the last, smaller batch) run eagerly. If capturing
    fails, a warning says so and every batch runs eagerly. Subclasses give `eager`,
    what it computes."""

    what = "a step"

    def __init__(self, model: nn.Module, paths: FastPaths, device: torch.device, *, batch_size: int | None = None):
        self.model, self.paths, self.device, self.batch_size = model, paths, device, batch_size
        self.graph = None
        self.key = None  # (x shape, labels?, args) of the captured batch
        self.failed = not paths.graphs

    def eager(self, x: torch.Tensor, y: torch.Tensor | None, *args, cache: bool = True) -> torch.Tensor:
        raise NotImplementedError

    def before(self) -> None:
        """Before each eager run, warm-up and capture."""

    def after_replay(self) -> None:
        """After each replay."""

    def __call__(self, x: torch.Tensor, y: torch.Tensor | None, *args) -> torch.Tensor:
        key = (tuple(x.shape), y is not None, *args)
        if not self.failed and self.graph is None and self.batch_size in (None, len(x)):
            self._capture(x, y, args, key)
        if self.graph is None or key != self.key:
            self.before()
            return self.eager(x, y, *args)
        self.static_x.copy_(x)
        if y is not None:
            self.static_y.copy_(y)
        self.graph.replay()
        self.after_replay()
        return self.static_out

    def _capture(self, x, y, args, key) -> None:
        self.static_x = x.clone()
        self.static_y = None if y is None else y.clone()
        for _ in range(3):  # warm-up: compile, autotune, fill the allocator (its errors are the step's own)
            self.before()
            on_side_stream(self.device, lambda: self.eager(self.static_x, self.static_y, *args, cache=False))
        self.before()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.static_out = self.eager(self.static_x, self.static_y, *args, cache=False)
        except RuntimeError as e:
            if not capture_failure(e):
                raise
            self.failed = True
            self.before()
            log.warning(f"CUDA graph capture of {self.what} failed ({cause(e)}); it runs without graphs "
                        "(set train.cuda_graphs=off to skip the attempt)")
            return
        self.captured()
        self.graph, self.key = graph, key

    def captured(self) -> None:
        """Right after a successful capture."""


def capture_failure(e: RuntimeError) -> bool:
    """Whether an error raised while capturing a CUDA graph means "this cannot be
    captured" (after which the step runs eager): what CUDA and the graph machinery raise
    for work a capture does not allow (a host sync, an uncapturable kernel or stream) is
    a RuntimeError (torch.AcceleratorError among them). Out of memory is not: it is
    raised as it is, also where ending the capture raised another error after it."""
    seen: list[BaseException] = []
    while e is not None and not any(e is s for s in seen):
        if isinstance(e, torch.OutOfMemoryError):
            return False
        seen.append(e)
        e = e.__cause__ or e.__context__
    return True


class GradStep(_GraphedStep):
    """Forward and backward of one training batch: (x, labels or None, scale) -> the
    batch's nats per image (b,), with d(scale * sum of nats)/d(parameter) in each .grad.
    `net` is what is called (the model, or its DDP / compiled wrapper). The graph's
    gradient buffers are bound to the parameters' .grad again on every replay, so
    zero_grad(set_to_none) between steps is harmless."""

    what = "the training step"

    def __init__(self, net: nn.Module, model: nn.Module, paths: FastPaths, device: torch.device, *,
                 batch_size: int | None = None):
        super().__init__(model, paths, device, batch_size=batch_size)
        self.net = net

    def eager(self, x, y, scale: float, cache: bool = True) -> torch.Tensor:
        with autocast(self.paths, self.device, cache):
            nats = -self.net(x, y).float().sum(dim=(1, 2, 3))  # (b,) nats per image
        (nats.sum() * scale).backward()
        return nats.detach()

    def before(self) -> None:
        self.model.zero_grad(set_to_none=True)  # the graph allocates the .grad it writes

    def captured(self) -> None:
        self.params = [p for p in self.model.parameters() if p.grad is not None]
        self.grads = [p.grad for p in self.params]

    def after_replay(self) -> None:
        for p, g in zip(self.params, self.grads):
            p.grad = g


class EvalStep(_GraphedStep):
    """Nats per image of one batch, without gradients: (x, labels or None) -> (b,),
    always in fp32: training may run in bf16, but every NLL that is logged, reported or
    compared is computed in full precision (bf16 moves test bits/dim in the third
    decimal). The recurrent models' forward passes are thousands of small kernels whose
    launches set the evaluation's speed on a GPU; replayed as a graph they cost what
    their arithmetic costs. The caller puts the model in eval mode."""

    what = "the evaluation step"

    @torch.no_grad()
    def eager(self, x, y, cache: bool = True) -> torch.Tensor:
        return -self.model.log_prob(x, y).float().sum(dim=(1, 2, 3))


def apply(model: AutoregressiveModel, net: nn.Module, paths: FastPaths) -> nn.Module | Fallback:
    """-> the module to call in training: `net` (the model, or DDP of it) made channels-last
    and compiled as the paths ask. The model's parameters are shared, not copied. For a
    recurrent model `net` itself is returned, and its recurrent layers get compiled step
    functions (each distinct function compiled once, shared by the layers that run it);
    for the others, `net` compiled whole (a `Fallback`). Applied again, it compiles the
    eager functions again."""
    if paths.channels_last:
        model.to(memory_format=torch.channels_last)
    if not paths.compile:
        return net
    allow_recompiles(64)
    layers = model.recurrent_layers()
    if not layers:
        return Fallback(torch.compile(net), net)
    compiled: dict[Callable, Fallback] = {}

    def compile_(fn: Callable) -> Fallback:
        fn = fn.eager if isinstance(fn, Fallback) else fn
        if fn not in compiled:
            compiled[fn] = Fallback(torch.compile(fn, dynamic=False), fn)
        return compiled[fn]
    for layer in layers:
        layer.use_kernels(layer.kernels.map(compile_))
    return net


# ---------------------------------------------------------------- sampling


@dataclass
class _SamplerGraph:
    graph: torch.cuda.CUDAGraph | None = None  # None: capturing failed, sampling stays eager
    u: torch.Tensor | None = None  # the static uniform numbers (steps, n)
    labels: torch.Tensor | None = None
    out: torch.Tensor | None = None


class SamplerGraphs:
    """The CUDA graphs of `sample` for one model: one per (n, conditional), captured on
    its first use and replayed after. Its owner (a trainer, for its run) passes it to
    every `sample` call; dropping it frees the graphs and their memory."""

    def __init__(self):
        self.model: nn.Module | None = None
        self.entries: dict[tuple[int, bool], _SamplerGraph] = {}

    def get(self, model: nn.Module, key: tuple[int, bool]) -> _SamplerGraph | None:
        if self.model is not None and self.model is not model:
            raise ValueError(f"these SamplerGraphs replay another {type(self.model).__name__}: "
                             "keep one SamplerGraphs per model")
        self.model = model
        return self.entries.get(key)


@torch.no_grad()
def sample(model: AutoregressiveModel, n: int | None = None, generator: torch.Generator | None = None,
           device: torch.device | str | None = None, labels: torch.Tensor | None = None,
           graphs: SamplerGraphs | None = None) -> torch.Tensor:
    """model.sample(...) -- on a CUDA device, with `graphs`, replayed as a CUDA graph kept
    in it (None, or a CPU device: eager).

    A cached sampler launches tens of small kernels per subpixel; the launches, not the
    arithmetic, set its speed on a GPU. As its randomness is one tensor of uniform
    numbers drawn up front (`models.base.Draws`), the whole run can be captured once
    per (n, conditional) and replayed with fresh numbers: the images are those the
    eager sampler draws from the same generator. The first call (a warm-up run and the
    capture) costs about two eager runs; later ones (each epoch's sample grid) only a
    replay. If capturing fails, a warning says so and sampling stays eager.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if labels is not None:
        labels = labels.to(device).long()
        n = len(labels) if n is None else n
    if graphs is None or device.type != "cuda":
        return model.sample(n, generator=generator, device=device, labels=labels)
    u = torch.rand(model.sample_draws(), n, generator=generator, device=device)  # what Draws.of draws
    key = (n, labels is not None)
    entry = graphs.get(model, key)
    if entry is None:
        entry = graphs.entries[key] = _capture_sampler(model, u, labels, device)
    if entry.graph is None:
        return model.sample(n, generator=Draws(u), device=device, labels=labels)
    entry.u.copy_(u)
    if labels is not None:
        entry.labels.copy_(labels)
    entry.graph.replay()
    return entry.out.clone()


def _capture_sampler(model: AutoregressiveModel, u: torch.Tensor, labels: torch.Tensor | None,
                     device: torch.device) -> _SamplerGraph:
    entry = _SamplerGraph(u=u.clone(), labels=None if labels is None else labels.clone())
    n = u.shape[1]
    # Warm-up: lazy initializations happen outside the capture (its errors are the sampler's own).
    on_side_stream(device, lambda: model.sample(n, generator=Draws(entry.u), device=device, labels=entry.labels))
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            entry.out = model.sample(n, generator=Draws(entry.u), device=device, labels=entry.labels)
    except RuntimeError as e:
        if not capture_failure(e):
            raise
        log.warning(f"CUDA graph capture of {type(model).__name__}.sample failed ({cause(e)}); "
                    "sampling stays eager")
        return entry
    entry.graph = graph
    return entry


__all__ = ["FastPaths", "PLAIN", "resolve", "autocast", "apply", "eager_only", "Fallback", "compiler_errors",
           "GradStep", "EvalStep", "SamplerGraphs", "sample"]
