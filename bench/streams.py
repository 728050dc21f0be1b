"""Scenario ``streams``: how many SSE streams one flowhost process holds at once, and at what RSS.

flowhost serves ``examples/flows/chat`` (``--no-history``, tracing on) over the fake LLM
(``python -m flowhost.testing.fake_llm``, on the load CPU). Every stream is a simple-mode
``POST /`` with ``Accept: text/event-stream`` whose reply the fake scripts as ``PIECES`` content
pieces spaced so that the stream stays open for ``hold`` seconds after its first piece: each
flowhost stream holds one upstream stream to the fake, too.

1. Warm-up: a few short streams, so that what loads on first use (LLM client, templates) is in
   memory; then the server's idle RSS.
2. Ramp: ``count`` streams opened from one asyncio client (raw ``asyncio`` streams on uvloop: an
   HTTP client library would need more CPU than the server on this shared load CPU), at most
   ``RAMP_WINDOW`` of them waiting for their first piece at a time, so that the ramp follows
   what the server can take rather than flooding its accept queue.
3. Plateau: once every stream has had its first content piece, if none has ended yet (else
   something capped the concurrency, or the ramp outlasted the ``hold``: the scenario says so),
   all of them are held at once. The server's RSS and open fds are sampled all along (every
   ``SAMPLE_EVERY_S``) and at the plateau.
4. The streams finish; a stream counts as an error unless it answered 200, its chunked body
   ended normally, it carried every piece in order and no ``event: Error``, and its last event
   was the closing empty answer.

RSS per held stream = (peak RSS - idle RSS) / most streams held at once, which is
(plateau RSS - idle RSS) / count when all are held. Needs ``count`` x 2 + a few open files in
flowhost and ``count`` in the fake and in this client: the soft ``RLIMIT_NOFILE`` is raised to
the hard one here, and the servers inherit it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

from bench.common import Config, cpu_seconds, llm_env, start_fake, start_flowhost
from bench.procs import HOST, Servers, open_fds, raise_nofile, rss_bytes
from bench.report import Check, Section

__all__ = ["run"]

TARGET_STREAMS = 2000
MAX_KB_PER_STREAM = 50.0
PIECES = 10
RAMP_WINDOW = 64  # streams waiting for their first piece at once
PLATEAU_SAMPLE_S = 2.0
SAMPLE_EVERY_S = 0.25
WARMUP_STREAMS = 20
CONNECT_TIMEOUT_S = 30.0
RAMP_TIMEOUT_S = 240.0  # every stream must have had its first piece by then
END_SLACK_S = 60.0  # after the hold, how long the last streams may take to end


@dataclass
class Stream:
    status: int = 0
    pieces: list[str] = field(default_factory=list)
    first_piece_at: float | None = None  # monotonic
    ended_at: float | None = None
    chunked_end: bool = False
    last_answer: str | None = None
    error: str | None = None


@dataclass
class Tally:
    """Live counts across the streams (one event loop: no locks)."""

    count: int
    first: int = 0  # streams that have had their first piece
    ended: int = 0  # streams that ended (normally or not)
    held: int = 0  # first piece seen and not yet ended
    max_held: int = 0
    ended_before_plateau: int = 0
    all_started: asyncio.Event = field(default_factory=asyncio.Event)

    def on_first(self) -> None:
        self.first += 1
        self.held += 1
        self.max_held = max(self.max_held, self.held)
        if self.first == self.count:
            self.all_started.set()

    def on_end(self, had_first: bool) -> None:
        self.ended += 1
        if had_first:
            self.held -= 1
        if not self.all_started.is_set():
            self.ended_before_plateau += 1


def _question(hold: float, pieces: int = PIECES) -> tuple[str, list[str]]:
    words = [f"p{i}" for i in range(pieces)]
    delay = hold / max(1, pieces - 1)
    text = f"hi [[fake:chunks={'|'.join(words)}]] [[fake:chunk_delay={delay:g}]]"
    return text, words


def _request(port: int, question: str) -> bytes:
    body = json.dumps({"question": question}).encode()
    head = (
        f"POST / HTTP/1.1\r\nHost: {HOST}:{port}\r\nAccept: text/event-stream\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


def _parse_events(buf: bytearray, st: Stream, tally: Tally) -> bytearray:
    """Consume the complete SSE events at the front of ``buf``; return the rest."""
    while True:
        end = buf.find(b"\n\n")
        if end < 0:
            return buf
        raw, buf = bytes(buf[:end]), buf[end + 2 :]
        name, data = None, None
        for line in raw.split(b"\n"):
            key, _, value = line.partition(b":")
            if key == b"event":
                name = value.strip().decode()
            elif key == b"data":
                data = value.removeprefix(b" ")
        if name == "Error":
            st.error = st.error or f"event: Error {(data or b'').decode()[:100]}"
            continue
        if data is None:
            continue
        answer = json.loads(data).get("answer")
        st.last_answer = answer
        if answer:
            st.pieces.append(answer)
            if st.first_piece_at is None:
                st.first_piece_at = time.monotonic()
                tally.on_first()


async def _one(
    port: int, request: bytes, st: Stream, tally: Tally, window: asyncio.Semaphore, deadline: float
) -> None:
    writer: asyncio.StreamWriter | None = None
    released = False
    try:
        async with asyncio.timeout_at(deadline):
            await window.acquire()
            try:
                reader, w = await asyncio.wait_for(
                    asyncio.open_connection(HOST, port, limit=2**20), CONNECT_TIMEOUT_S
                )
                writer = w
                w.write(request)
                status_line = await reader.readline()
                parts = status_line.split(b" ", 2)
                st.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
                chunked = False
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"transfer-encoding" and b"chunked" in v.lower():
                        chunked = True
                if st.status != 200 or not chunked:
                    rest = await reader.read(2000)
                    st.error = (
                        f"HTTP {st.status}{'' if chunked else ' (not chunked)'}: {rest[:120]!r}"
                    )
                    return
                buf = bytearray()
                while True:
                    size_line = await reader.readline()
                    if not size_line:
                        st.error = "connection closed before the end of the body"
                        return
                    size = int(size_line.split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while (line := await reader.readline()) not in (b"\r\n", b""):
                            pass
                        st.chunked_end = True
                        break
                    buf += await reader.readexactly(size)
                    await reader.readexactly(2)
                    had_first = st.first_piece_at is not None
                    buf = _parse_events(buf, st, tally)
                    if not had_first and st.first_piece_at is not None:
                        window.release()
                        released = True
            finally:
                if not released:
                    window.release()
    except TimeoutError:
        st.error = st.error or "timed out"
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        st.error = st.error or f"{type(exc).__name__}: {exc}"[:160]
    finally:
        st.ended_at = time.monotonic()
        tally.on_end(st.first_piece_at is not None)
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def _verdict(st: Stream, words: list[str]) -> str | None:
    if st.error:
        return st.error
    if not st.chunked_end:
        return "body did not end normally"
    if st.pieces != words:
        return f"pieces {st.pieces[:3]}... != the {len(words)} sent"
    if st.last_answer != "":
        return "no closing empty answer"
    return None


@dataclass
class Samples:
    """The server's figures during the load: every ``SAMPLE_EVERY_S`` and at the plateau."""

    peak_rss: int = 0
    peak_fds: tuple[int, int] = (0, 0)
    plateau_rss: list[int] = field(default_factory=list)
    plateau_fds: tuple[int, int] = (0, 0)
    fake_rss: int = 0
    client_rss: int = 0
    ramp_s: float | None = None  # seconds until every stream had its first piece
    held_at_plateau: int = 0

    def take(self, pid: int) -> tuple[int, tuple[int, int]]:
        rss = rss_bytes(pid)
        try:
            fds = open_fds(pid)
        except OSError:
            fds = (0, 0)
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_fds = max(self.peak_fds, fds)
        return rss, fds


