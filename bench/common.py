"""What every scenario shares: the run's settings and how to start each kind of server."""

from __future__ import annotations

import http.client
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.loadgen import LoadGen
from bench.procs import EXAMPLES, HOST, Pinning, ServerProc, Servers, ServerStartError

__all__ = [
    "FAKE_MODEL",
    "Config",
    "cpu_seconds",
    "fmt_ms",
    "fmt_s",
    "llm_env",
    "loaded_libs",
    "main_thread_cpu_seconds",
    "post_json",
    "ratio",
    "start_bare",
    "start_fake",
    "start_floor",
    "start_flowhost",
]

FAKE_MODEL = "fake-chat"
_CLK_TCK = float(os.sysconf("SC_CLK_TCK"))


@dataclass
class Config:
    """The run's knobs (``--quick`` shortens all of them)."""

    pinning: Pinning
    loadgen: LoadGen
    quick: bool = False
    simple_duration: float = 3.0  # per round
    simple_warmup: float = 2.0
    # the servers take turns, round after round (see bench/simple.py); the checked figure is
    # the median of the rounds' ratios (with 3 rounds, two runs an hour apart gave 45% and 50%)
    simple_rounds: int = 5
    # Each of the 500 users' requests lasts ~1 s and wrk starts them all at once, so the
    # first second of any window completes nothing: 10 s capped a 1.04 s median at ~450 req/s
    # whatever the server did. 30 s leaves that edge a thirtieth of the window.
    llm_duration: float = 30.0
    llm_warmup: float = 3.0
    llm_connections: int = 500
    startup_runs: int = 5
    ttfb_samples: int = 200
    streams_count: int = 2000
    streams_hold: float = 60.0  # seconds each stream stays open after its first piece
    simple_extra: bool = True  # also run flowhost with tracing off (skipped by --quick)
    notes: list[str] = field(default_factory=list)
    # set once when `--no-history` is rejected by `flowhost serve`
    history_flag_ok: bool = True

    @classmethod
    def build(
        cls, pinning: Pinning, loadgen: LoadGen, *, quick: bool, duration: float | None
    ) -> Config:
        cfg = cls(pinning, loadgen, quick=quick)
        if quick:
            cfg.simple_duration, cfg.simple_warmup, cfg.simple_rounds = 2.0, 1.0, 1
            cfg.llm_duration, cfg.llm_warmup = 4.0, 1.0
            cfg.startup_runs, cfg.ttfb_samples = 3, 50
            cfg.streams_hold = 45.0
            cfg.simple_extra = False
        if duration is not None:
            cfg.simple_duration = cfg.llm_duration = max(1.0, duration)
        return cfg


def fmt_ms(ms: float) -> str:
    return f"{ms:.3f}" if ms < 10 else f"{ms:.1f}" if ms < 1000 else f"{ms:.0f}"


def fmt_s(seconds: float) -> str:
    return f"{seconds:g} s"


def ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of ``pid`` so far (0.0 when it is gone)."""
    return _stat_cpu(Path(f"/proc/{pid}/stat"))


def _stat_cpu(path: Path) -> float:
    try:
        stat = path.read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def main_thread_cpu_seconds(pid: int) -> float:
    """user + system CPU time of the main thread of ``pid`` so far (the event loop's, in the
    servers here; ``cpu_seconds`` minus this is the other threads': a store's writer, worker
    threads); 0.0 when it is gone."""
    return _stat_cpu(Path(f"/proc/{pid}/task/{pid}/stat"))


def loaded_libs(pid: int) -> set[str]:
    """Which of uvloop / httptools the process has loaded (from its memory maps)."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return set()
    return {lib for lib in ("uvloop", "httptools") if f"/{lib}/" in maps}


def post_json(
    port: int,
    path: str,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        conn.request("POST", path, body=json.dumps(body).encode(), headers=hdrs)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def traces_lost(port: int, timeout: float = 30.0) -> float:
    """Runs whose spans a flowhost server did not store (queue full or store error), from its
    ``/metrics`` (``flowhost_trace_runs_lost_total``, all reasons)."""
    from prometheus_client.parser import text_string_to_metric_families

    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        text = resp.read().decode()
    finally:
        conn.close()
    if resp.status != 200:
        raise RuntimeError(f"GET /metrics answered {resp.status}")
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "flowhost_trace_runs_lost_total"
    )


def start_bare(servers: Servers, *, cpus: tuple[int, ...] | None) -> ServerProc:
    return servers.start("bare-starlette", ["-m", "bench.baseline_app"], cpus=cpus)


def start_floor(servers: Servers, *, cpus: tuple[int, ...] | None) -> ServerProc:
    return servers.start("floor", ["-m", "bench.floor_app"], cpus=cpus)


def start_fake(
    servers: Servers, *, delay: float, cpus: tuple[int, ...] | None, wait: bool = True
) -> ServerProc:
    argv = ["-m", "flowhost.testing.fake_llm", "--host", HOST, "--delay", f"{delay:g}"]
    return servers.start(f"fake-llm-delay{delay:g}", argv, cpus=cpus, wait=wait)


def start_flowhost(
    servers: Servers,
    cfg: Config,
    *,
    app: str,
    cpus: tuple[int, ...] | None,
    env: dict[str, str] | None = None,
    wait: bool = True,
) -> ServerProc:
    """``flowhost serve examples/flows/APP --no-history``: only the app under test, so the
    figures are the app's own (the ``rag`` example would load LanceDB and a model at start).

    If ``--no-history`` is rejected, it is dropped (once, with a note) and the server restarted.
    """
    base = ["-m", "flowhost", "serve", str(EXAMPLES / app)]
    flags = ["--no-history"] if cfg.history_flag_ok else []
    try:
        return servers.start(f"flowhost-{app}", base + flags, cpus=cpus, env=env, wait=wait)
    except ServerStartError as exc:
        if not flags or "no-history" not in exc.log:
            raise
    cfg.history_flag_ok = False
    cfg.notes.append("`flowhost serve --no-history` was rejected; served with chat history on.")
    servers.procs = [p for p in servers.procs if p.proc.poll() is None]
    return servers.start(f"flowhost-{app}", base, cpus=cpus, env=env, wait=wait)


def llm_env(fake: ServerProc) -> dict[str, str]:
    """flowhost's environment for the fake LLM (the chat example names no model)."""
    return {
        "OPENAI_BASE_URL": f"{fake.url}/v1",
        "OPENAI_API_KEY": "x",
        "OPENAI_MODEL": FAKE_MODEL,
        "FLOWHOST_LLM_MAX_RETRIES": "0",
    }
