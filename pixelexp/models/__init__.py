"""Model registry: `build_model(name, image_shape=(C, H, W), levels=L, **hparams)`.

Every model returns `log_prob(x)` (B, C, H, W) in nats and `sample(n)`.
"""

from __future__ import annotations

import inspect

from pixelexp.errors import ConfigError
from pixelexp.models.base import AutoregressiveModel
from pixelexp.models.diagonal_bilstm import DiagonalBiLSTMPixelRNN
from pixelexp.models.gated_pixel_cnn import GatedPixelCNN
from pixelexp.models.multiscale_pixel_rnn import MultiScalePixelRNN
from pixelexp.models.pixel_cnn import PixelCNN
from pixelexp.models.row_lstm import RowLSTMPixelRNN

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
    return cls(image_shape, levels, **hparams)


IMPLS = ("fast", "plain", "triton")


def set_impl(model, impl: str):
    """Switch every recurrent layer between its fast scan, the plain reference loop
    (nn/plain.py) and, for the Diagonal BiLSTM, the Triton kernels (nn/triton_scan.py):
    the same parameters, the same function. Returns the model."""
    if impl not in IMPLS:
        raise ConfigError(f"model.impl={impl!r}: choose one of {', '.join(IMPLS)}")
    for m in model.modules():
        if hasattr(type(m), "impl"):
            m.impl = impl
    return model


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["MODELS", "ALIASES", "IMPLS", "build_model", "set_impl", "count_parameters", "AutoregressiveModel"]
