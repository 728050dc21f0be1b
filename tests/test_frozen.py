"""``@frozen`` (``flowhost.frozen``): frozen for the type checker, plain slots at run time."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from mypy import api as mypy_api

from flowhost.engine.events import NodeFinished, RunStarted
from flowhost.frozen import frozen

ROOT = Path(__file__).resolve().parents[1]


@frozen
class Point:
    x: int
    tags: list[str] = dataclasses.field(default_factory=list)


def test_a_frozen_record_is_a_slotted_dataclass_hashed_and_compared_by_its_fields() -> None:
    assert [f.name for f in dataclasses.fields(Point)] == ["x", "tags"]
    assert not hasattr(Point(1), "__dict__")
    assert Point(1) == Point(1)
    assert Point(1) != Point(2)
    started = RunStarted("r", "app", 1.0)
    assert hash(started) == hash(RunStarted("r", "app", 1.0))
    assert {started, RunStarted("r", "app", 1.0)} == {started}
    assert dataclasses.replace(started, timestamp=2.0).timestamp == 2.0
    assert NodeFinished("r", "n", "python", "out", 0.1, 1.0).inputs == {}  # field specifiers


def test_the_type_checker_refuses_an_assignment_to_a_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = tmp_path / "assign.py"
    code.write_text(
        "from flowhost.engine.events import RunStarted\n"
        "from flowhost.store.traces import RunRecord\n"
        "def f(e: RunStarted, r: RunRecord) -> None:\n"
        "    e.run_id = 'x'\n"
        "    r.status = 'failed'\n"
    )
    monkeypatch.chdir(ROOT)  # the project's mypy settings (mypy_path is relative to the cwd)
    out, _, status = mypy_api.run(["--follow-imports=silent", str(code)])
    assert status == 1
    assert 'Property "run_id" defined in "RunStarted" is read-only' in out
    assert 'Property "status" defined in "RunRecord" is read-only' in out
