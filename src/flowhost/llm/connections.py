"""Named LLM / embedding endpoints, from ``connections.yaml`` files and the environment.

``connections.yaml`` (in a flow folder or the served folder)::

    default: my_llm                 # optional: the connection used when a node names none
    connections:
      my_llm:
        base_url: https://dashscope.aliyuncs.com/compatible-mode/v1
        api_key: ${env:DASHSCOPE_API_KEY}    # never write keys into the file
        model: qwen-plus                     # default model for nodes that name none
        timeout: 120
        max_retries: 2

From the environment: ``OPENAI_API_KEY`` (+ ``OPENAI_BASE_URL``, ``OPENAI_MODEL``) defines the
connection ``openai`` and ``DASHSCOPE_API_KEY`` the connection ``dashscope`` (compatible-mode base
URL, model ``qwen-plus``). A node whose ``connection`` is not defined anywhere uses the default
connection, so promptflow flows that name their own connections run unchanged.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flowhost.exceptions import FlowDefinitionError

__all__ = ["Connection", "ConnectionRegistry", "LLMNotConfigured"]

DASHSCOPE_BASE_URL = "https://dashscope.aliyuncs.com/compatible-mode/v1"
OPENAI_BASE_URL = "https://api.openai.com/v1"
_ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")

HOW_TO_CONFIGURE = (
    "no LLM connection is configured: set OPENAI_API_KEY (and OPENAI_BASE_URL for any "
    "OpenAI-compatible endpoint) or DASHSCOPE_API_KEY, or add a connections.yaml to the flow folder"
)


class LLMNotConfigured(Exception):
    """No connection can serve the request."""


@dataclass(frozen=True, slots=True)
class Connection:
    name: str
    base_url: str
    api_key: str = field(repr=False)
    model: str | None = None
    timeout: float = 120.0
    max_retries: int = 2
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)


def _expand(value: Any, env: Mapping[str, str], where: str) -> Any:
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(1) not in env:
            raise FlowDefinitionError(f"environment variable {m.group(1)} is not set", file=where)
        return env[m.group(1)]

    return _ENV_REF.sub(sub, value)


def load_connections_file(
    path: Path, env: Mapping[str, str]
) -> tuple[dict[str, Connection], str | None]:
    """Parse one connections.yaml. Returns (connections, default name)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise FlowDefinitionError(f"invalid YAML: {exc}", file=str(path)) from exc
    if not isinstance(data, dict) or not isinstance(data.get("connections", {}), dict):
        raise FlowDefinitionError("expected a mapping with a `connections` mapping", file=str(path))
    out: dict[str, Connection] = {}
    for name, raw in (data.get("connections") or {}).items():
        if not isinstance(raw, dict) or "base_url" not in raw:
            raise FlowDefinitionError(f"connection {name!r} needs base_url", file=str(path))
        try:
            out[str(name)] = Connection(
                name=str(name),
                base_url=str(_expand(raw["base_url"], env, str(path))),
                api_key=str(_expand(raw.get("api_key", "none"), env, str(path))),
                model=raw.get("model"),
                timeout=float(raw.get("timeout", 120.0)),
                max_retries=int(raw.get("max_retries", 2)),
                headers={
                    str(k): str(_expand(v, env, str(path)))
                    for k, v in (raw.get("headers") or {}).items()
                },
            )
        except (TypeError, ValueError) as exc:
            raise FlowDefinitionError(f"connection {name!r}: {exc}", file=str(path)) from exc
    default = data.get("default")
    return out, (str(default) if default else None)


def env_connections(env: Mapping[str, str]) -> tuple[dict[str, Connection], str | None]:
    out: dict[str, Connection] = {}
    default: str | None = None
    retries = int(env.get("FLOWHOST_LLM_MAX_RETRIES", "2"))
    if env.get("DASHSCOPE_API_KEY"):
        out["dashscope"] = Connection(
            name="dashscope",
            base_url=env.get("DASHSCOPE_BASE_URL", DASHSCOPE_BASE_URL),
            api_key=env["DASHSCOPE_API_KEY"],
            model=env.get("DASHSCOPE_MODEL", "qwen-plus"),
            max_retries=retries,
        )
        default = "dashscope"
    if env.get("OPENAI_API_KEY"):
        out["openai"] = Connection(
            name="openai",
            base_url=env.get("OPENAI_BASE_URL", OPENAI_BASE_URL),
            api_key=env["OPENAI_API_KEY"],
            # OpenAI itself has a sensible default; any other endpoint must name its model
            model=env.get("OPENAI_MODEL")
            or (None if env.get("OPENAI_BASE_URL") else "gpt-4o-mini"),
            max_retries=retries,
        )
        default = "openai"
    return out, default


class ConnectionRegistry:
    """Resolves a node's ``connection`` name. Later sources override earlier ones."""

    def __init__(self, connections: Mapping[str, Connection], default: str | None) -> None:
        self._by_name = dict(connections)
        self.default = default

    @classmethod
    def load(cls, folders: list[Path], env: Mapping[str, str] | None = None) -> ConnectionRegistry:
        env = os.environ if env is None else env
        conns, default = env_connections(env)
        for folder in folders:
            path = folder / "connections.yaml"
            if path.is_file():
                more, more_default = load_connections_file(path, env)
                conns.update(more)
                default = more_default or default or next(iter(more), None)
        return cls(conns, default)

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def get(self, name: str | None) -> Connection:
        if name and name in self._by_name:
            return self._by_name[name]
        if self.default is not None:
            return self._by_name[self.default]
        raise LLMNotConfigured(HOW_TO_CONFIGURE)
