"""Prometheus metrics: a run sink that counts runs, and the ``/metrics`` exposition.

Everything is recorded when a run closes (one counter per outcome, two histogram observations,
one counter per model and direction); per event the sink does one attribute check, to time the
first output. The metrics live in prometheus-client's default registry, created once per process.

With ``--workers N`` each worker is a process of its own: ``serve`` points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before the workers start (unless it is set
already), every worker writes its values there, and ``/metrics`` sums them over the workers.
"""

from __future__ import annotations

import os
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from starlette.requests import Request
from starlette.responses import Response

from flowhost.engine.events import OutputDelta, OutputReady, RunEvent, RunFailed, RunFinished
from flowhost.service import PreparedRun

__all__ = [
    "HEADS_REFUSED",
    "MULTIPROC_ENV",
    "TRACES_LOST",
    "MetricsSink",
    "metrics_endpoint",
    "render_metrics",
]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# seconds; LLM runs take from milliseconds (echo flows) to minutes
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

RUNS = Counter(
    "flowhost_runs",
    "Runs by app, protocol and outcome (ok, failed, canceled).",
    ["app", "protocol", "status"],
)
RUN_DURATION = Histogram(
    "flowhost_run_duration_seconds",
    "Run latency from the accepted request to the last event, by app and protocol.",
    ["app", "protocol"],
    buckets=_BUCKETS,
)
FIRST_OUTPUT = Histogram(
    "flowhost_run_first_output_seconds",
    "Time from the accepted request to the first output (a streamed delta or a whole output).",
    ["app", "protocol"],
    buckets=_BUCKETS,
)
TOKENS = Counter(
    "flowhost_tokens",
    "LLM tokens by model and direction (input, output).",
    ["model", "direction"],
)
ERRORS = Counter(
    "flowhost_run_errors",
    "Failed runs by app and error code (NodeFailed, NodeTimeout, LLMError, ...).",
    ["app", "code"],
)
TRACES_LOST = Counter(
    "flowhost_trace_runs_lost",
    "Runs whose trace was lost: dropped from the full span queue (reason=dropped) or not "
    "written to the local span store (reason=store_error).",
    ["reason"],
)
HEADS_REFUSED = Counter(
    "flowhost_http_heads_refused",
    "Connections closed before a request reached the app (flowhost.server.protocol): a head "
    "too large (reason=too_large), not complete in time (reason=timeout), or no request at "
    "all in that time (reason=silent).",
    ["reason"],
)


class _Series:
    """The labelled children of one (app, protocol): ``labels()`` looks them up under a lock,
    which is a noticeable share of a small run; apps and protocols are few, so keep them."""

    __slots__ = ("canceled", "duration", "failed", "first_output", "ok")

    def __init__(self, app: str, protocol: str) -> None:
        self.first_output = FIRST_OUTPUT.labels(app, protocol)
        self.duration = RUN_DURATION.labels(app, protocol)
        self.ok = RUNS.labels(app, protocol, "ok")
        self.failed = RUNS.labels(app, protocol, "failed")
        self.canceled = RUNS.labels(app, protocol, "canceled")


_series: dict[tuple[str, str], _Series] = {}


class _Observation:
    __slots__ = ("app", "first", "series", "start")

    trace_id = ""  # RunObservation: metrics have no trace

    def __init__(self, app: str, protocol: str) -> None:
        self.app = app
        series = _series.get((app, protocol))
        if series is None:
            series = _series[app, protocol] = _Series(app, protocol)
        self.series = series
        self.start = time.perf_counter()
        self.first = False

    def on_event(self, event: RunEvent) -> None:
        if not self.first and isinstance(event, OutputDelta | OutputReady):
            self.first = True
            self.series.first_output.observe(time.perf_counter() - self.start)

    def close(self, final: RunEvent | None) -> None:
        try:
            series = self.series
            series.duration.observe(time.perf_counter() - self.start)
            if isinstance(final, RunFinished):
                series.ok.inc()
            elif isinstance(final, RunFailed):
                series.failed.inc()
                ERRORS.labels(self.app, final.error.code).inc()
            else:
                series.canceled.inc()  # the client went away before the run ended
            if isinstance(final, RunFinished | RunFailed):
                for usage in final.usage:
                    if usage.input_tokens:
                        TOKENS.labels(usage.model, "input").inc(usage.input_tokens)
                    if usage.output_tokens:
                        TOKENS.labels(usage.model, "output").inc(usage.output_tokens)
        except Exception:  # noqa: S110 - a sink must never raise into the run
            pass


class MetricsSink:
    """``RunSink`` recording every run's outcome, latency and tokens."""

    def open(self, prepared: PreparedRun) -> _Observation:
        return _Observation(prepared.app.app_id, prepared.protocol)


def render_metrics() -> bytes:
    """The text exposition: this process's registry, or every worker's in multiprocess mode."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)


async def metrics_endpoint(request: Request) -> Response:
    return Response(render_metrics(), media_type=CONTENT_TYPE_LATEST)
