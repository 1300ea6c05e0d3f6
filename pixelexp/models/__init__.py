"""Model registry: `build_model(name, image_shape=(C, H, W), levels=L, **hparams)`.

Every model returns `log_prob(x)` (B, C, H, W) in nats and `sample(n)`. Every model
can be built on the meta device (`with torch.device("meta"): build_model(...)`), which
allocates nothing: build_model counts a model's weights that way before it allocates
them, and train.check_fits estimates a whole run's memory from it (pixelexp.memory).
"""

from __future__ import annotations

import inspect

import torch

from pixelexp import memory
from pixelexp.errors import ConfigError
from pixelexp.models.base import AutoregressiveModel
from pixelexp.models.diagonal_bilstm import DiagonalBiLSTMPixelRNN
from pixelexp.models.gated_pixel_cnn import GatedPixelCNN
from pixelexp.models.multiscale_pixel_rnn import MultiScalePixelRNN
from pixelexp.models.pixel_cnn import PixelCNN
from pixelexp.models.row_lstm import RowLSTMPixelRNN
from pixelexp.nn.kernels.steps import RecurrentLayer

MODELS: dict[str, type[AutoregressiveModel]] = {
    "pixel_cnn": PixelCNN,
    "gated_pixel_cnn": GatedPixelCNN,
    "row_lstm": RowLSTMPixelRNN,
    "diagonal_bilstm": DiagonalBiLSTMPixelRNN,
    "pixel_rnn": DiagonalBiLSTMPixelRNN,  # the core's name for the Diagonal BiLSTM
    "multiscale_pixel_rnn": MultiScalePixelRNN,
}
ALIASES = {"pixel_rnn": "diagonal_bilstm"}


def build_model(name: str, image_shape: tuple[int, int, int], levels: int, **hparams) -> AutoregressiveModel:
    if name not in MODELS:
        raise ConfigError(f"model.name={name!r} is not a known model; choose one of: {', '.join(MODELS)}")
    cls = MODELS[name]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "image_shape", "levels"}
    unknown = set(hparams) - accepted
    if unknown:
        raise ConfigError(f"model {name!r} takes no setting {sorted(unknown)[0]!r}; "
                          f"it takes: {', '.join(sorted(accepted))}")
    building_on_cpu = torch.empty(0).device.type == "cpu"  # not under `with torch.device("meta")`
    if building_on_cpu:
        _check_buildable(name, cls, image_shape, levels, hparams)
    try:
        return cls(image_shape, levels, **hparams)
    except (MemoryError, RuntimeError) as e:
        if not memory.is_out_of_memory(e):
            raise  # a bug, not a size: keep its traceback
        raise ConfigError(_too_big(name, hparams, _count_on_meta(cls, image_shape, levels, hparams),
                                   memory.available_memory("cpu"))) from None


def _count_on_meta(cls, image_shape, levels: int, hparams: dict) -> int:
    """The model's parameters, counted on the meta device: no memory taken."""
    with torch.device("meta"):
        return count_parameters(cls(image_shape, levels, **hparams))


def _check_buildable(name: str, cls, image_shape, levels: int, hparams: dict) -> None:
    """A ConfigError, before any allocation, when the weights alone (4 bytes a parameter)
    exceed the memory free here: building would fail or drive the machine into swap."""
    free = memory.available_memory("cpu")
    if free is None:
        return
    n = _count_on_meta(cls, image_shape, levels, hparams)
    if 4 * n > free:
        raise ConfigError(_too_big(name, hparams, n, free))


def _too_big(name: str, hparams: dict, n: int, free: int | None) -> str:
    """The one line for a model whose weights alone cannot be allocated."""
    sizes = ", ".join(f"model.{k}={hparams[k]}" for k in ("hidden_dims", "recurrent_length") if k in hparams)
    there = f" ({free / 1e9:.1f} GB is available on cpu)" if free is not None else ""
    return (f"model.name={name} with {sizes} does not fit in memory: its {memory.format_count(n)} parameters need "
            f"{4 * n / 1e9:.1f} GB just to be built{there}; lower model.hidden_dims or model.recurrent_length")


IMPLS = ("fast", "plain", "triton")


def set_impl(model, impl: str):
    """Switch every recurrent layer (`RecurrentLayer`) of a model or module between its
    fast scan, the plain reference loop (nn/kernels/plain.py) and, for the Diagonal
    BiLSTM, the Triton kernels (nn/kernels/triton_scan.py): the same parameters, the same
    function. Returns the model."""
    if impl not in IMPLS:
        raise ConfigError(f"model.impl={impl!r}: choose one of {', '.join(IMPLS)}")
    for m in model.modules():
        if isinstance(m, RecurrentLayer):
            m.impl = impl
    return model


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["MODELS", "ALIASES", "IMPLS", "build_model", "set_impl", "count_parameters", "AutoregressiveModel"]
