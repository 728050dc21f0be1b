"""The extraction prompt and the parsing of its answer.

The LLM sees the user's message and the memory's existing nodes (id and content) and answers with
JSON operations: ``add`` a new fact, ``update`` the node a fact restates or corrects. Anything
else (no JSON, unknown ops, empty contents) is ignored; an ``update`` of an unknown id is an
``add``. The same fact twice (after normalising case and spaces) is never stored twice.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["EXTRACTION_PROMPT", "Operation", "build_messages", "normalise", "parse_operations"]

EXTRACTION_PROMPT = """\
You maintain the long-term memory of an assistant about one user. From the user's message below,
extract durable facts and preferences about the user (identity, preferences, habits, constraints,
plans) that will still matter in later conversations. Ignore questions, greetings, small talk and
anything about the assistant.

Existing memory nodes (id: content):
{nodes}

Answer with JSON only, in this shape:
{{"operations": [{{"op": "add", "content": "<new fact>"}},
                 {{"op": "update", "id": "<existing id>", "content": "<the fact, restated or corrected>"}}]}}
Use "update" when the message restates, corrects or refines an existing node. Leave out facts that
are already stored unchanged. Write each fact as one short sentence in the user's language.
If nothing should be remembered, answer {{"operations": []}}."""

_JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Operation:
    op: Literal["add", "update"]
    content: str
    node_id: str | None = None


def build_messages(message: str, nodes: list[tuple[str, str]]) -> list[dict[str, Any]]:
    listing = "\n".join(f"{node_id}: {content}" for node_id, content in nodes) or "(none)"
    return [
        {"role": "system", "content": EXTRACTION_PROMPT.format(nodes=listing)},
        {"role": "user", "content": message},
    ]


def normalise(text: str) -> str:
    return " ".join(text.split()).strip(" 。.").casefold()


def parse_operations(answer: str, known_ids: set[str]) -> list[Operation]:
    """The operations in the LLM's answer (fenced or bare JSON); [] when there are none."""
    match = _JSON_OBJECT.search(answer)
    if match is None:
        return []
    try:
        data = json.loads(match.group(0))
    except json.JSONDecodeError:
        return []
    raw = data.get("operations") if isinstance(data, dict) else None
    if not isinstance(raw, list):
        return []
    ops: list[Operation] = []
    for item in raw:
        if not isinstance(item, dict):
            continue
        content = str(item.get("content") or "").strip()
        if not content:
            continue
        node_id = item.get("id")
        if item.get("op") == "update" and isinstance(node_id, str) and node_id in known_ids:
            ops.append(Operation("update", content, node_id))
        elif item.get("op") in ("add", "update"):
            ops.append(Operation("add", content))
    return ops
