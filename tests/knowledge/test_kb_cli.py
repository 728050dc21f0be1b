"""``flowhost kb``: create, add (with progress), list, show, search, delete — in-process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from kbdocs import FIXTURES

from flowhost.knowledge.cli import kb


@pytest.fixture
def invoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    for var in ("FLOWHOST_DATABASE_URL", "FLOWHOST_KB_URI", "FLOWHOST_KB_BACKEND"):
        monkeypatch.delenv(var, raising=False)
    runner = CliRunner()
    base = ["--data-dir", str(tmp_path / "data"), "--flows", str(tmp_path), "--service-name", "cli"]

    def run(*args: str, code: int = 0) -> str:
        result = runner.invoke(kb, [*base, *args], catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result.stdout

    return run


def test_kb_commands(invoke) -> None:  # type: ignore[no-untyped-def]
    created = json.loads(invoke("create", "kettle", "--id", "kettle"))
    assert created["pipeline_id"] == "kettle"
    added = json.loads(
        invoke(
            "add",
            "kettle",
            str(FIXTURES / "guide_zh.md"),
            str(FIXTURES / "guide_en.md"),
            "--tag",
            "manual",
            "--meta",
            "v=1",
        )
    )
    assert [a["status"] for a in added] == ["completed", "completed"]
    assert "kettle\tunstructured\t2 docs" in invoke("list")
    assert "completed" in invoke("list", "kettle")
    hits = json.loads(invoke("search", "kettle", "除垢", "--top-k", "1", "--meta", "v=1"))
    assert hits[0]["doc_name"] == "guide_zh.md"
    assert json.loads(invoke("search", "kettle", "除垢", "--tag", "nope")) == []
    file_id = added[0]["file_id"]
    assert json.loads(invoke("show", file_id))["status"] == "completed"
    assert json.loads(invoke("show", added[0]["job_id"]))["status"] == "completed"
    bad = json.loads(invoke("add", "kettle", str(FIXTURES / "corrupt.pdf"), code=1))
    assert bad[0]["status"] == "failed"
    assert "PDF" in bad[0]["error"]
    invoke("delete", file_id, "--yes")
    invoke("delete", "kettle", "--yes")
    assert invoke("list") == ""
    result = CliRunner().invoke(kb, ["--data-dir", "/nonexistent/x", "show", "missing"])
    assert result.exit_code != 0
