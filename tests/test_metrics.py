"""The run metrics: batched outcomes and latencies reach the exposition exactly, and in time."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from flowhost import metrics
from flowhost.engine.events import ErrorInfo, OutputReady, RunFailed, RunFinished

VALUES = [0.0, 0.004, 0.005, 0.0050001, 0.3, 2.5, 7.0, 599.0, 601.0, 1e6, 0.02]


def _exposition(feed: Any) -> list[tuple[str, dict[str, str], float]]:
    """The histogram's samples after ``feed(histogram)``, but the time it was created."""
    registry = CollectorRegistry()
    histogram = Histogram("h", "h", ["a"], buckets=(0.005, 0.01, 0.5, 2.5, 600), registry=registry)
    feed(histogram.labels("x"))
    text = generate_latest(registry).decode()
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")
    ]


def test_observe_all_exposes_what_observing_one_by_one_does() -> None:
    # observe_all writes prometheus-client's per-bucket counts itself: this fails if the
    # library changes how a histogram keeps them
    def one_by_one(h: Histogram) -> None:
        for v in VALUES:
            h.observe(v)

    def all_at_once(h: Histogram) -> None:
        metrics.observe_all(h, VALUES[:4])
        metrics.observe_all(h, [])
        metrics.observe_all(h, VALUES[4:])

    got, expected = _exposition(all_at_once), _exposition(one_by_one)
    assert len(expected) == 8  # 6 buckets, the count, the sum
    assert got[-1][0] == "h_sum"
    assert got[:-1] == expected[:-1]
    assert got[-1][2] == pytest.approx(expected[-1][2])  # the sum, added in another order


class _App:
    app_id = "metrics-test-app"


class _Prepared:
    app = _App()

    def __init__(self, protocol: str) -> None:
        self.protocol = protocol


def _sample(name: str, **labels: str) -> float:
    text = metrics.render_metrics().decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def _run(sink: metrics.MetricsSink, protocol: str, final: Any) -> None:
    observation = sink.open(_Prepared(protocol))  # type: ignore[arg-type]
    observation.on_event(OutputReady("r", "answer", "x", False, 0.0))
    observation.close(final)


@pytest.mark.parametrize("batch", [1, 3, metrics.BATCH])
def test_every_run_is_in_the_next_scrape(batch: int) -> None:
    protocol = f"batch-{batch}"
    sink = metrics.MetricsSink(batch=batch)
    labels = {"app": _App.app_id, "protocol": protocol}
    finished = RunFinished("r", {}, (), 0.1, 0.0)
    failed = RunFailed("r", ErrorInfo("NodeFailed", "no"), 0.1, 0.0)
    for final in (finished, finished, failed, None, finished):
        _run(sink, protocol, final)
    assert _sample("flowhost_runs_total", status="ok", **labels) == 3
    assert _sample("flowhost_runs_total", status="failed", **labels) == 1
    assert _sample("flowhost_runs_total", status="canceled", **labels) == 1
    assert _sample("flowhost_run_duration_seconds_count", **labels) == 5
    assert _sample("flowhost_run_first_output_seconds_count", **labels) == 5
    assert _sample("flowhost_run_errors_total", app=_App.app_id, code="NodeFailed") >= 1
    _run(sink, protocol, finished)  # counting goes on after a scrape
    assert _sample("flowhost_runs_total", status="ok", **labels) == 4


def test_a_full_batch_is_handed_on_without_a_scrape() -> None:
    sink = metrics.MetricsSink(batch=2)
    finished = RunFinished("r", {}, (), 0.1, 0.0)
    _run(sink, "unscraped", finished)
    ok = metrics.RUNS.labels(_App.app_id, "unscraped", "ok")
    assert ok._value.get() == 0  # waiting in its batch
    _run(sink, "unscraped", finished)
    assert ok._value.get() == 2  # the batch is full: in the metric, pending nothing
    series = metrics._series[_App.app_id, "unscraped"]
    assert (series.ok, series.durations) == (0, [])


def test_workers_write_every_run_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(metrics.MULTIPROC_ENV, "/nonexistent")
    assert metrics.MetricsSink().batch == 1
    monkeypatch.delenv(metrics.MULTIPROC_ENV)
    assert metrics.MetricsSink().batch == metrics.BATCH


def test_observe_all_observes_one_by_one_without_the_internals_it_knows() -> None:
    class Other:  # a histogram child without _upper_bounds, _buckets and _sum
        def __init__(self) -> None:
            self.seen: list[float] = []

        def observe(self, value: float) -> None:
            self.seen.append(value)

    other = Other()
    metrics.observe_all(other, VALUES)  # type: ignore[arg-type]
    assert other.seen == VALUES
