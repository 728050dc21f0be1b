"""Scenario ``ttfb``: streaming time to the first content event, flowhost vs the fake LLM direct.

A small sequential httpx client (one keep-alive connection per server, pinned to the load CPU)
alternates a request through flowhost's simple mode SSE (``Accept: text/event-stream``, chat app)
with the same request sent straight to the fake LLM's streaming endpoint. The fake here has no
delay, so the difference is what flowhost adds. The first content event is the first
``event: Message`` with a non-empty answer (flowhost sends an empty one at once) or the first
chunk with non-empty ``delta.content`` (the fake sends the role first).

No batching: with ``[[fake:chunks=a|b|c|d|e]]`` and ``[[fake:chunk_delay=0.02]]``, every chunk
must arrive as its own SSE event, in its own network read (about 20 ms after the previous one;
a gap under 10 ms is noted: a chunk was held back).
"""

from __future__ import annotations

import itertools
import json
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from bench.common import Config, fmt_ms, llm_env, start_fake, start_flowhost
from bench.llm import DIRECT_BODY
from bench.loadgen import percentile
from bench.procs import Servers
from bench.report import Check, Section

__all__ = ["run"]

MAX_ADDED_P50_MS = 2.0
WARMUP = 20
CHUNKS = ["a", "b", "c", "d", "e"]
CHUNK_DELAY_S = 0.02
MIN_GAP_S = CHUNK_DELAY_S / 2
BATCH_QUESTION = f"hi [[fake:chunks={'|'.join(CHUNKS)}]] [[fake:chunk_delay={CHUNK_DELAY_S:g}]]"
TOTAL_TIME_LIMIT_S = 180.0
SSE = {"Accept": "text/event-stream", "Content-Type": "application/json"}


@dataclass(frozen=True)
class Event:
    at: float  # seconds since the request was sent
    read: int  # index of the network read that completed it
    event: str | None
    data: str


def _events(resp: httpx.Response, t0: float) -> Iterator[Event]:
    buf = b""
    for n, chunk in enumerate(resp.iter_raw()):
        now = time.perf_counter() - t0
        buf += chunk
        while b"\n\n" in buf:
            raw, buf = buf.split(b"\n\n", 1)
            name: str | None = None
            data: list[str] = []
            for line in raw.decode().split("\n"):
                field, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if field == "event":
                    name = value
                elif field == "data":
                    data.append(value)
            yield Event(now, n, name, "\n".join(data))


def flowhost_content(ev: Event) -> str | None:
    if ev.event != "Message":
        return None
    answer = json.loads(ev.data).get("answer")
    return answer if isinstance(answer, str) and answer else None


def direct_content(ev: Event) -> str | None:
    if not ev.data or ev.data == "[DONE]":
        return None
    choices = json.loads(ev.data).get("choices") or []
    content = (choices[0].get("delta") or {}).get("content") if choices else None
    return content if isinstance(content, str) and content else None


Extract = Callable[[Event], str | None]


def _stream(
    client: httpx.Client, url: str, body: dict[str, Any], extract: Extract
) -> list[tuple[float, int, str]]:
    """Send one streaming request; read it to the end; return the content events."""
    out: list[tuple[float, int, str]] = []
    t0 = time.perf_counter()
    with client.stream("POST", url, json=body, headers=SSE) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"{url} answered {resp.status_code}: {resp.read()[:300]!r}")
        for ev in _events(resp, t0):
            content = extract(ev)
            if content is not None:
                out.append((ev.at, ev.read, content))
    if not out:
        raise RuntimeError(f"{url}: the stream had no content event")
    return out


