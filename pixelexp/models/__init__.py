"""Model registry: `build_model(name, image_shape=(C, H, W), levels=L, **hparams)`.

Every model returns `log_prob(x)` (B, C, H, W) in nats and `sample(n)`.
"""

from __future__ import annotations

import inspect

from pixelexp.errors import ConfigError
from pixelexp.models.base import AutoregressiveModel
from pixelexp.models.pixel_cnn import PixelCNN
from pixelexp.models.pixel_rnn import DiagonalBiLSTMPixelRNN

MODELS: dict[str, type[AutoregressiveModel]] = {
    "pixel_cnn": PixelCNN,
    "pixel_rnn": DiagonalBiLSTMPixelRNN,
}


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


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["MODELS", "build_model", "count_parameters", "AutoregressiveModel"]
