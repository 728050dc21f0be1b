"""Server subprocesses for the benchmarks: spawn (optionally pinned), poll health, always stop.

Every server listens on 127.0.0.1 on a free port. ``Servers`` is a context manager that stops
every process it started (SIGTERM, then SIGKILL), even when a scenario fails or is interrupted.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = [
    "EXAMPLES",
    "ROOT",
    "Pinning",
    "ServerProc",
    "ServerStartError",
    "Servers",
    "free_port",
    "health_ok",
    "open_fds",
    "raise_nofile",
    "rss_bytes",
]

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "flows"
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Pinning:
    """Which CPUs the server under test and the load generator run on.

    With two or more CPUs (and ``taskset``), the server under test gets the first CPU and the load
    generator (and helper servers such as the fake LLM) the second, for baseline and flowhost alike.
    """

    server: tuple[int, ...] | None
    load: tuple[int, ...] | None

    @classmethod
    def detect(cls, enabled: bool = True) -> Pinning:
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        if not enabled or len(cpus) < 2 or shutil.which("taskset") is None:
            return cls(None, None)
        return cls((cpus[0],), (cpus[1],))

    @property
    def enabled(self) -> bool:
        return self.server is not None

    def describe(self) -> str:
        if self.server is None or self.load is None:
            return "not pinned"
        return f"server under test on CPU {_cpus(self.server)}, load generator on CPU {_cpus(self.load)}"

    def prefix(self, cpus: tuple[int, ...] | None) -> list[str]:
        return ["taskset", "-c", _cpus(cpus)] if cpus is not None else []

    def pin_self_to_load(self) -> None:
        """Pin this (client) process to the load CPU: the Python client and fallback generator."""
        if self.load is not None:
            os.sched_setaffinity(0, set(self.load))


def _cpus(cpus: tuple[int, ...] | None) -> str:
    return ",".join(str(c) for c in cpus or ())


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment without the user's flowhost / LLM settings, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI_", "DASHSCOPE_", "FLOWHOST_"))
    }
    env["PYTHONUNBUFFERED"] = "1"
    # Bytecode caches as a deployed install has them (pip compiles a package as it installs it):
    # with PYTHONDONTWRITEBYTECODE (set on some machines), the editable checkout's own modules
    # would be compiled from source at every start, and start-up timed with that (~0.1 s here).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.update(extra or {})
    return env


def health_ok(port: int, path: str = "/health", timeout: float = 0.5) -> bool:
    """One GET on 127.0.0.1:port; True on a 200. Connection errors are False."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` plus its children (0 when it is gone)."""
    total = 0
    pids = [pid]
    while pids:
        p = pids.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except (OSError, ValueError):
            continue
        pids.extend(int(c) for c in children)
    return total


def open_fds(pid: int) -> tuple[int, int]:
    """(open file descriptors, of which sockets) of ``pid``. Raises OSError when it is gone."""
    fds = sockets = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        fds += 1
        sockets += target.startswith("socket:")
    return fds, sockets


def raise_nofile(wanted: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards ``wanted`` (at most the hard limit); the
    servers it starts inherit it. Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    cap = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < cap:
        resource.setrlimit(resource.RLIMIT_NOFILE, (cap, hard))
        soft = cap
    return soft


class ServerStartError(RuntimeError):
    def __init__(self, name: str, reason: str, log: str) -> None:
        super().__init__(f"{name} failed to start: {reason}\n--- last output ---\n{log[-3000:]}")
        self.log = log


@dataclass
class ServerProc:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    started_at: float  # time.perf_counter() just before the spawn
    ready_after: float | None = None  # seconds from spawn to the first 200 on /health
    cmd: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_healthy(self, timeout: float = 30.0, interval: float = 0.005) -> float:
        """Poll ``/health`` until 200 (no fixed sleeps); return seconds since the spawn."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerStartError(
                    self.name, f"exited with {self.proc.returncode}", self.output()
                )
            if health_ok(self.port, timeout=min(1.0, timeout)):
                self.ready_after = time.perf_counter() - self.started_at
                return self.ready_after
            time.sleep(interval)
        raise ServerStartError(self.name, f"not healthy within {timeout:g}s", self.output())

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


class Servers:
    """Starts server subprocesses and stops every one of them on exit."""

    def __init__(self, pinning: Pinning) -> None:
        self.pinning = pinning
        self.procs: list[ServerProc] = []
        self._tmp = tempfile.TemporaryDirectory(prefix="flowhost-bench-")
        self.tmp = Path(self._tmp.name)

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        cpus: tuple[int, ...] | None,
        env: dict[str, str] | None = None,
        port: int | None = None,
        wait: bool = True,
        timeout: float = 30.0,
        exe: Sequence[str] | None = None,
    ) -> ServerProc:
        """Spawn ``python argv... --port P`` (or ``exe argv... --port P``) on ``cpus``; by
        default wait for ``/health``."""
        port = port or free_port()
        log = self.tmp / f"{name}-{port}.log"
        program = list(exe) if exe is not None else [sys.executable]
        cmd = [*self.pinning.prefix(cpus), *program, *argv, "--port", str(port)]
        full_env = clean_env({"FLOWHOST_DATA_DIR": str(self.tmp / "data"), **(env or {})})
        with log.open("wb") as fh:
            started = time.perf_counter()
            proc = subprocess.Popen(
                cmd,
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=self.tmp,
                start_new_session=True,  # its own process group: stop() reaches any children
            )
        server = ServerProc(name, proc, port, log, started, cmd=cmd)
        self.procs.append(server)
        if wait:
            server.wait_healthy(timeout)
        return server

    def stop(self, server: ServerProc) -> None:
        server.stop()
        if server in self.procs:
            self.procs.remove(server)

    def close(self) -> None:
        while self.procs:
            self.procs.pop().stop()
        self._tmp.cleanup()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