def run(cfg: Config) -> Section:
    n = cfg.ttfb_samples
    sec = Section(
        "ttfb: streaming time to first content event",
        f"{n} sequential samples each, alternating, after {WARMUP} warm-up requests each; httpx "
        "client, keep-alive. flowhost: `POST /` chat app with `Accept: text/event-stream`. "
        "Direct: the fake LLM's `/v1/chat/completions` with `stream: true` and the body flowhost "
        "sends. Fake LLM delay 0. Times in ms.",
    )
    with Servers(cfg.pinning) as servers, httpx.Client(timeout=10.0) as client:
        fake = start_fake(servers, delay=0.0, cpus=cfg.pinning.load)
        fh = start_flowhost(servers, cfg, app="chat", cpus=cfg.pinning.server, env=llm_env(fake))
        targets: dict[str, tuple[str, dict[str, Any], Extract]] = {
            "flowhost": (f"{fh.url}/", {"question": "hi"}, flowhost_content),
            "direct": (f"{fake.url}/v1/chat/completions", DIRECT_BODY, direct_content),
        }
        for url, body, extract in targets.values():
            for _ in range(WARMUP):
                _stream(client, url, body, extract)
        samples: dict[str, list[float]] = {"flowhost": [], "direct": []}
        deadline = time.monotonic() + TOTAL_TIME_LIMIT_S
        for i in range(n):
            if time.monotonic() > deadline:
                sec.notes.append(f"stopped after {i} samples: the {TOTAL_TIME_LIMIT_S:g} s limit")
                break
            order = list(targets) if i % 2 == 0 else list(reversed(targets))
            for name in order:
                url, body, extract = targets[name]
                samples[name].append(_stream(client, url, body, extract)[0][0] * 1e3)
        batching = {
            "flowhost": [
                _stream(client, f"{fh.url}/", {"question": BATCH_QUESTION}, flowhost_content)
                for _ in range(3)
            ],
            "direct": [_stream(client, targets["direct"][0], _direct_batch_body(), direct_content)],
        }

    rows = [["path", "samples", "p50", "p90", "p99", "mean"]]
    stats: dict[str, list[float]] = {}
    for name, values in samples.items():
        values.sort()
        stats[name] = [percentile(values, 50), percentile(values, 90), percentile(values, 99)]
        rows.append(
            [
                name,
                str(len(values)),
                *(fmt_ms(v) for v in stats[name]),
                fmt_ms(statistics.fmean(values)),
            ]
        )
    added = [f - d for f, d in zip(stats["flowhost"], stats["direct"], strict=True)]
    rows.append(["flowhost - direct", "", *(f"{v:+.3f}" for v in added), ""])
    sec.tables.append(rows)

    batch_rows = [["path", "run", "content events", "gaps between them (ms)", "separate reads"]]
    ok = True
    late: list[str] = []
    for name, runs in batching.items():
        for k, events in enumerate(runs, 1):
            contents = [c for _, _, c in events]
            gaps = [b[0] - a[0] for a, b in itertools.pairwise(events)]
            reads = [r for _, r, _ in events]
            separate = len(set(reads)) == len(reads)
            good = contents == CHUNKS and separate
            ok = ok and (good or name != "flowhost")
            if good and min(gaps, default=MIN_GAP_S) < MIN_GAP_S:
                late.append(f"{name} run {k}")
            batch_rows.append(
                [
                    name,
                    str(k),
                    " ".join(contents),
                    " ".join(f"{g * 1e3:.1f}" for g in gaps),
                    "yes" if separate else "NO",
                ]
            )
    sec.tables.append(batch_rows)
    sec.checks += [
        Check(
            "TTFB added by flowhost (p50)",
            f"{added[0]:+.3f} ms",
            f"<= {MAX_ADDED_P50_MS:g} ms",
            added[0] <= MAX_ADDED_P50_MS,
        ),
        Check(
            "no batching: chunks a..e each their own SSE event and network read",
            "yes" if ok else "no",
            "every chunk separate",
            ok,
        ),
    ]
    if late:
        sec.notes.append(
            f"{', '.join(late)}: two chunks arrived less than {MIN_GAP_S * 1e3:g} ms apart (one "
            "was delayed, e.g. by CPU contention), though still as separate events and reads"
        )
    return sec


def _direct_batch_body() -> dict[str, Any]:
    body = json.loads(json.dumps(DIRECT_BODY))
    body["messages"][-1]["content"] = BATCH_QUESTION
    return dict(body)
