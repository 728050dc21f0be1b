"""Scenario ``llm``: the chat example in front of a fake LLM that takes 1 s per answer.

Baseline: the same load sent straight to the fake LLM (``POST /v1/chat/completions`` with the
request flowhost itself sends: the rendered chat messages, ``stream: true`` with usage), the fake
on the server CPU. Then flowhost (chat app, non-streaming simple mode) on the server CPU, the
fake (a separate process) and the load generator on the load CPU.
"""

from __future__ import annotations

import json
from typing import Any

from bench.common import (
    FAKE_MODEL,
    Config,
    cpu_seconds,
    fmt_ms,
    fmt_s,
    llm_env,
    post_json,
    ratio,
    start_fake,
    start_flowhost,
)
from bench.loadgen import LoadResult
from bench.procs import ServerProc, Servers, rss_bytes
from bench.report import Check, Section

__all__ = ["DIRECT_BODY", "run"]

DELAY_S = 1.0
MAX_P50_S = 1.05
MIN_RPS = 450.0
FLOWHOST_BODY = {"question": "hi"}
# What the chat example sends upstream for {"question": "hi"} (its template, rendered).
DIRECT_BODY: dict[str, Any] = {
    "model": FAKE_MODEL,
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "hi"},
    ],
    "temperature": 0.7,
    "max_tokens": 512,
    "stream": True,
    "stream_options": {"include_usage": True},
}


def _load(
    cfg: Config, srv: ServerProc, path: str, body: dict[str, Any]
) -> tuple[LoadResult, float]:
    raw = json.dumps(body).encode()
    url, conns = f"{srv.url}{path}", cfg.llm_connections
    cfg.loadgen.run(url, raw, connections=conns, duration=cfg.llm_warmup, timeout=10)
    cpu0 = cpu_seconds(srv.pid)
    res = cfg.loadgen.run(url, raw, connections=conns, duration=cfg.llm_duration, timeout=10)
    return res, cpu_seconds(srv.pid) - cpu0


def run(cfg: Config) -> Section:
    sec = Section(
        "llm: chat app over a fake LLM with 1 s latency",
        f"{cfg.llm_connections} connections, {fmt_s(cfg.llm_warmup)} warm-up then "
        f"{fmt_s(cfg.llm_duration)}, {cfg.loadgen.tool}. Fake LLM: "
        f"`python -m flowhost.testing.fake_llm --delay {DELAY_S:g}` (separate process). flowhost: "
        "`serve examples/flows/chat --no-history`, non-streaming `POST /` "
        '`{"question": "hi"}`. Direct baseline: the same load on the fake\'s '
        "`/v1/chat/completions` with the body flowhost sends (streamed, with usage). Latencies "
        "in ms. wrk opens every connection at once and a request lasts ~1 s, so no request "
        "completes in the window's first second: req/s can reach 500 x (window - 1 s) / window "
        "at most, hence a long window.",
    )
    with Servers(cfg.pinning) as servers:
        fake = start_fake(servers, delay=DELAY_S, cpus=cfg.pinning.server)
        status, got = post_json(fake.port, "/v1/chat/completions", DIRECT_BODY)
        if status != 200 or b"echo:" not in got:
            raise RuntimeError(f"fake LLM answered {status} {got[:300]!r}")
        direct, direct_cpu = _load(cfg, fake, "/v1/chat/completions", DIRECT_BODY)
        servers.stop(fake)

        fake = start_fake(servers, delay=DELAY_S, cpus=cfg.pinning.load)
        fh = start_flowhost(servers, cfg, app="chat", cpus=cfg.pinning.server, env=llm_env(fake))
        status, got = post_json(fh.port, "/", FLOWHOST_BODY)
        if status != 200 or json.loads(got) != {"answer": "echo: hi"}:
            raise RuntimeError(f"flowhost chat answered {status} {got[:300]!r}")
        flow, flow_cpu = _load(cfg, fh, "/", FLOWHOST_BODY)
        rss_mb = rss_bytes(fh.pid) / 2**20

    rows = [["target", "req/s", "p50", "p90", "p99", "max", "errors", "server CPU ms/req"]]
    for name, res, cpu in (
        ("fake LLM direct", direct, direct_cpu),
        ("flowhost chat", flow, flow_cpu),
    ):
        rows.append(
            [
                name,
                f"{res.rps:,.0f}",
                fmt_ms(res.p50_ms),
                fmt_ms(res.p90_ms),
                fmt_ms(res.p99_ms),
                fmt_ms(res.max_ms),
                res.error_text(),
                f"{cpu / res.requests * 1e3:.2f}" if res.requests else "-",
            ]
        )
        if res.error_count:
            sec.notes.append(f"{name} had errors: {res.error_text()}")
    rows.append(
        [
            "flowhost/direct",
            f"{ratio(flow.rps, direct.rps):.2f}",
            f"{flow.p50_ms - direct.p50_ms:+.1f} ms",
            f"{flow.p90_ms - direct.p90_ms:+.1f} ms",
            f"{flow.p99_ms - direct.p99_ms:+.1f} ms",
            "",
            "",
            "",
        ]
    )
    sec.tables.append(rows)
    sec.checks += [
        Check(
            "flowhost median latency",
            f"{flow.p50_ms / 1e3:.3f} s",
            f"<= {MAX_P50_S:g} s",
            flow.requests > 0 and flow.p50_ms / 1e3 <= MAX_P50_S and not flow.error_count,
        ),
        Check(
            "flowhost throughput",
            f"{flow.rps:,.0f} req/s",
            f">= {MIN_RPS:g} req/s",
            flow.rps >= MIN_RPS and not flow.error_count,
        ),
    ]
    if not flow.requests:
        sec.notes.append("flowhost completed no request within the timed run (all slower than it)")
    sec.notes.append(f"flowhost RSS after the load: {rss_mb:.0f} MB")
    return sec
