"""The `flowhost` command: run (outputs, --events, failures) and validate (exit codes, messages)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from flowhost.cli import main
from flowhost.config import Settings

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "flows"
FIXTURES = ROOT / "tests" / "flows_fixtures"


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_run_prints_the_outputs() -> None:
    code, out, err = invoke("run", str(EXAMPLES / "branch"), "--input", "question=is it?")
    assert (code, err) == (0, "")
    assert json.loads(out) == {"answer": "You asked: is it? (2 words)"}


def test_run_events_prints_json_lines() -> None:
    code, out, _ = invoke("run", str(EXAMPLES / "branch"), "-i", "question=it is.", "--events")
    assert code == 0
    events = [json.loads(line) for line in out.splitlines()]
    assert events[0]["kind"] == "RunStarted"
    assert events[0]["app_id"] == "branch"
    assert events[-1]["kind"] == "RunFinished"
    assert events[-1]["outputs"] == {"answer": "You said: it is. (2 words)"}
    assert len({e["run_id"] for e in events}) == 1
    kinds = {(e["kind"], e.get("node")) for e in events}
    assert ("NodeSkipped", "answer_question") in kinds
    assert ("NodeFinished", "join") in kinds


def test_run_lists_and_objects_as_json() -> None:
    code, out, err = invoke(
        "run",
        str(FIXTURES / "served" / "typed"),
        "-i",
        "question=q",
        "-i",
        "count=3",
        "-i",
        'tags=["a", "b"]',
        "-i",
        'meta={"k": 1}',
    )
    assert code == 0, err
    answer = json.loads(out)["answer"]
    assert answer["count"] == ["int", 3]
    assert answer["tags"] == ["list", ["a", "b"]]
    assert answer["meta"] == ["dict", {"k": 1}]


def test_a_failing_flow_exits_1_with_the_message() -> None:
    code, out, err = invoke("run", str(FIXTURES / "served" / "fail"), "-i", "question=why")
    assert code == 1
    assert out == ""
    assert err == "Error: ValueError: the answer to 'why' is unknowable\n"


def test_a_failing_flow_with_events_ends_in_run_failed() -> None:
    code, out, err = invoke(
        "run", str(FIXTURES / "served" / "fail"), "-i", "question=why", "--events"
    )
    assert code == 1
    last = json.loads(out.splitlines()[-1])
    assert last["kind"] == "RunFailed"
    assert last["error"]["node"] == "explode"
    assert "unknowable" in err


def test_run_with_a_missing_input() -> None:
    code, _out, err = invoke("run", str(EXAMPLES / "branch"))
    assert code == 1
    assert "missing required input 'question'" in err


def test_run_with_a_malformed_input() -> None:
    code, _, err = invoke("run", str(EXAMPLES / "branch"), "--input", "question")
    assert code == 2
    assert "'question' is not KEY=VALUE" in err


def test_run_with_an_empty_value() -> None:
    code, out, err = invoke("run", str(EXAMPLES / "echo"), "--input", "question=")
    assert code == 0, err
    assert json.loads(out) == {"answer": "echo: "}


def test_run_a_bad_flow_exits_1_naming_the_problem() -> None:
    code, _, err = invoke("run", str(FIXTURES / "bad" / "cycle"))
    assert code == 1
    assert "the nodes form a cycle" in err


def test_the_real_entry_point() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "DASHSCOPE_"))}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "flowhost",
            "run",
            str(EXAMPLES / "branch"),
            "--input",
            "question=is it?",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"answer": "You asked: is it? (2 words)"}


def test_the_real_entry_point_prints_a_failure_once() -> None:
    """No log line beside the error: the server logs failed runs, ``flowhost run`` does not."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "flowhost",
            "run",
            str(FIXTURES / "served" / "fail"),
            "-i",
            "question=why",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 1
    assert out.stderr == "Error: ValueError: the answer to 'why' is unknowable\n"


def test_validate_the_examples() -> None:
    code, out, err = invoke("validate", str(EXAMPLES))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        f"ok  {p.name}" for p in sorted(EXAMPLES.iterdir()) if p.is_dir()
    ]
    for line in (
        "ok  branch: 5 nodes, inputs ['question'], outputs ['answer'] (chat)",
        "ok  chat: 1 nodes, inputs ['question', 'chat_history'], outputs ['answer'] (chat)",
        "ok  echo: 1 nodes, inputs ['question', 'chat_history'], outputs ['answer'] (chat)",
    ):
        assert line in lines


def test_validate_one_flow() -> None:
    code, out, _ = invoke("validate", str(FIXTURES / "served" / "typed"))
    assert code == 0
    assert out.startswith("ok  typed: 1 nodes, inputs ['question', 'count', ")


