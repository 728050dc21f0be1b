"""Request inputs checked and converted against the flow's declared types."""

from __future__ import annotations

from typing import Any

import pytest

from flowhost.exceptions import InvalidInput
from flowhost.flows.inputs import coerce_inputs
from flowhost.flows.spec import FlowInputSpec


def coerce(type_: str, value: Any) -> Any:
    return coerce_inputs({"x": FlowInputSpec.model_validate({"type": type_})}, {"x": value})["x"]


@pytest.mark.parametrize(
    ("type_", "value", "expected"),
    [
        ("string", "hi", "hi"),
        ("string", 3, "3"),
        ("int", 7, 7),
        ("int", " -12 ", -12),
        ("int", "+5", 5),
        ("double", 2, 2.0),
        ("double", "2.5", 2.5),
        ("bool", True, True),
        ("bool", "False", False),
        ("list", [1, "a"], [1, "a"]),
        ("list", '["a", 2]', ["a", 2]),
        ("object", {"a": 1}, {"a": 1}),
        ("object", '{"a": [1]}', {"a": [1]}),
    ],
)
def test_converts(type_: str, value: Any, expected: Any) -> None:
    result = coerce(type_, value)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    ("type_", "value"),
    [
        ("string", ["a"]),
        ("string", True),
        ("int", "--5"),  # int() would raise ValueError: was a 500
        ("int", "²"),  # str.isdigit() is true, int() raises: was a 500
        ("int", "1" * 5000),  # more digits than int() converts: was a 500
        ("int", 2.5),
        ("int", True),
        ("double", 10**400),  # float() raises OverflowError: was a 500
        ("double", "nan"),  # not JSON-serializable as an output
        ("double", float("inf")),
        ("double", "abc"),
        ("bool", "yes"),
        ("bool", 1),
        ("list", "a,b"),
        ("list", {"a": 1}),
        ("object", [1]),
        ("object", "nope"),
    ],
)
def test_wrong_type_is_invalid_input_naming_the_field(type_: str, value: Any) -> None:
    with pytest.raises(InvalidInput) as info:
        coerce(type_, value)
    assert info.value.field == "x"
    assert info.value.status == 400
    assert "'x'" in info.value.message


@pytest.mark.parametrize("value", ["[1, 2", "[" * 100_000, '{"a": ' + "1" * 5000 + "}"])
def test_bad_json_strings_are_invalid_input(value: str) -> None:
    type_ = "list" if value.startswith("[") else "object"
    with pytest.raises(InvalidInput) as info:
        coerce(type_, value)
    assert info.value.field == "x"
    assert "not valid JSON" in info.value.message


def test_missing_defaults_optional_and_unknown() -> None:
    specs = {
        "q": FlowInputSpec(),
        "n": FlowInputSpec.model_validate({"type": "int", "default": 3}),
        "opt": FlowInputSpec(optional=True),
        "history": FlowInputSpec.model_validate({"type": "list", "is_chat_history": True}),
    }
    assert coerce_inputs(specs, {"q": "x", "extra": 1}) == {
        "q": "x",
        "n": 3,
        "opt": None,
        "history": [],
    }
    with pytest.raises(InvalidInput) as info:
        coerce_inputs(specs, {"n": 1})
    assert (info.value.field, info.value.message) == ("q", "missing required input 'q'")
    with pytest.raises(InvalidInput) as info:
        coerce_inputs(specs, {"q": "x", "history": "not a list"})
    assert info.value.field == "history"


@pytest.mark.parametrize(
    ("kind", "default", "mutate"),
    [
        ("list", [1], lambda v: v.append(2)),
        ("list", [], lambda v: v.append(2)),
        ("object", {}, lambda v: v.update(k=1)),
        ("object", {"a": [1]}, lambda v: v["a"].append(2)),
    ],
)
def test_defaults_are_not_shared_between_runs(kind: str, default: Any, mutate: Any) -> None:
    specs = {"items": FlowInputSpec.model_validate({"type": kind, "default": default})}
    first = coerce_inputs(specs, {})
    mutate(first["items"])  # a node mutating its input
    assert coerce_inputs(specs, {}) == {"items": default}
