"""Scenario ``simple``: flowhost's simple mode on the echo app vs a bare Starlette app.

Both servers answer ``POST /`` with the body ``{"question": "hi"}`` by ``{"answer":"echo: hi"}``
(checked byte for byte before the load). Each concurrency gets a warm-up per server, then
``simple_rounds`` rounds in which every server gets one timed run in turn, the bare app first:
a machine whose speed drifts from minute to minute (seen here: the bare app's CPU per request
moved by a third between runs minutes apart) then slows every server alike, and the ratio to
the bare app is taken per round (the median of the rounds is the figure checked). Requests,
time and CPU are summed over the rounds; latency percentiles are the median of the rounds'.
The server's CPU time per request comes from ``/proc/PID/stat``.
"""

from __future__ import annotations

import json
import statistics

from bench.common import (
    Config,
    cpu_seconds,
    fmt_ms,
    fmt_s,
    loaded_libs,
    main_thread_cpu_seconds,
    post_json,
    ratio,
    start_bare,
    start_floor,
    start_flowhost,
    traces_lost,
)
from bench.loadgen import LoadResult
from bench.pfserve import PF_PATH, promptflow_exe, start_promptflow
from bench.procs import ServerProc, Servers, ServerStartError, rss_bytes
from bench.report import Check, Section

__all__ = ["run"]

BODY = {"question": "hi"}
EXPECTED = b'{"answer":"echo: hi"}'
CONNECTIONS = (1, 32)
MIN_RPS_RATIO = 0.5  # flowhost >= 50% of bare req/s at 32 connections
MAX_P50_EXTRA_MS = 0.3  # at 1 connection, p50 at most 0.3 ms above bare
# A third server shows what run tracing costs (not part of the targets).
NO_TRACE = "flowhost, tracing off"
NO_TRACE_ENV = {"FLOWHOST_ENABLE_TRACING": "false"}
# And promptflow's own server on the same flow, when it installs in a side venv (no target).
PROMPTFLOW = "promptflow (pf flow serve)"
# And the floor: the echo request's durable work with no framework (bench/floor_app.py).
FLOOR = "floor (bench/floor_app.py)"


def _measure(
    cfg: Config, srv: ServerProc, conns: int, path: str, *, warm: bool
) -> tuple[LoadResult, float, float]:
    """The load's result, the server's CPU seconds meanwhile, and those of its main thread."""
    body = json.dumps(BODY).encode()
    url = f"{srv.url}{path}"
    if warm:
        cfg.loadgen.run(url, body, connections=conns, duration=cfg.simple_warmup)
    cpu0, main0 = cpu_seconds(srv.pid), main_thread_cpu_seconds(srv.pid)
    res = cfg.loadgen.run(url, body, connections=conns, duration=cfg.simple_duration)
    return res, cpu_seconds(srv.pid) - cpu0, main_thread_cpu_seconds(srv.pid) - main0


def _combine(rounds: list[LoadResult]) -> LoadResult:
    """One result for several runs: counts and time summed, percentiles the median of theirs."""
    errors: dict[str, int] = {}
    for r in rounds:
        for k, v in r.errors.items():
            errors[k] = errors.get(k, 0) + v
    return LoadResult(
        tool=rounds[0].tool,
        connections=rounds[0].connections,
        duration_s=sum(r.duration_s for r in rounds),
        requests=sum(r.requests for r in rounds),
        p50_ms=statistics.median(r.p50_ms for r in rounds),
        p90_ms=statistics.median(r.p90_ms for r in rounds),
        p99_ms=statistics.median(r.p99_ms for r in rounds),
        mean_ms=statistics.median(r.mean_ms for r in rounds),
        max_ms=max(r.max_ms for r in rounds),
        errors=errors,
    )


