"""Loading flow folders: every example loads; every bad flow is named by file, node and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowhost.apps import AppRegistry
from flowhost.exceptions import FlowDefinitionError
from flowhost.flows.loader import load_flow
from flowhost.flows.spec import Reference, parse_reference

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "flows"
FLOWS = ROOT / "tests" / "flows_fixtures"

BAD = FLOWS / "bad"


def write_flow(folder: Path, yaml_text: str, **files: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "flow.dag.yaml").write_text(yaml_text)
    for name, text in files.items():
        (folder / name.replace("__", ".")).write_text(text)
    return folder


SAY = "def say(text: str) -> str:\n    return text\n"


def one_node_flow(text_input: str = "${inputs.question}", extra: str = "") -> str:
    return f"""
inputs:
  question: {{type: string}}
outputs:
  answer: {{type: string, reference: "${{say.output}}"}}
nodes:
- name: say
  type: python
  source: {{type: code, path: say.py}}
  inputs:
    text: {text_input}
{extra}"""


@pytest.mark.parametrize(
    "folder", sorted(p for p in EXAMPLES.iterdir() if p.is_dir()), ids=lambda p: p.name
)
def test_every_example_loads(folder: Path) -> None:
    # as `flowhost serve` / `validate` load it: node types from plugins registered
    [app] = AppRegistry.load(folder, env={}).apps.values()
    flow = app.flow
    assert flow.name == folder.name
    assert flow.nodes, "an example without nodes"
    assert set(flow.outputs) == set(flow.spec.outputs)
    # nodes come in a topological order: every dependency before its dependents
    seen: set[str] = set()
    for name, node in flow.nodes.items():
        assert node.deps <= seen, f"{name} comes before its dependencies {node.deps - seen}"
        seen.add(name)


def test_examples_are_what_the_readme_says() -> None:
    chat = load_flow(EXAMPLES / "chat")
    assert (chat.chat_input, chat.chat_history, chat.chat_output) == (
        "question",
        "chat_history",
        "answer",
    )
    assert chat.streaming_outputs == {"answer"}, "an llm node's direct output streams"
    assert chat.nodes["chat"].impl.node_type == "llm"

    branch = load_flow(EXAMPLES / "branch")
    assert list(branch.nodes)[-1] == "join"
    assert branch.streaming_outputs == frozenset()
    assert branch.nodes["join"].deps == {"answer_question", "answer_statement", "stats"}
    assert branch.nodes["answer_question"].activate_when == Reference(
        source="classify", name="output", path=("is_question",)
    )

    echo = load_flow(EXAMPLES / "echo")
    assert echo.is_chat
    assert echo.nodes["echo"].impl.node_type == "python"


@pytest.mark.parametrize(
    ("folder", "file", "node", "field", "says"),
    [
        (
            "unknown_input",
            "flow.dag.yaml",
            "say",
            "inputs.text",
            "unknown flow input in ${inputs.qestion}",
        ),
        ("unknown_node", "flow.dag.yaml", "shout", "inputs.text", "unknown node in ${sya.output}"),
        (
            "unknown_output_node",
            "flow.dag.yaml",
            None,
            "outputs.answer.reference",
            "unknown node in ${nowhere.output}",
        ),
        (
            "cycle",
            "flow.dag.yaml",
            "first",
            "inputs.text",
            "cycle: first -> third -> second -> first",
        ),
        ("missing_source", "flow.dag.yaml", "say", "source.path", "'not_there.py' not found"),
        ("bad_input_type", "flow.dag.yaml", None, "inputs.count.type", "'string', 'int', 'double'"),
        ("unknown_node_type", "flow.dag.yaml", "fetch", "type", "'python', 'llm', 'prompt'"),
        ("ambiguous_function", "two.py", "say", "function", "candidates: say, shout"),
        ("template_syntax", "chat.jinja2", "chat", "source.path", "template error line 5"),
        (
            "malformed_reference",
            "flow.dag.yaml",
            "say",
            "inputs.text",
            "'${question}' is not a valid",
        ),
    ],
)
def test_bad_flow_names_file_node_and_field(
    folder: str, file: str, node: str | None, field: str, says: str
) -> None:
    with pytest.raises(FlowDefinitionError) as info:
        load_flow(BAD / folder)
    err = info.value
    path = BAD / folder / file
    assert (err.file, err.node, err.field) == (str(path), node, field)
    assert says in err.message
    where = f"file {str(path)!r}, " + (f"node {node!r}, " if node else "") + f"field {field!r}: "
    assert err.message.startswith(where)
    assert err.status == 500
    assert err.code == "FlowDefinitionError"


@pytest.mark.parametrize(
    ("yaml_text", "node", "field", "says"),
    [
        ("inputs: [oops", None, None, "invalid YAML"),
        ("- just\n- a list\n", None, None, "expected a mapping at the top level"),
        (one_node_flow("${say.outputs}"), "say", "inputs.text", "must be ${node.output}"),
        (one_node_flow("${say.output}"), "say", "inputs", "cannot reference itself"),
        (
            one_node_flow(
                extra="- name: say\n  type: prompt\n  source: {type: code, path: say.py}\n"
            ),
            "say",
            "name",
            "duplicate node names ['say']",
        ),
        (
            one_node_flow(extra="  activate: {when: '${inputs.nope}', is: true}\n"),
            "say",
            "activate.when",
            "unknown flow input in ${inputs.nope}",
        ),
        (
            one_node_flow(extra="  timeout: -1\n"),
            "say",
            "timeout",
            "greater than 0",
        ),
        (
            one_node_flow().replace('"${say.output}"', "say.output"),
            None,
            "outputs.answer.reference",
            "is not a ${...} reference",
        ),
    ],
    ids=[
        "yaml",
        "not-mapping",
        "outputs",
        "self",
        "duplicate",
        "activate",
        "timeout",
        "literal-output",
    ],
)
def test_more_bad_flows(
    tmp_path: Path, yaml_text: str, node: str | None, field: str | None, says: str
) -> None:
    folder = write_flow(tmp_path / "f", yaml_text, say__py=SAY)
    with pytest.raises(FlowDefinitionError) as info:
        load_flow(folder)
    err = info.value
    assert err.file == str(folder / "flow.dag.yaml")
    assert (err.node, err.field) == (node, field)
    assert says in err.message


def test_python_source_problems(tmp_path: Path) -> None:
    flow = one_node_flow()
    bad_import = write_flow(tmp_path / "imp", flow, say__py="import no_such_module_here\n" + SAY)
    with pytest.raises(FlowDefinitionError) as info:
        load_flow(bad_import)
    assert (info.value.node, info.value.field) == ("say", "source.path")
    assert "ModuleNotFoundError" in info.value.message
    assert info.value.file == str(bad_import / "say.py")

    no_function = write_flow(tmp_path / "fn", flow + "  function: nope\n", say__py=SAY)
    with pytest.raises(FlowDefinitionError) as info:
        load_flow(no_function)
    assert (info.value.node, info.value.field) == ("say", "function")
    assert "function 'nope' not found" in info.value.message

    wrong_params = write_flow(
        tmp_path / "params", flow, say__py="def say(words: str) -> str:\n    return words\n"
    )
    with pytest.raises(FlowDefinitionError) as info:
        load_flow(wrong_params)
    assert (info.value.node, info.value.field) == ("say", "inputs")
    assert "['text'] are not parameters of say()" in info.value.message

    outside = write_flow(tmp_path / "out", flow.replace("path: say.py", "path: ../say.py"))
    (tmp_path / "say.py").write_text(SAY)
    with pytest.raises(FlowDefinitionError) as info:
        load_flow(outside)
    assert info.value.node == "say"
    assert "leaves the flow folder" in info.value.message

    with pytest.raises(FlowDefinitionError) as info:
        load_flow(tmp_path)
    assert "no flow.dag.yaml" in info.value.message


def test_ambiguity_resolved_by_tool_or_function(tmp_path: Path) -> None:
    two = "def say(text: str) -> str:\n    return text\n\ndef shout(text: str) -> str:\n    return text.upper()\n"
    by_name = write_flow(tmp_path / "a", one_node_flow() + "  function: shout\n", say__py=two)
    assert load_flow(by_name).nodes["say"].impl.fn.__name__ == "shout"  # type: ignore[attr-defined]
    marked = "from promptflow.core import tool\n\n" + two.replace("def shout", "@tool\ndef shout")
    by_tool = write_flow(tmp_path / "b", one_node_flow(), say__py=marked)
    assert load_flow(by_tool).nodes["say"].impl.fn.__name__ == "shout"  # type: ignore[attr-defined]


def test_references_and_field_lookups_are_parsed() -> None:
    flow = load_flow(FLOWS / "served" / "lookup")
    summarize = flow.nodes["summarize"]
    assert summarize.inputs == {
        "second": Reference(source="split", name="output", path=("words", "1")),
        "country": Reference(source="split", name="output", path=("place", "country")),
    }
    assert summarize.deps == {"split"}
    assert str(flow.outputs["city"]) == "${split.output.place.city}"
    assert flow.outputs["echoed"] == Reference(source="inputs", name="question")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("${inputs.q}", Reference(source="inputs", name="q")),
        ("${ node-1.output }", Reference(source="node-1", name="output")),
        ("${n.output.a.0.b}", Reference(source="n", name="output", path=("a", "0", "b"))),
        ("plain text", None),
        ("say ${inputs.q}", None),  # text around a reference is a literal, as in promptflow
        (3, None),
    ],
)
def test_parse_reference(value: object, expected: Reference | None) -> None:
    assert parse_reference(value) == expected


def test_text_around_references_stays_a_literal(tmp_path: Path) -> None:
    folder = write_flow(
        tmp_path / "f", one_node_flow("'${inputs.question} and ${inputs.question}'"), say__py=SAY
    )
    assert load_flow(folder).nodes["say"].inputs == {
        "text": "${inputs.question} and ${inputs.question}"
    }


def test_flows_with_same_named_helper_modules_each_get_their_own(tmp_path: Path) -> None:
    flows = {}
    for name in ("first", "second"):
        flows[name] = write_flow(
            tmp_path / name,
            "outputs: {answer: {reference: '${n.output}'}}\n"
            "nodes:\n- {name: n, type: python, source: {type: code, path: node.py}}\n",
            node__py="from helper import VALUE\n\n\ndef n() -> str:\n    return VALUE\n",
            helper__py=f"VALUE = {name!r}\n",
        )
    loaded = {name: load_flow(folder) for name, folder in flows.items()}
    for name, flow in loaded.items():
        assert flow.nodes["n"].impl.fn() == name  # type: ignore[attr-defined]
