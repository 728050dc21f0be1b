"""Complete mode (``POST /run``): events -> RunStarted / NodeUpdated / RunOutput / RunTerminated.

Field for field as seed 000 lists them; ``response_config`` decides what NodeUpdated carries.
With ``stream: false`` the same information comes back as one JSON body (``collect``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import field
from typing import Any

from flowhost.engine.events import (
    ErrorInfo,
    NodeFailed,
    NodeFinished,
    NodeSkipped,
    NodeStarted,
    OutputDelta,
    OutputReady,
    RunEvent,
    RunFailed,
    RunFinished,
    RunStarted,
)
from flowhost.flows.loader import Flow
from flowhost.frozen import frozen
from flowhost.wire.sse import dumps, iso_time, sse

__all__ = ["ResponseConfig", "collect", "stream", "translate"]


@frozen
class ResponseConfig:
    include_node_description: bool = False
    include_node_display_name: bool = False
    include_node_output: bool = False
    exclude_nodes: frozenset[str] = field(default_factory=frozenset)


def _flow_run_info(
    run_id: str, status: str, error: ErrorInfo | None, trace_id: str
) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "status": status,
        "error": error.to_dict() if error else None,
        "otel_trace_id": trace_id,
    }


def _node_info(
    flow: Flow,
    cfg: ResponseConfig,
    node: str,
    status: str,
    *,
    error: ErrorInfo | None = None,
    duration: float = 0.0,
    output: Any = None,
) -> dict[str, Any]:
    spec = flow.nodes[node].spec
    return {
        "node_name": node,
        "node": node,
        "status": status,
        "error": error.to_dict() if error else None,
        "duration": round(duration, 6),
        "description": spec.description if cfg.include_node_description else None,
        "display_name": (spec.display_name or node) if cfg.include_node_display_name else None,
        "output": output if cfg.include_node_output and status == "Completed" else None,
    }


class _Translator:
    """Stateful mapping of one run's events to complete-mode payloads (dicts)."""

    def __init__(self, flow: Flow, cfg: ResponseConfig) -> None:
        self.flow, self.cfg = flow, cfg
        self.trace_id = ""

    def __call__(self, ev: RunEvent) -> dict[str, Any] | None:
        base = {"run_id": ev.run_id, "timestamp": iso_time(ev.timestamp)}
        if isinstance(ev, RunStarted):
            self.trace_id = ev.trace_id
            return {
                "event": "RunStarted",
                **base,
                "flow_run_info": _flow_run_info(ev.run_id, "Running", None, ev.trace_id),
            }
        if isinstance(ev, NodeStarted | NodeFinished | NodeFailed | NodeSkipped):
            if ev.node in self.cfg.exclude_nodes:
                return None
            if isinstance(ev, NodeStarted):
                info = _node_info(self.flow, self.cfg, ev.node, "Running")
            elif isinstance(ev, NodeFinished):
                info = _node_info(
                    self.flow,
                    self.cfg,
                    ev.node,
                    "Completed",
                    duration=ev.duration,
                    output=ev.output,
                )
            elif isinstance(ev, NodeFailed):
                info = _node_info(
                    self.flow, self.cfg, ev.node, "Failed", error=ev.error, duration=ev.duration
                )
            else:
                info = _node_info(self.flow, self.cfg, ev.node, "Bypassed")
            return {"event": "NodeUpdated", **base, "node_run_infos": [info]}
        if isinstance(ev, OutputDelta):
            return {
                "event": "RunOutput",
                **base,
                "outputs": {ev.name: ev.delta},
                "output_metadata": {ev.name: {"is_stream": True, "status": "Streaming"}},
            }
        if isinstance(ev, OutputReady):
            outputs = {} if ev.streamed else {ev.name: ev.value}
            return {
                "event": "RunOutput",
                **base,
                "outputs": outputs,
                "output_metadata": {ev.name: {"is_stream": ev.streamed, "status": "Finished"}},
            }
        if isinstance(ev, RunFinished):
            return {
                "event": "RunTerminated",
                **base,
                "flow_run_info": _flow_run_info(ev.run_id, "Completed", None, self.trace_id),
            }
        if isinstance(ev, RunFailed):
            return {
                "event": "RunTerminated",
                **base,
                "flow_run_info": _flow_run_info(ev.run_id, "Failed", ev.error, self.trace_id),
            }
        return None  # NodeDelta: not part of complete mode


def translate(flow: Flow, cfg: ResponseConfig) -> _Translator:
    return _Translator(flow, cfg)


async def stream(
    events: AsyncIterator[RunEvent], flow: Flow, cfg: ResponseConfig
) -> AsyncIterator[bytes]:
    tr = _Translator(flow, cfg)
    async for ev in events:
        payload = tr(ev)
        if payload is not None:
            yield sse(dumps(payload, compact=False))


async def collect(
    events: AsyncIterator[RunEvent], flow: Flow, cfg: ResponseConfig
) -> tuple[dict[str, Any], ErrorInfo | None]:
    """One JSON body with the whole run: flow_run_info, outputs, node_run_infos."""
    tr = _Translator(flow, cfg)
    nodes: dict[str, dict[str, Any]] = {}
    body: dict[str, Any] = {
        "run_id": "",
        "flow_run_info": None,
        "outputs": {},
        "node_run_infos": [],
    }
    error: ErrorInfo | None = None
    async for ev in events:
        payload = tr(ev)
        if payload is None:
            continue
        body["run_id"] = ev.run_id
        if payload["event"] == "NodeUpdated":
            for info in payload["node_run_infos"]:
                nodes[info["node"]] = info
        elif payload["event"] in ("RunStarted", "RunTerminated"):
            body["flow_run_info"] = payload["flow_run_info"]
        if isinstance(ev, RunFinished):
            body["outputs"] = ev.outputs
        elif isinstance(ev, RunFailed):
            error = ev.error
    body["node_run_infos"] = list(nodes.values())
    return body, error