async def _sampler(pid: int, samples: Samples, stop: asyncio.Event) -> None:
    while not stop.is_set():
        samples.take(pid)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SAMPLE_EVERY_S)


async def _load(
    port: int, server_pid: int, fake_pid: int, count: int, hold: float
) -> tuple[list[Stream], Tally, Samples, list[str]]:
    question, words = _question(hold)
    request = _request(port, question)
    tally = Tally(count)
    window = asyncio.Semaphore(RAMP_WINDOW)
    streams = [Stream() for _ in range(count)]
    samples, stop = Samples(), asyncio.Event()
    sampler = asyncio.create_task(_sampler(server_pid, samples, stop))
    t0 = time.monotonic()
    deadline = t0 + RAMP_TIMEOUT_S + hold + END_SLACK_S
    tasks = [
        asyncio.create_task(_one(port, request, st, tally, window, deadline)) for st in streams
    ]
    try:
        await asyncio.wait_for(tally.all_started.wait(), RAMP_TIMEOUT_S)
    except TimeoutError:
        pass
    else:
        samples.ramp_s = time.monotonic() - t0
        samples.held_at_plateau = tally.held
        until = time.monotonic() + PLATEAU_SAMPLE_S
        while time.monotonic() < until:
            rss, fds = samples.take(server_pid)
            samples.plateau_rss.append(rss)
            samples.plateau_fds = max(samples.plateau_fds, fds)
            await asyncio.sleep(SAMPLE_EVERY_S)
        samples.fake_rss = rss_bytes(fake_pid)
        samples.client_rss = _own_rss()
    await asyncio.gather(*tasks, return_exceptions=True)
    stop.set()
    await sampler
    return streams, tally, samples, words


