"""Compact JSON text for what flowhost writes often: span attributes and stored JSON columns.

``orjson`` (a dependency of ``pymilvus`` already) encodes the same values as ``json.dumps(...,
ensure_ascii=False, separators=(",", ":"))`` at a fraction of its cost: encoding was the
largest single part of writing a run's trace. Datetimes and dataclasses go to ``default`` as
with ``json``; what orjson refuses (integers beyond 64 bits, lone surrogates) is encoded by
``json`` instead, so the text is the same as before. ``parse_json`` reads JSON text the same
way round: orjson unless the text holds what only ``json`` reads exactly (integers beyond 64
bits, which orjson turns into floats; lone surrogates; NaN).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable
from typing import Any, Final

import orjson

__all__ = ["compact_json", "lenient_default", "parse_json"]

_OPTIONS: Final = (
    orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
)


def lenient_default(o: Any) -> Any:
    """A ``default`` for values JSON has no type for: pydantic models as their dump, sets and
    tuples as lists, bytes as (lenient) UTF-8 text, anything else as ``str(o)``."""
    if hasattr(o, "model_dump"):
        return o.model_dump()
    if isinstance(o, set | frozenset | tuple):
        return list(o)
    if isinstance(o, bytes):
        return o.decode("utf-8", "replace")
    return str(o)


def compact_json(value: Any, default: Callable[[Any], Any] | None = None) -> str:
    """``value`` as one line of JSON, UTF-8 kept as is (not \\u-escaped)."""
    try:
        return orjson.dumps(value, default=default, option=_OPTIONS).decode()
    except (orjson.JSONEncodeError, TypeError):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=default)


_LONG_NUMBER: Final = re.compile(r"\d{19}")
_LONG_NUMBER_BYTES: Final = re.compile(rb"\d{19}")


def parse_json(text: str | bytes) -> Any:
    """``json.loads(text)``, through orjson where that reads it the same. Raises ValueError
    (``json.JSONDecodeError``) or RecursionError as ``json.loads`` does."""
    long_number = _LONG_NUMBER_BYTES if isinstance(text, bytes) else _LONG_NUMBER
    if not long_number.search(text):  # type: ignore[arg-type]
        with contextlib.suppress(orjson.JSONDecodeError):
            return orjson.loads(text)
    return json.loads(text)
