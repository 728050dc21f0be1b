"""Span attributes for runs and nodes: GenAI semantic conventions, OpenInference, redaction.

Every span carries ``flowhost.*`` attributes (the console reads those) plus the conventions the
usual backends render: OpenTelemetry GenAI (``gen_ai.*``: Jaeger, Langfuse, most vendors) and
OpenInference (``openinference.span.kind``, ``input.value``, ``llm.*``, ``retrieval.*``:
Phoenix, Langfuse). Content (inputs, outputs, prompts, completions, recalled chunks) is recorded
only when ``trace_content`` is on.

Secrets never reach an attribute: values under secret-looking keys (``api_key``, ``token``,
``password``, ``user_defined_tokens``...) are replaced, and every string written is scrubbed of
the secrets the server knows (its bearer token, connection API keys and headers, the run's
``user_defined_tokens``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

from flowhost.engine.events import ErrorInfo, ModelUsage
from flowhost.jsontext import compact_json, lenient_default
from flowhost.wire.sse import dumps

__all__ = [
    "MAX_VALUE_CHARS",
    "REDACTED",
    "Redactor",
    "add_value",
    "error_attributes",
    "llm_attributes",
    "retrieval_attributes",
    "span_kind_of",
    "usage_attributes",
]

REDACTED: Final = "[redacted]"
MAX_VALUE_CHARS: Final = 16_384
MAX_MESSAGES: Final = 40
MAX_DOCUMENTS: Final = 50
MIN_SECRET_LEN: Final = 6
_SECRET_KEY = re.compile(
    r"api[_-]?key|apikey|secret|passw(or)?d|passphrase|authorization|credential|cookie"
    r"|private[_-]?key|access[_-]?key|token(s)?($|[_\-.])",
    re.IGNORECASE,
)
_RETRIEVAL_TYPES: Final = frozenset({"knowledge_retrieval", "retrieval", "retriever"})


def span_kind_of(node_type: str) -> str:
    """The OpenInference span kind of a node type."""
    if node_type == "llm":
        return "LLM"
    if node_type in _RETRIEVAL_TYPES:
        return "RETRIEVER"
    return "CHAIN"


def is_retrieval(node_type: str) -> bool:
    return node_type in _RETRIEVAL_TYPES


class Redactor:
    """Removes secrets from values before they become span attributes."""

    __slots__ = ("_secrets",)

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # each secret also as JSON text writes it (a quote or backslash escaped): values are
        # scrubbed after they are encoded
        kept = {s for s in secrets if len(s) >= MIN_SECRET_LEN}
        forms = kept | {compact_json(s)[1:-1] for s in kept}
        self._secrets = tuple(sorted(forms, key=len, reverse=True))

    def with_secrets(self, more: Iterable[str]) -> Redactor:
        extra = [s for s in more if len(s) >= MIN_SECRET_LEN]
        return Redactor((*self._secrets, *extra)) if extra else self

    def for_tokens(self, tokens: Mapping[str, Mapping[str, Any]]) -> Redactor:
        """This redactor plus a run's ``user_defined_tokens`` values (``{node: {name: value}}``)."""
        if not tokens:
            return self
        return self.with_secrets(
            v for values in tokens.values() for v in values.values() if isinstance(v, str)
        )

    def scrub(self, value: str) -> str:
        """``value`` with every known secret in it replaced."""
        for secret in self._secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value

    def text(self, value: str) -> str:
        """Scrub known secrets out of ``value`` and bound its length."""
        value = self.scrub(value)
        if len(value) > MAX_VALUE_CHARS:
            cut = len(value) - MAX_VALUE_CHARS
            value = f"{value[:MAX_VALUE_CHARS]}…[{cut} more characters]"
        return value

    def value(self, value: Any) -> Any:
        """``value`` with secret-keyed entries of nested mappings replaced (copied only where
        something was replaced)."""
        if isinstance(value, Mapping):
            out: dict[Any, Any] | None = None
            for k, v in value.items():
                new = (
                    REDACTED
                    if _secret_key(k) and _secretish(v)
                    else (self.value(v) if isinstance(v, _CONTAINERS) else v)
                )
                if new is not v and out is None:
                    out = dict(value)
                if out is not None:
                    out[k] = new
            return value if out is None else out
        if isinstance(value, list | tuple):
            items = [self.value(v) if isinstance(v, _CONTAINERS) else v for v in value]
            if all(a is b for a, b in zip(items, value, strict=True)):
                return value
            return items
        return value

    def json(self, value: Any) -> str:
        """``value`` as scrubbed, bounded JSON text (strings stay strings)."""
        if isinstance(value, str):
            return self.text(value)
        text = _encode(value)
        if _maybe_secret(text):  # maybe a secret-looking key: walk the value
            redacted = self.value(value)
            if redacted is not value:
                text = _encode(redacted)
        return self.text(text)


_CONTAINERS: Final = (Mapping, list, tuple)


def _encode(value: Any) -> str:
    return compact_json(value, lenient_default)


def _maybe_secret(text: str) -> bool:
    """Whether ``text`` (encoded JSON) may hold a key that ``_SECRET_KEY`` matches: a superset
    test, much faster than a regex. Without a hit, the value need not be walked."""
    low = text.lower()
    return (
        "key" in low
        or "token" in low
        or "secret" in low
        or "passw" in low
        or "passphrase" in low
        or "authoriz" in low
        or "credential" in low
        or "cookie" in low
    )


@functools.lru_cache(maxsize=4096)
def _key_is_secret(key: str) -> bool:
    return _SECRET_KEY.search(key) is not None


def _secret_key(key: Any) -> bool:
    return _key_is_secret(key if isinstance(key, str) else str(key))


