"""A server that cannot start says why in one line and exits with uvicorn's start-up failure
status (3), with one process or several: a process manager must see the failure."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from flowhost.config import Settings
from flowhost.server.run import settings_json

ECHO = Path(__file__).resolve().parents[2] / "examples" / "flows" / "echo"


def _closed_port() -> int:
    with socket.socket() as s:  # bound, never listening: connecting is refused at once
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def failed_start(flows: Path, env: dict[str, str], *args: str) -> str:
    """Run ``flowhost serve flows *args`` with ``env`` (FLOWHOST_*: only these); it must exit
    with status 3 and no traceback. Returns what it printed."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWHOST_")} | env
    out = subprocess.run(
        [sys.executable, "-m", "flowhost", "serve", str(flows), "--port", "0", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=90,
        check=False,
    )
    text = out.stdout + out.stderr
    assert out.returncode == 3, text
    assert "Traceback" not in text
    return text


@pytest.mark.parametrize("workers", ["1", "2"])
def test_an_unreachable_database_fails_the_start_in_one_line(tmp_path: Path, workers: str) -> None:
    url = f"postgresql+asyncpg://flowhost:pw-s3cret@127.0.0.1:{_closed_port()}/test"
    env = {"FLOWHOST_DATA_DIR": str(tmp_path / "data")}
    text = failed_start(ECHO, env, "--workers", workers, "--database-url", url)
    assert "ERROR:    cannot start: cannot open the database: " in text
    assert "pw-s3cret" not in text


def test_an_unreachable_milvus_fails_the_start_in_one_line(tmp_path: Path) -> None:
    env = {
        "FLOWHOST_DATA_DIR": str(tmp_path / "data"),
        "FLOWHOST_KB_BACKEND": "milvus",
        "FLOWHOST_MILVUS_URI": f"http://127.0.0.1:{_closed_port()}",
    }
    text = failed_start(ECHO.parent / "rag", env)  # its retrieval node needs the vector store
    assert "ERROR:    cannot start: cannot open the vector store (milvus): " in text


def test_a_data_dir_that_cannot_be_made_fails_the_start_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    text = failed_start(ECHO, {"FLOWHOST_DATA_DIR": str(tmp_path / "a-file" / "data")})
    assert "cannot create the SQLite folder " in text
    assert "a-file/data: Not a directory" in text


def test_workers_get_every_secret_of_the_settings() -> None:
    settings = Settings(
        token=SecretStr("tok-1234567"),
        database_url=SecretStr("mysql+asyncmy://u:pw@db/x"),
        milvus_token=SecretStr("root:milvus-pw"),
    )
    secrets = [n for n, v in settings if isinstance(v, SecretStr)]
    assert sorted(secrets) == ["database_url", "milvus_token", "token"]
    again = Settings.model_validate_json(settings_json(settings))
    assert again == settings
    assert again.milvus_token is not None
    assert again.milvus_token.get_secret_value() == "root:milvus-pw"
