"""Check and convert request inputs against a flow's declared input types."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import re
from collections.abc import Mapping
from typing import Any

from flowhost.exceptions import InvalidInput
from flowhost.flows.spec import FlowInputSpec

__all__ = ["coerce_inputs"]

_INT = re.compile(r"^\s*[-+]?[0-9]+\s*$")


def _coerce(name: str, spec: FlowInputSpec, value: Any) -> Any:
    t = spec.type
    if spec.is_chat_history:
        if not isinstance(value, list):
            raise InvalidInput(f"input {name!r} must be a list of chat turns", field=name)
        return value
    if t == "string":
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif t == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and _INT.match(value):
            try:
                return int(value)
            except ValueError:  # more digits than int() converts
                pass
    elif t == "double":
        number: float | None = None
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            with contextlib.suppress(ValueError, OverflowError):
                number = float(value)
        if number is not None and math.isfinite(number):
            return number
    elif t == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif t == "list":
        if isinstance(value, list):
            return value
        if isinstance(value, str) and value.strip().startswith("["):
            return json.loads(value)
    elif t == "object":
        if isinstance(value, dict):
            return value
        if isinstance(value, str) and value.strip().startswith("{"):
            return json.loads(value)
    raise InvalidInput(
        f"input {name!r} must be of type {t}, got {type(value).__name__}", field=name
    )


def coerce_inputs(specs: Mapping[str, FlowInputSpec], given: Mapping[str, Any]) -> dict[str, Any]:
    """Return the flow's inputs: given values converted, defaults filled, unknown keys dropped.

    Raises InvalidInput naming the field for a missing required input or a wrong type.
    """
    out: dict[str, Any] = {}
    for name, spec in specs.items():
        if name in given and given[name] is not None:
            try:
                out[name] = _coerce(name, spec, given[name])
            except (ValueError, RecursionError) as exc:  # json.loads of a list/object string
                raise InvalidInput(f"input {name!r} is not valid JSON: {exc}", field=name) from None
        elif spec.default is not None:
            out[name] = _fresh(spec.default)  # a node may mutate it: never share it
        elif spec.is_chat_history:
            out[name] = []
        elif spec.optional:
            out[name] = None
        else:
            raise InvalidInput(f"missing required input {name!r}", field=name)
    return out


def _fresh(value: Any) -> Any:
    """A copy of a default that a node may mutate. ``copy.deepcopy`` of the usual ``[]`` costs
    a few µs a request: scalars are immutable, and empty containers are simply made anew."""
    kind = type(value)
    if kind is str or kind is int or kind is float or kind is bool:
        return value
    if (kind is list or kind is dict) and not value:
        return kind()
    return copy.deepcopy(value)
