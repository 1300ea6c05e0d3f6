"""Building blocks: masked convolutions, shifts and skews, the Diagonal BiLSTM."""

from pixelexp.nn.lstm import DiagonalBiLSTM
from pixelexp.nn.masked import MaskedConv2d, causal_mask, channel_groups
from pixelexp.nn.shifts import down_shift, right_shift, skew, unskew

__all__ = ["DiagonalBiLSTM", "MaskedConv2d", "causal_mask", "channel_groups",
           "down_shift", "right_shift", "skew", "unskew"]