def run(cfg: Config) -> Section:
    sec = Section(
        "simple: `POST /` echo app vs bare Starlette",
        "`flowhost serve examples/flows/echo --no-history` against "
        "`bench/baseline_app.py` (Starlette + uvicorn, uvloop + httptools, access log off, one "
        f"process). Without `--quick`, a third server, flowhost with "
        "`FLOWHOST_ENABLE_TRACING=false`, shows what run tracing costs; `bench/floor_app.py` "
        "does the echo request's durable work (ids, input check, metrics, a trace row in "
        "flowhost's trace table) with no framework, the floor a design could reach; and "
        "promptflow's `pf flow serve` (from a side venv, `POST /score`) serves the same flow "
        "(no targets). "
        f"{cfg.loadgen.tool}, {fmt_s(cfg.simple_warmup)} warm-up per server, then "
        f"{cfg.simple_rounds} round(s) of {fmt_s(cfg.simple_duration)} per server, the servers "
        "taking turns; latencies in ms (median of the rounds'); server CPU from /proc (user + "
        "system; \"other threads\": all but the event loop's, such as the trace store's writer).",
    )
    with Servers(cfg.pinning) as servers:
        targets: dict[str, ServerProc] = {
            "bare": start_bare(servers, cpus=cfg.pinning.server),
            "flowhost": start_flowhost(servers, cfg, app="echo", cpus=cfg.pinning.server),
        }
        paths = dict.fromkeys(targets, "/")
        if cfg.simple_extra:
            targets[NO_TRACE] = start_flowhost(
                servers, cfg, app="echo", cpus=cfg.pinning.server, env=NO_TRACE_ENV
            )
            paths[NO_TRACE] = "/"
            targets[FLOOR] = start_floor(servers, cpus=cfg.pinning.server)
            paths[FLOOR] = "/"
            pf = promptflow_exe(sec.notes)
            if pf is not None:
                try:
                    targets[PROMPTFLOW] = start_promptflow(servers, pf, cpus=cfg.pinning.server)
                    paths[PROMPTFLOW] = PF_PATH
                except ServerStartError as exc:
                    sec.notes.append(f"promptflow did not start: {exc}")
        for name, srv in targets.items():
            status, got = post_json(srv.port, paths[name], BODY)
            if name == PROMPTFLOW and status == 200:
                got = got.rstrip(b"\n")  # Flask ends its JSON with a newline
            if status != 200 or got != EXPECTED:
                raise RuntimeError(f"{name} answered {status} {got!r}, expected 200 {EXPECTED!r}")
            if name == PROMPTFLOW:
                continue  # a Flask app
            libs = loaded_libs(srv.pid)
            if libs != {"uvloop", "httptools"}:
                sec.notes.append(
                    f"{name} has not loaded uvloop + httptools (found: {sorted(libs)})"
                )
        runs: dict[tuple[str, int], list[tuple[LoadResult, float, float]]] = {}
        for conns in CONNECTIONS:
            for turn in range(cfg.simple_rounds):
                for name, srv in targets.items():
                    run = _measure(cfg, srv, conns, paths[name], warm=turn == 0)
                    runs.setdefault((name, conns), []).append(run)
        rss = {name: rss_bytes(srv.pid) for name, srv in targets.items()}
        # A server whose span queue overflowed (or whose store refused spans) skipped that
        # tracing work and looks faster.
        lost = {
            name: traces_lost(targets[name].port)
            for name in ("flowhost", NO_TRACE)
            if name in targets
        }
        dropped = {name for name, runs_lost in lost.items() if runs_lost}
    for name in dropped:
        sec.notes.append(
            f"{name} did not store the spans of {lost[name]:,.0f} runs "
            "(flowhost_trace_runs_lost_total): its figures leave that work out"
        )
    results = {
        key: (
            _combine([r for r, _, _ in rounds]),
            sum(cpu for _, cpu, _ in rounds),
            sum(main for _, _, main in rounds),
        )
        for key, rounds in runs.items()
    }

    def ratios(name: str, conns: int) -> list[float]:
        """flowhost/bare req/s, round by round."""
        pairs = zip(runs[name, conns], runs["bare", conns], strict=True)
        return [ratio(f.rps, b.rps) for (f, _, _), (b, _, _) in pairs]

    rows = [
        [
            "conns",
            "server",
            "req/s",
            "p50",
            "p90",
            "p99",
            "server CPU µs/req",
            "of it, other threads",
            "errors",
        ]
    ]
    for (name, conns), (res, cpu, main) in results.items():
        per_req = cpu / res.requests * 1e6 if res.requests else 0.0
        others = max(cpu - main, 0.0) / res.requests * 1e6 if res.requests else 0.0
        rows.append(
            [
                str(conns),
                name,
                f"{res.rps:,.0f}",
                fmt_ms(res.p50_ms),
                fmt_ms(res.p90_ms),
                fmt_ms(res.p99_ms),
                f"{per_req:,.0f}",
                f"{others:,.0f}",
                res.error_text(),
            ]
        )
        if res.error_count:
            sec.notes.append(f"{name} at {conns} connections had errors: {res.error_text()}")
    cmp_rows = [
        [
            "conns",
            "server",
            "req/s vs bare (median of rounds)",
            "rounds",
            "p50 - bare (ms)",
            "p99 vs bare",
        ]
    ]
    for conns in CONNECTIONS:
        b = results["bare", conns][0]
        for name in [t for t in targets if t != "bare"]:
            f = results[name, conns][0]
            each = ratios(name, conns)
            cmp_rows.append(
                [
                    str(conns),
                    name,
                    f"{statistics.median(each):.2f}",
                    ", ".join(f"{r:.2f}" for r in each),
                    f"{f.p50_ms - b.p50_ms:+.3f}",
                    f"{ratio(f.p99_ms, b.p99_ms):.2f}",
                ]
            )
    sec.tables += [rows, cmp_rows]
    b32, f32 = results["bare", 32][0], results["flowhost", 32][0]
    b1, f1 = results["bare", 1][0], results["flowhost", 1][0]
    r32 = statistics.median(ratios("flowhost", 32))
    sec.checks += [
        Check(
            "req/s at 32 connections, flowhost/bare (median of rounds)",
            f"{r32:.0%} ({f32.rps:,.0f} vs {b32.rps:,.0f})",
            f">= {MIN_RPS_RATIO:.0%}",
            r32 >= MIN_RPS_RATIO and not f32.error_count and "flowhost" not in dropped,
        ),
        Check(
            "p50 at 1 connection, flowhost - bare",
            f"{f1.p50_ms - b1.p50_ms:+.3f} ms ({fmt_ms(f1.p50_ms)} vs {fmt_ms(b1.p50_ms)})",
            f"<= +{MAX_P50_EXTRA_MS} ms",
            f1.requests > 0 and f1.p50_ms - b1.p50_ms <= MAX_P50_EXTRA_MS and not f1.error_count,
        ),
    ]
    sec.notes.append(
        "RSS after the load: " + ", ".join(f"{name} {v / 2**20:.0f} MB" for name, v in rss.items())
    )
    return sec
