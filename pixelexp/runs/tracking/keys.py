"""Keys and values as every MLflow store takes them.

Every key and value bound for MLflow passes through these, whichever store takes it:
the SQL stores coerce what they are given, the REST client of a tracking server does
not (an int tag value is a TypeError there), and every store has the same limits.
"""

from __future__ import annotations

import re
from typing import Any

MAX_KEY = 250  # MLflow's limit on a key's length (params, tags, metrics)
MAX_PARAM = 6000  # ... on a param value's length
MAX_TAG = 8000  # ... on a tag value's length
_BAD_KEY_CHARS = re.compile(r"[^\w./\- :]")  # MLflow takes letters, digits, _ - . / space :


def clean_key(key: Any) -> str:
    """A key MLflow accepts in every store: its own characters, at most 250 of them."""
    return _BAD_KEY_CHARS.sub("_", str(key))[:MAX_KEY] or "_"


def clip(value: Any, limit: int) -> str:
    """A value as text of at most `limit` characters ('' for None; '...' ends a cut one)."""
    text = value if isinstance(value, str) else "" if value is None else str(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def clean_params(params: dict[str, Any]) -> dict[str, str]:
    return {clean_key(k): clip(v, MAX_PARAM) for k, v in params.items()}


def clean_tags(tags: dict[str, Any]) -> dict[str, str]:
    return {clean_key(k): clip(v, MAX_TAG) for k, v in tags.items()}


def clean_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Numbers as floats (numpy and torch scalars, bools, ints); NaN and inf stay what they are."""
    return {clean_key(k): float(v) for k, v in metrics.items()}


__all__ = ["MAX_KEY", "MAX_PARAM", "MAX_TAG", "clean_key", "clip", "clean_params", "clean_tags", "clean_metrics"]
