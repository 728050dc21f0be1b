"""Prometheus metrics: a run sink that counts runs, and the ``/metrics`` exposition.

Everything is recorded when a run closes (its outcome, its latency, its tokens by model and
direction); per event the sink does one check, to time the first output. Outcomes and latencies
are handed to the metrics in batches, and always before a scrape (see ``_Series``). The metrics
live in prometheus-client's default registry, created once per process.

With ``--workers N`` each worker is a process of its own: ``serve`` points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before the workers start (unless it is set
already), every worker writes its values there, and ``/metrics`` sums them over the workers.
"""

from __future__ import annotations

import os
import time
from bisect import bisect_left
from typing import Final

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

from flowhost.engine.events import RunEvent, RunFailed, RunFinished
from flowhost.service import PreparedRun

__all__ = [
    "HEADS_REFUSED",
    "MULTIPROC_ENV",
    "TRACES_LOST",
    "MetricsSink",
    "flush",
    "metrics_endpoint",
    "observe_all",
    "render_metrics",
]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
BATCH: Final = 256  # runs recorded between two flushes (see _Series)

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
    """The metrics of one (app, protocol), and what their runs added since the last flush.

    ``labels()`` looks a child up under a lock, and each observation of a prometheus-client
    histogram takes two more: a run's outcome and latencies were ~7% of the instructions of an
    echo request (``python -m bench.instructions``). So a run only appends its latencies and
    adds to plain counts here; ``flush`` hands them on in bulk, every ``batch`` runs and before
    every scrape (``render_metrics``). With ``--workers`` the batch is 1: a worker's values must
    be in the shared files when any worker answers a scrape."""

    __slots__ = (
        "batch",
        "canceled",
        "canceled_total",
        "duration",
        "durations",
        "failed",
        "failed_total",
        "first_output",
        "first_outputs",
        "ok",
        "ok_total",
    )

    def __init__(self, app: str, protocol: str, batch: int) -> None:
        self.first_output = FIRST_OUTPUT.labels(app, protocol)
        self.duration = RUN_DURATION.labels(app, protocol)
        self.ok_total = RUNS.labels(app, protocol, "ok")
        self.failed_total = RUNS.labels(app, protocol, "failed")
        self.canceled_total = RUNS.labels(app, protocol, "canceled")
        self.batch = batch
        self.ok = self.failed = self.canceled = 0
        self.durations: list[float] = []
        self.first_outputs: list[float] = []

    def flush(self) -> None:
        ok, failed, canceled = self.ok, self.failed, self.canceled
        self.ok = self.failed = self.canceled = 0
        if ok:
            self.ok_total.inc(ok)
        if failed:
            self.failed_total.inc(failed)
        if canceled:
            self.canceled_total.inc(canceled)
        durations, self.durations = self.durations, []
        observe_all(self.duration, durations)
        firsts, self.first_outputs = self.first_outputs, []
        observe_all(self.first_output, firsts)


def observe_all(histogram: Histogram, values: list[float]) -> None:
    """``histogram.observe(v)`` for each of ``values``, with one update of each bucket and of
    the sum: the values are counted into buckets here (prometheus-client keeps a count per
    bucket, not cumulated, in ``_buckets``, and the sum in ``_sum``; tests/test_metrics.py
    checks that the exposition is the one ``observe`` gives)."""
    if not values:
        return
    try:
        bounds, buckets, total = histogram._upper_bounds, histogram._buckets, histogram._sum
    except AttributeError:  # a prometheus-client that keeps them otherwise: one by one
        for value in values:
            histogram.observe(value)
        return
    counts = [0] * len(bounds)
    for value in values:
        counts[bisect_left(bounds, value)] += 1
    total.inc(sum(values))
    for bucket, count in zip(buckets, counts, strict=True):
        if count:
            bucket.inc(count)


_series: dict[tuple[str, str], _Series] = {}


def flush() -> None:
    """Hand every run recorded so far on to the prometheus metrics."""
    for series in _series.values():
        series.flush()


class _Observation:
    __slots__ = ("app", "first", "series", "start")

    trace_id = ""  # RunObservation: metrics have no trace

    def __init__(self, series: _Series, app: str) -> None:
        self.app = app
        self.series = series
        self.start = time.perf_counter()
        self.first = False

    def on_event(self, event: RunEvent) -> None:
        if not self.first and event.kind in _OUTPUTS:
            self.first = True
            self.series.first_outputs.append(time.perf_counter() - self.start)

    def close(self, final: RunEvent | None) -> None:
        try:
            series = self.series
            series.durations.append(time.perf_counter() - self.start)
            if isinstance(final, RunFinished):
                series.ok += 1
            elif isinstance(final, RunFailed):
                series.failed += 1
                ERRORS.labels(self.app, final.error.code).inc()
            else:
                series.canceled += 1  # the client went away before the run ended
            if isinstance(final, (RunFinished, RunFailed)):
                for usage in final.usage:
                    if usage.input_tokens:
                        TOKENS.labels(usage.model, "input").inc(usage.input_tokens)
                    if usage.output_tokens:
                        TOKENS.labels(usage.model, "output").inc(usage.output_tokens)
            if len(series.durations) >= series.batch:
                series.flush()
        except Exception:  # noqa: S110 - a sink must never raise into the run
            pass


_OUTPUTS: Final = frozenset({"OutputDelta", "OutputReady"})


class MetricsSink:
    """``RunSink`` recording every run's outcome, latency and tokens (see ``_Series``)."""

    def __init__(self, batch: int | None = None) -> None:
        self.batch = batch or (1 if os.environ.get(MULTIPROC_ENV) else BATCH)

    def open(self, prepared: PreparedRun) -> _Observation:
        app = prepared.app.app_id
        series = _series.get((app, prepared.protocol))
        if series is None:
            series = _series[app, prepared.protocol] = _Series(app, prepared.protocol, self.batch)
        return _Observation(series, app)


def render_metrics() -> bytes:
    """The text exposition: this process's registry, or every worker's in multiprocess mode."""
    flush()
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)


async def metrics_endpoint(request: Request) -> Response:
    return Response(render_metrics(), media_type=CONTENT_TYPE_LATEST)