@pytest.mark.parametrize(
    ("folder", "says"),
    [
        (
            "unknown_input",
            "node 'say', field 'inputs.text': unknown flow input in ${inputs.qestion}",
        ),
        ("cycle", "node 'first', field 'inputs.text': the nodes form a cycle"),
        ("missing_source", "node 'say', field 'source.path': source file 'not_there.py' not found"),
        ("template_syntax", "node 'chat', field 'source.path': template error line 5"),
    ],
)
def test_validate_a_bad_flow(folder: str, says: str) -> None:
    code, out, err = invoke("validate", str(FIXTURES / "bad" / folder))
    assert code == 1
    assert out == ""
    assert err.startswith(f"Error: file '{FIXTURES / 'bad' / folder}")
    assert says in err


def test_validate_a_folder_with_one_bad_flow_fails() -> None:
    code, _, err = invoke("validate", str(FIXTURES / "bad"))
    assert code == 1
    assert err.startswith("Error: file ")


def test_validate_a_folder_without_flows(tmp_path: Path) -> None:
    code, _, err = invoke("validate", str(tmp_path))
    assert code == 1
    assert "no flow folders" in err


def test_validate_a_flow_whose_connection_reads_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flow = tmp_path / "echo"
    # bytecode caches beside the tool (a server or `make bench` run writes them) stay behind
    shutil.copytree(EXAMPLES / "echo", flow, ignore=shutil.ignore_patterns("__pycache__"))
    (flow / "connections.yaml").write_text(
        "connections:\n  main:\n    base_url: https://example.invalid/v1\n"
        "    api_key: ${env:FLOWHOST_TEST_KEY}\n"
    )
    monkeypatch.setenv("FLOWHOST_TEST_KEY", "sk-1")
    code, out, err = invoke("validate", str(flow))
    assert code == 0, err
    assert out.startswith("ok  echo")


def test_run_a_retrieval_flow_builds_its_bases_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the knowledge store lives in ./.flowhost
    result = CliRunner().invoke(
        main,
        ["run", str(EXAMPLES / "rag"), "-i", "question=What is a knowledge base identified by?"],
    )
    assert result.exit_code == 0, result.output
    outputs = json.loads(result.output)
    assert "pipeline_id" in outputs["answer"]
    assert outputs["references"][0]["doc_name"] == "flowhost_guide_en.md"


def test_every_serve_option_names_the_variable_that_sets_it() -> None:
    """``serve --help`` says which environment variable each option reads, and it is real."""
    from flowhost.cli import serve
    from flowhost.config import Settings

    prefix = Settings.model_config["env_prefix"]
    options = [p for p in serve.params if isinstance(p, click.Option) and p.name != "help"]
    assert len(options) > 15
    for option in options:
        assert option.name in Settings.model_fields, option.name
        assert f"[env {prefix}{option.name.upper()}" in (option.help or ""), option.name
    assert f"[env {prefix}FLOWS]" in (serve.help or "")


def test_bad_settings_are_a_usage_error_naming_flag_and_variable_not_values() -> None:
    runner = CliRunner()
    env = {"FLOWHOST_NODE_TIMEOUT": "-1", "FLOWHOST_MEMORY_RECALL_K": "0"}
    secret = "tok-do-not-print-1234"
    result = runner.invoke(main, ["serve", str(EXAMPLES / "echo"), "--token", secret], env=env)
    assert result.exit_code == 2
    assert "invalid settings: " in result.stderr
    assert "node_timeout (--node-timeout, FLOWHOST_NODE_TIMEOUT): Input should be" in result.stderr
    assert "memory_recall_k (FLOWHOST_MEMORY_RECALL_K): " in result.stderr  # no such flag
    assert secret not in result.output + result.stderr


def test_an_embedding_model_without_a_connection_is_refused() -> None:
    env = {"FLOWHOST_EMBEDDING_MODEL": "text-embedding-v3"}
    result = CliRunner().invoke(main, ["serve", str(EXAMPLES / "echo")], env=env)
    assert result.exit_code == 2
    assert "embedding_model 'text-embedding-v3' needs an embedding_connection" in result.stderr
    # with a connection (the README's DashScope example) the model is taken
    pair = Settings(embedding_connection="dashscope", embedding_model="text-embedding-v3")
    assert pair.embedding_model == "text-embedding-v3"


def test_an_embedding_connection_without_a_model_is_refused() -> None:
    # the packaged model's name would otherwise be sent to the endpoint at the first base
    env = {"FLOWHOST_EMBEDDING_CONNECTION": "dashscope"}
    result = CliRunner().invoke(main, ["serve", str(EXAMPLES / "echo")], env=env)
    assert result.exit_code == 2
    assert "embedding_connection 'dashscope' needs an embedding_model" in result.stderr
    assert "FLOWHOST_EMBEDDING_MODEL" in result.stderr