def add_value(attrs: dict[str, Any], prefix: str, value: Any, redact: Redactor) -> None:
    """Set OpenInference ``<prefix>.value`` + ``<prefix>.mime_type`` (``input`` / ``output``)
    in ``attrs``: text as it is, anything else as JSON."""
    value_key, mime_key = _VALUE_KEYS[prefix]
    attrs[value_key] = redact.json(value)
    attrs[mime_key] = "text/plain" if isinstance(value, str) else "application/json"


_VALUE_KEYS: Final = {p: (f"{p}.value", f"{p}.mime_type") for p in ("input", "output")}


def _secretish(value: Any) -> bool:
    # counts such as max_tokens / input_tokens are not secrets
    return not (value is None or isinstance(value, bool | int | float))


def usage_attributes(usage: Iterable[ModelUsage], *, genai: bool) -> dict[str, Any]:
    """Token counts summed over models (``genai``: also the gen_ai.usage.* names)."""
    models: list[str] = []
    inp = out = 0
    for u in usage:
        models.append(u.model)
        inp += u.input_tokens
        out += u.output_tokens
    if not models:
        return {}
    attrs: dict[str, Any] = {
        "flowhost.usage.input_tokens": inp,
        "flowhost.usage.output_tokens": out,
        "flowhost.usage.models": models,
        "llm.token_count.prompt": inp,
        "llm.token_count.completion": out,
        "llm.token_count.total": inp + out,
    }
    if genai:
        attrs["gen_ai.usage.input_tokens"] = inp
        attrs["gen_ai.usage.output_tokens"] = out
        attrs["gen_ai.response.model"] = models[0]
    return attrs


def error_attributes(error: ErrorInfo, redact: Redactor) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "error.type": error.code,
        "flowhost.error.code": error.code,
        "flowhost.error.message": redact.text(error.message),
    }
    if error.node is not None:
        attrs["flowhost.error.node"] = error.node
    return attrs


_PARAMS: Final = {
    "temperature": "gen_ai.request.temperature",
    "max_tokens": "gen_ai.request.max_tokens",
    "top_p": "gen_ai.request.top_p",
    "presence_penalty": "gen_ai.request.presence_penalty",
    "frequency_penalty": "gen_ai.request.frequency_penalty",
    "seed": "gen_ai.request.seed",
}


def llm_attributes(
    trace: Mapping[str, Any], output: Any, redact: Redactor, *, content: bool
) -> dict[str, Any]:
    """GenAI + OpenInference attributes of an llm node from what it recorded (``rt.trace``)."""
    attrs: dict[str, Any] = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai"}
    model = trace.get("model")
    if model:
        attrs["gen_ai.request.model"] = str(model)
        attrs["llm.model_name"] = str(model)
    if trace.get("connection"):
        attrs["flowhost.connection"] = str(trace["connection"])
    params = trace.get("params")
    if isinstance(params, Mapping):
        for key, name in _PARAMS.items():
            v = params.get(key)
            if isinstance(v, int | float) and not isinstance(v, bool):
                attrs[name] = v
        attrs["llm.invocation_parameters"] = redact.json(params)
    if not content:
        return attrs
    messages = trace.get("messages")
    if isinstance(messages, list):
        shown = [m for m in messages if isinstance(m, Mapping)]
        attrs["gen_ai.input.messages"] = redact.json(
            [
                {"role": m.get("role"), "parts": [{"type": "text", "content": m.get("content")}]}
                for m in shown
            ]
        )
        for i, m in enumerate(shown[-MAX_MESSAGES:]):
            prefix = f"llm.input_messages.{i}.message"
            attrs[f"{prefix}.role"] = str(m.get("role", ""))
            attrs[f"{prefix}.content"] = redact.json(m.get("content", ""))
    if output is not None:
        text = redact.json(output)
        attrs["gen_ai.output.messages"] = redact.text(
            dumps(
                [
                    {
                        "role": "assistant",
                        "parts": [{"type": "text", "content": text}],
                        "finish_reason": "stop",
                    }
                ]
            )
        )
        attrs["llm.output_messages.0.message.role"] = "assistant"
        attrs["llm.output_messages.0.message.content"] = text
    return attrs


def _documents(trace: Mapping[str, Any], output: Any) -> list[Mapping[str, Any]]:
    docs = trace.get("documents")
    if docs is None and isinstance(output, list):
        docs = output
    if docs is None and isinstance(output, Mapping):
        docs = output.get("documents") or output.get("chunks")
    if not isinstance(docs, list):
        return []
    return [d for d in docs if isinstance(d, Mapping)][:MAX_DOCUMENTS]


def retrieval_attributes(
    trace: Mapping[str, Any], output: Any, redact: Redactor, *, content: bool
) -> dict[str, Any]:
    """OpenInference ``retrieval.documents.*`` of a retrieval node: ids and scores always,
    chunk text and metadata only with content on."""
    attrs: dict[str, Any] = {}
    docs = _documents(trace, output)
    for i, d in enumerate(docs):
        prefix = f"retrieval.documents.{i}.document"
        doc_id = d.get("id") or d.get("chunk_id") or d.get("doc_id") or d.get("file_id")
        if doc_id is not None:
            attrs[f"{prefix}.id"] = str(doc_id)
        score = d.get("score")
        if isinstance(score, int | float) and not isinstance(score, bool):
            attrs[f"{prefix}.score"] = float(score)
        if content:
            text = d.get("content", d.get("text", d.get("page_content")))
            if text is not None:
                attrs[f"{prefix}.content"] = redact.json(text)
            meta = d.get("metadata")
            if meta is not None:
                attrs[f"{prefix}.metadata"] = redact.json(meta)
    if docs:
        attrs["flowhost.retrieval.count"] = len(docs)
    return attrs
