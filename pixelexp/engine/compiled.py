"""Compiled functions that fall back to eager where the compiler fails, and only there.

`Fallback` calls a function compiled with torch.compile; where that raises an error of
the compiler stack (`compiler_errors`: torch._dynamo's and torch._inductor's), it warns
once and calls the eager function from then on. Any other error -- out of memory, a
shape bug in the traced code, an interrupt -- is raised as it is: rerunning eagerly
would hide it, or report it as a compiler failure. `eager_only(model)` hands a model's
recurrent layers the eager versions of their compiled step functions for a while
(FLOP counting). `pixelexp.engine.fast.apply` makes the Fallbacks.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable

import torch

from pixelexp.console import log
from pixelexp.errors import cause
from pixelexp.models.base import AutoregressiveModel
from pixelexp.nn.kernels.steps import Kernels


@functools.cache
def compiler_errors() -> tuple[type[Exception], ...]:
    """The errors of the compiler stack, on which a compiled function falls back to eager:
    torch._dynamo's (TorchDynamoException: BackendCompilerFailed and InductorError, which
    wrap what a backend raised, Unsupported, InternalTorchDynamoError, ...) and the
    inductor's own (a C++ compiler that fails or is missing, an operator it cannot
    lower). Looked up by name: a class that this torch lacks is left out."""
    import torch._dynamo.exc as dynamo
    import torch._inductor.exc as inductor
    found = [getattr(module, name, None) for module, names in (
        (dynamo, ("TorchDynamoException", "TritonUnavailableError")),
        (inductor, ("CppCompileError", "InvalidCxxCompiler", "OperatorIssue", "SubgraphLoweringException",
                    "CppWrapperCodegenError")),
    ) for name in names]
    return tuple(c for c in found if isinstance(c, type) and issubclass(c, Exception))


def falls_back(e: Exception) -> bool:
    """Whether a compiler error (`compiler_errors`) means eager should run instead: not
    when it is the traced code's own error found while tracing (TorchRuntimeError, e.g.
    a shape bug: eager would raise it too), nor when what the compiler ran into was
    running out of memory (an error that it wraps, or caused it)."""
    import torch._dynamo.exc as dynamo
    if isinstance(e, getattr(dynamo, "TorchRuntimeError", ())):
        return False
    seen: list[BaseException] = []
    inner: BaseException | None = e
    while inner is not None and not any(inner is s for s in seen):
        if isinstance(inner, torch.OutOfMemoryError):
            return False
        seen.append(inner)
        inner = inner_error(inner) if inner_error(inner) is not inner else inner.__cause__
    return True


def inner_error(e: BaseException) -> BaseException:
    """What a compiler error wraps (BackendCompilerFailed / InductorError: the backend's
    exception), else the error itself."""
    import torch._dynamo.exc as dynamo
    return e.inner_exception if isinstance(e, dynamo.BackendCompilerFailed) else e


class Fallback:
    """A compiled function (or module) and its eager version: calls the compiled one;
    where it raises a compiler error (`compiler_errors`, `falls_back`), warns once and
    calls the eager one from then on. Every other error is raised as it is."""

    def __init__(self, compiled: Callable, eager: Callable):
        self.compiled, self.eager, self.failed = compiled, eager, False

    def __call__(self, *args, **kwargs):
        if not self.failed:
            try:
                return self.compiled(*args, **kwargs)
            except compiler_errors() as e:
                if not falls_back(e):
                    raise
                self.failed = True
                log.warning(f"torch.compile failed ({cause(inner_error(e))}); training continues eager "
                            "(set train.compile=off to skip the attempt)")
        return self.eager(*args, **kwargs)

    def __getattr__(self, name):  # .train(), .parameters(), ... of the eager module
        return getattr(self.__dict__["eager"], name)


@contextlib.contextmanager
def eager_only(model: AutoregressiveModel):
    """Within it, the model's recurrent layers run the eager versions of their compiled
    step functions (e.g. under a dispatch mode such as FlopCounterMode, which compiled
    code would hide); their kernels are restored after. (A whole-network compile is
    `apply`'s return value: call the model itself for eager.)"""
    layers = model.recurrent_layers()
    kept: list[Kernels] = [layer.kernels for layer in layers]
    try:
        for layer, kernels in zip(layers, kept):
            layer.use_kernels(kernels.map(lambda f: f.eager if isinstance(f, Fallback) else f))
        yield
    finally:
        for layer, kernels in zip(layers, kept):
            layer.use_kernels(kernels)


def allow_recompiles(n: int) -> None:
    """Compiled code is specialized per (shape, dtype, grad mode, module instance):
    a run has a handful (training, its last batch, evaluation, the sampler), a benchmark
    many. Past dynamo's default limit (8 per function) a new one would run eagerly."""
    import torch._dynamo.config as dynamo
    for name in ("recompile_limit", "cache_size_limit"):  # the name in newer / older torch
        if hasattr(dynamo, name):
            setattr(dynamo, name, max(getattr(dynamo, name), n))
            return


__all__ = ["Fallback", "compiler_errors", "falls_back", "inner_error", "eager_only", "allow_recompiles"]
