"""``flowhost --config FILE`` (or FLOWHOST_CONFIG): settings from a TOML file, below flags and
the environment."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from flowhost.cli import main
from flowhost.config import ConfigFileError, Settings

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "flows"


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "flowhost.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_flags_beat_the_environment_which_beats_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _toml(tmp_path, 'port = 8123\nmax_body_bytes = 2048\ntoken = "from-file"\n')
    monkeypatch.setenv("FLOWHOST_PORT", "9000")
    settings = Settings.load(path, max_body_bytes=4096)
    assert settings.port == 9000  # env over file
    assert settings.max_body_bytes == 4096  # flag over file
    assert settings.token is not None
    assert settings.token.get_secret_value() == "from-file"
    assert Settings().token is None  # the file is read only by load


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("potr = 1\n", "names unknown settings: potr (keys are the FLOWHOST_* names"),
        ("port = \n", "is not valid TOML"),
    ],
)
def test_a_bad_file_is_refused_naming_the_problem(tmp_path: Path, text: str, says: str) -> None:
    path = _toml(tmp_path, text)
    with pytest.raises(ConfigFileError, match="config file"):
        Settings.load(path)
    result = CliRunner().invoke(main, ["--config", str(path), "serve", str(EXAMPLES / "echo")])
    assert result.exit_code == 2
    assert says in result.stderr


def test_a_byte_order_mark_is_no_error(tmp_path: Path) -> None:
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbfport = 8124\n")
    assert Settings.load(path).port == 8124


def test_a_missing_file_and_a_bad_value_are_usage_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(main, ["--config", str(tmp_path / "none.toml"), "serve"])
    assert missing.exit_code == 2
    assert "cannot read the config file" in missing.stderr
    path = _toml(tmp_path, 'node_timeout = -1\ntoken = "tok-do-not-print-1234"\n')
    bad = runner.invoke(main, ["--config", str(path), "serve", str(EXAMPLES / "echo")])
    assert bad.exit_code == 2
    assert f"node_timeout (--node-timeout, FLOWHOST_NODE_TIMEOUT, node_timeout in {path})" in (
        bad.stderr
    )
    assert "tok-do-not-print-1234" not in bad.output + bad.stderr


def test_a_server_takes_its_settings_from_the_file(
    tmp_path: Path, server_factory: Callable[..., Any]
) -> None:
    """FLOWHOST_CONFIG, as a container would set it: token and default app from the file."""
    path = _toml(tmp_path, 'token = "file-token"\ndefault_app = "echo"\nmax_body_bytes = 1024\n')
    server = server_factory(EXAMPLES, env={"FLOWHOST_CONFIG": str(path)})
    assert httpx.post(f"{server.url}/", json={"question": "hi"}).status_code == 401
    auth = {"Authorization": "Bearer file-token"}
    r = httpx.post(f"{server.url}/", json={"question": "hi"}, headers=auth)
    assert r.status_code == 200, r.text
    assert r.json()["answer"].endswith("hi")
    big = httpx.post(f"{server.url}/", json={"question": "x" * 2000}, headers=auth)
    assert big.status_code == 413


def test_the_readme_example_is_a_valid_config_file(tmp_path: Path) -> None:
    readme = (EXAMPLES.parent.parent / "README.md").read_text(encoding="utf-8")
    block = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    settings = Settings.load(_toml(tmp_path, block))
    assert settings.port == 8080
    assert settings.default_app == "echo"
    assert settings.database_url is not None
    assert settings.database_url.get_secret_value().startswith("mysql+asyncmy://")
