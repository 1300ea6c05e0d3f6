"""The row protocol of the cached samplers (`pixelexp.models.rowwise`).

A layer that can be sampled row by row keeps what it needs of the rows above and of
the current row in a cache of its own, and is driven through four calls:

    cache = layer.new_cache(n, W, like)    once per sampling run
    for each row i:
        layer.start_row(cache, cond_row)   what depends only on finished rows, for all of row i
        for each subpixel (i, j, c):
            layer.step(cache, j, dest)     the layer at (i, j) only -> dest (n, k)
        layer.finish_row(cache, cond_row)  row i is drawn: it becomes the row above

Every cache holds the layer's inputs along the current row, `x_row` (n, pad + W, k),
with `pad` zero columns on the left: the layer below writes its output at (i, j) into
column j + pad (`input_at`), so each step reads its input where it was written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, TypeVar, runtime_checkable

import torch


@dataclass(slots=True)
class RowCache:
    """What every layer's cache has: its inputs along the current row."""

    x_row: torch.Tensor  # (n, pad + W, k)
    pad: int  # zero columns left of the row

    def input_at(self, j: int) -> torch.Tensor:
        """Where the layer's input at column j is kept: (n, k), a view into x_row."""
        return self.x_row[:, j + self.pad]


CacheT = TypeVar("CacheT", bound=RowCache)


@runtime_checkable
class RowCached(Protocol[CacheT]):
    """A layer the cached samplers drive row by row (see the module docstring).

    Shapes: n images, W columns, k the layer's input and output features, K the
    features of a conditioning map (`cond_row`, (n, K, W), or None without one).
    """

    def new_cache(self, n: int, width: int, like: torch.Tensor) -> CacheT:
        """A zeroed cache for n images of `width` columns, in the dtype and device of `like`."""
        ...

    def start_row(self, cache: CacheT, cond_row: torch.Tensor | None = None) -> None:
        """Everything of the new row that only depends on the rows above [and on cond_row]."""
        ...

    def step(self, cache: CacheT, j: int, dest: torch.Tensor) -> None:
        """The layer at column j of the current row, from its inputs kept in cache.x_row up
        to column j (`input_at(j)`) -> dest (n, k). Run again for each channel of an RGB
        pixel, it rewrites the same places."""
        ...

    def finish_row(self, cache: CacheT, cond_row: torch.Tensor | None = None) -> None:
        """The row is drawn: close it (e.g. a right-to-left pass) and keep it as the row above."""
        ...