def _own_rss() -> int:
    """This process's RSS alone (``rss_bytes`` adds its children: the servers)."""
    pages = int(open("/proc/self/statm").read().split()[1])  # noqa: SIM115 - one read
    return pages * os.sysconf("SC_PAGE_SIZE")


def _run_loop(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def _warm_up(port: int) -> None:
    async def go() -> None:
        question, _ = _question(0.05, pieces=3)
        tally = Tally(WARMUP_STREAMS)
        window = asyncio.Semaphore(WARMUP_STREAMS)
        sts = [Stream() for _ in range(WARMUP_STREAMS)]
        deadline = time.monotonic() + 60
        await asyncio.gather(
            *(_one(port, _request(port, question), st, tally, window, deadline) for st in sts)
        )
        bad = [st.error or "no pieces" for st in sts if st.error or not st.pieces]
        if bad:
            raise RuntimeError(f"warm-up streams failed: {bad[0]}")

    _run_loop(go())


def run(cfg: Config) -> Section:
    count, hold = cfg.streams_count, cfg.streams_hold
    nofile = raise_nofile(count * 3 + 1024)
    sec = Section(
        "streams: concurrent SSE streams held by one process",
        f"flowhost `serve examples/flows/chat --no-history` (tracing on) over the fake LLM "
        f"(separate process, load CPU). {count:,} simple-mode `POST /` streams "
        "(`Accept: text/event-stream`) from one asyncio client (raw streams, uvloop), at most "
        f"{RAMP_WINDOW} waiting for their first piece at a time; each reply is {PIECES} pieces "
        f"spread over {hold:g} s, so each flowhost stream also holds one upstream stream. "
        "Held: a stream that has had its first piece and has not ended; the target needs all "
        f"{count:,} held at once. The server's RSS and fds are sampled every "
        f"{SAMPLE_EVERY_S:g} s; idle is after {WARMUP_STREAMS} warm-up streams. RSS per held "
        "stream = (peak RSS - idle RSS) / most held at once (= (plateau - idle) / streams when "
        "all are held).",
    )
    with Servers(cfg.pinning) as servers:
        fake = start_fake(servers, delay=0.0, cpus=cfg.pinning.load)
        fh = start_flowhost(servers, cfg, app="chat", cpus=cfg.pinning.server, env=llm_env(fake))
        _warm_up(fh.port)
        time.sleep(1.0)  # let the warm-up's connections close before reading idle figures
        idle_rss = rss_bytes(fh.pid)
        idle_fds = open_fds(fh.pid)
        cpu0 = cpu_seconds(fh.pid)
        t0 = time.monotonic()
        streams, tally, samples, words = _run_loop(_load(fh.port, fh.pid, fake.pid, count, hold))
        elapsed = time.monotonic() - t0
        server_cpu = cpu_seconds(fh.pid) - cpu0
        alive = fh.proc.poll() is None
        after_rss = rss_bytes(fh.pid) if alive else 0
    errors: dict[str, int] = {}
    for st in streams:
        why = _verdict(st, words)
        if why is not None:
            errors[why] = errors.get(why, 0) + 1
    n_err = sum(errors.values())
    mb = 2**20
    held = tally.max_held
    all_held = samples.ramp_s is not None and tally.ended_before_plateau == 0
    # per held stream, from the peak: when the streams were not all held at once, the waiting
    # connections count against the held ones (an over-estimate, never an under-estimate)
    per_stream_kb = (samples.peak_rss - idle_rss) / max(1, held) / 1024
    header = [
        "streams",
        "most held at once",
        "all first pieces after (s)",
        "idle RSS (MB)",
        "peak RSS (MB)",
        "RSS per held stream (KB)",
        "fds idle -> peak (sockets)",
        "errors",
    ]
    row = [
        f"{count:,}",
        f"{held:,}",
        f"{samples.ramp_s:.1f}" if samples.ramp_s is not None else "never",
        f"{idle_rss / mb:.1f}",
        f"{samples.peak_rss / mb:.1f}",
        f"{per_stream_kb:.1f}",
        f"{idle_fds[0]} -> {samples.peak_fds[0]} ({samples.peak_fds[1]})",
        f"{n_err:,}",
    ]
    sec.tables.append([header, row])
    if samples.plateau_rss:
        sec.notes.append(
            f"when every stream had had its first piece: {samples.held_at_plateau:,} held, "
            f"{tally.ended_before_plateau:,} already ended; server RSS "
            f"{min(samples.plateau_rss) / mb:.1f}-{max(samples.plateau_rss) / mb:.1f} MB, "
            f"{samples.plateau_fds[0]} fds ({samples.plateau_fds[1]} sockets)"
        )
    if not all_held:
        sec.notes.append(
            f"**not all {count:,} streams were held at once**: at most {held:,} had their first "
            f"piece and had not ended (a cap in the server or the fake LLM, or a ramp longer "
            f"than the {hold:g} s hold)"
        )
    sec.notes += [
        f"server: RSS after the streams ended {after_rss / mb:.1f} MB; CPU {server_cpu:.1f} s "
        f"over the {elapsed:.0f} s run ({server_cpu / count * 1e3:.1f} ms per stream)",
        f"fake LLM RSS at the plateau {samples.fake_rss / mb:.0f} MB; this client "
        f"{samples.client_rss / mb:.0f} MB; RLIMIT_NOFILE {nofile:,}",
    ]
    if not alive:
        sec.notes.append("**the server exited during the run**")
    for why, n in sorted(errors.items(), key=lambda e: -e[1])[:8]:
        sec.notes.append(f"error: {n:,} x {why}")
    sec.checks += [
        Check(
            "concurrent SSE streams held by one process",
            f"{held:,} of {count:,}",
            f">= {TARGET_STREAMS:,}",
            held >= TARGET_STREAMS and all_held,
        ),
        Check("stream errors", f"{n_err:,}", "0", n_err == 0 and alive),
        Check(
            "RSS per held stream",
            f"{per_stream_kb:.1f} KB",
            f"<= {MAX_KB_PER_STREAM:g} KB",
            per_stream_kb <= MAX_KB_PER_STREAM,
        ),
    ]
    return sec
