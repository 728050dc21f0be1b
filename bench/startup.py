"""Scenario ``startup``: cold start (spawn to the first 200 on ``/health``) and idle RSS.

Runs alternate between the bare app, flowhost (echo app) on an empty data dir (its first start:
the SQL store is created and migrated; the target applies to this one) and flowhost restarted on
the data dir of an earlier start (the schema is current: no migration runs; no target, shown for
comparison). ``/health`` is polled every 5 ms from the load CPU. "Cold" means a new process; the
OS page cache and ``.pyc`` files are warm, as on any restart. Idle RSS is read 0.5 s after the
first 200 and after one ``POST /``. The CPU time the process used until its first 200
(``/proc/PID/stat``) is less sensitive than wall time to other load on the machine.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from bench.common import (
    Config,
    cpu_seconds,
    fmt_ms,
    post_json,
    ratio,
    start_bare,
    start_flowhost,
)
from bench.procs import ServerProc, Servers, rss_bytes
from bench.report import Check, Section

__all__ = ["run"]

MAX_START_S = 1.0
MAX_RSS_MB = 120.0
IDLE_SETTLE_S = 0.5
FIRST = "flowhost"  # empty data dir: the store is created and migrated (the target)
RESTART = "flowhost, restart"  # the data dir of an earlier start: schema current


Sample = tuple[float, float, float, float]  # (s to healthy, first POST / ms, idle RSS MB, CPU s)


def _one(cfg: Config, kind: str, data_dir: Path | None = None) -> Sample:
    """One fresh process: (seconds to healthy, first POST / in ms, idle RSS in MB, CPU seconds
    used until healthy). ``data_dir``: flowhost's data dir (default: an empty one)."""
    with Servers(cfg.pinning) as servers:
        srv: ServerProc
        if kind == "bare":
            srv = start_bare(servers, cpus=cfg.pinning.server)
        else:
            env = {"FLOWHOST_DATA_DIR": str(data_dir)} if data_dir is not None else None
            srv = start_flowhost(servers, cfg, app="echo", cpus=cfg.pinning.server, env=env)
        cpu = cpu_seconds(srv.pid)  # includes answering the first /health
        ready = srv.ready_after or 0.0
        t0 = time.perf_counter()
        status, body = post_json(srv.port, "/", {"question": "hi"})
        first_ms = (time.perf_counter() - t0) * 1e3
        if status != 200:
            raise RuntimeError(f"{kind}: first POST / answered {status} {body!r}")
        time.sleep(IDLE_SETTLE_S)  # let the process go idle before reading RSS (not a health wait)
        return ready, first_ms, rss_bytes(srv.pid) / 2**20, cpu


def run(cfg: Config) -> Section:
    sec = Section(
        "startup: cold start and idle memory",
        f"Median of {cfg.startup_runs} fresh processes each, alternating; spawn to the first 200 "
        'on `/health` (polled every 5 ms), then the first `POST /` (`{"question": "hi"}`), '
        f"then RSS after {IDLE_SETTLE_S:g} s idle. `flowhost`: `serve examples/flows/echo "
        "--no-history` on an empty data dir (the SQL store is created and migrated at start); "
        "`flowhost, restart`: the same on the data dir of an earlier start (schema current, no "
        "migration). CPU: user + system time of the process until its first 200.",
    )
    runs: dict[str, list[Sample]] = {"bare": [], FIRST: [], RESTART: []}
    with tempfile.TemporaryDirectory(prefix="flowhost-bench-restart-") as kept:
        kept_dir = Path(kept) / "data"
        _one(cfg, "flowhost", kept_dir)  # creates and migrates the store the restarts find
        for _ in range(cfg.startup_runs):
            runs["bare"].append(_one(cfg, "bare"))
            runs[FIRST].append(_one(cfg, "flowhost"))
            runs[RESTART].append(_one(cfg, "flowhost", kept_dir))
    rows = [
        [
            "server",
            "start median (ms)",
            "start min-max (ms)",
            "CPU to first 200 (ms)",
            "first POST / (ms)",
            "idle RSS (MB)",
        ]
    ]
    med: dict[str, tuple[float, float, float, float]] = {}
    for kind, samples in runs.items():
        starts = [s[0] * 1e3 for s in samples]
        med[kind] = (
            statistics.median(starts),
            statistics.median(s[1] for s in samples),
            statistics.median(s[2] for s in samples),
            statistics.median(s[3] * 1e3 for s in samples),
        )
        rows.append(
            [
                kind,
                f"{med[kind][0]:.0f}",
                f"{min(starts):.0f}-{max(starts):.0f}",
                f"{med[kind][3]:.0f}",
                fmt_ms(med[kind][1]),
                f"{med[kind][2]:.1f}",
            ]
        )
    rows.append(
        [
            "flowhost/bare",
            f"{ratio(med[FIRST][0], med['bare'][0]):.2f}",
            "",
            f"{ratio(med[FIRST][3], med['bare'][3]):.2f}",
            f"{ratio(med[FIRST][1], med['bare'][1]):.2f}",
            f"{ratio(med[FIRST][2], med['bare'][2]):.2f}",
        ]
    )
    sec.tables.append(rows)
    start_s, rss_mb = med[FIRST][0] / 1e3, med[FIRST][2]
    sec.checks += [
        Check(
            "flowhost cold start (median)",
            f"{start_s * 1e3:.0f} ms",
            f"<= {MAX_START_S:g} s",
            start_s <= MAX_START_S,
        ),
        Check(
            "flowhost idle RSS (median)",
            f"{rss_mb:.1f} MB",
            f"<= {MAX_RSS_MB:g} MB",
            rss_mb <= MAX_RSS_MB,
        ),
    ]
    return sec
