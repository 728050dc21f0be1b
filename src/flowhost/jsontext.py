"""Compact JSON text for what flowhost writes often: span attributes and stored JSON columns.

``orjson`` (a dependency of ``pymilvus`` already) encodes the same values as ``json.dumps(...,
ensure_ascii=False, separators=(",", ":"))`` at a fraction of its cost: encoding was the
largest single part of writing a run's trace. Datetimes and dataclasses go to ``default`` as
with ``json``; what orjson refuses (integers beyond 64 bits, lone surrogates) is encoded by
``json`` instead, so the text is the same as before.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final

import orjson

__all__ = ["compact_json"]

_OPTIONS: Final = (
    orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
)


def compact_json(value: Any, default: Callable[[Any], Any] | None = None) -> str:
    """``value`` as one line of JSON, UTF-8 kept as is (not \\u-escaped)."""
    try:
        return orjson.dumps(value, default=default, option=_OPTIONS).decode()
    except (orjson.JSONEncodeError, TypeError):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=default)
