"""Prompt templates: Jinja's globals stay available; chat prompts split at role markers."""

from __future__ import annotations

from pathlib import Path

from flowhost.nodes.template import PromptTemplate

CHAT = Path(__file__).resolve().parents[2] / "examples" / "flows" / "chat" / "chat.jinja2"


def test_jinja_globals_are_available() -> None:
    t = PromptTemplate(
        "{% for i in range(3) %}{{ i }}{% endfor %} {% set ns = namespace(n=2) %}{{ ns.n }} "
        "{{ dict(a=1)['a'] }}"
    )
    assert t.render_text({}) == "012 2 1"


def test_renders_are_independent() -> None:
    t = PromptTemplate("{{ q }}{% set x = 1 %}{{ x }}")
    assert [t.render_text({"q": q}) for q in ("a", "b")] == ["a1", "b1"]
    assert "q" in t.variables


def test_the_chat_example_renders_history_turns() -> None:
    t = PromptTemplate.from_file(CHAT)
    history = [{"inputs": {"question": "Where?"}, "outputs": {"answer": "Paris."}}]
    assert t.render_chat({"question": "Why?", "chat_history": history}) == [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Where?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "Why?"},
    ]
