"""Load generators: ``wrk`` (preferred) or a labelled Python asyncio + httpx fallback.

``wrk`` is driven with a Lua script that sets the POST body and, in ``done()``, prints one JSON
line with the exact counts and latency percentiles (``BENCH_JSON {...}``). The Python fallback
shares the machine's CPUs with the servers in a far less efficient client, so its numbers are
only comparable with other fallback numbers from the same run; every result says which tool made
it.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

__all__ = ["WRK_INSTALL_HINT", "LoadGen", "LoadResult", "percentile"]

WRK_INSTALL_HINT = (
    "wrk is not installed. Install it for accurate numbers: `sudo apt-get install -y wrk` "
    "(Debian/Ubuntu), `sudo dnf install wrk` (Fedora) or `brew install wrk` (macOS). "
    "Falling back to the Python asyncio+httpx load generator (labelled `python-httpx`)."
)
PY_TOOL = "python-httpx (fallback)"
_MAX_PY_REQUESTS = 5_000_000  # a bound on the fallback's loop besides its duration

_LUA = """\
wrk.method = "POST"
wrk.body = [==[{body}]==]
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {{"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"mean_us":%.1f,"max_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean, latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, round(pct / 100 * len(sorted_values) + 0.5 - 1e-9))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class LoadResult:
    tool: str
    connections: int
    duration_s: float
    requests: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def error_text(self) -> str:
        bad = {k: v for k, v in self.errors.items() if v}
        return ", ".join(f"{k} {v}" for k, v in bad.items()) if bad else "0"


class LoadGen:
    """Runs one fixed-duration, fixed-concurrency POST load against a URL."""

    def __init__(self, *, prefer_wrk: bool = True, cpus: tuple[int, ...] | None = None) -> None:
        self.wrk = shutil.which("wrk") if prefer_wrk else None
        self.cpus = cpus
        self.missing_wrk = prefer_wrk and self.wrk is None

    @property
    def tool(self) -> str:
        return "wrk" if self.wrk else PY_TOOL

    def version(self) -> str:
        if not self.wrk:
            return f"httpx {httpx.__version__} (fallback)"
        out = subprocess.run(
            [self.wrk, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
        return (
            (out.stdout or out.stderr).splitlines()[0].strip()
            if (out.stdout or out.stderr)
            else "wrk"
        )

    def run(
        self,
        url: str,
        body: bytes,
        *,
        connections: int,
        duration: float,
        headers: dict[str, str] | None = None,
        timeout: float = 5.0,
    ) -> LoadResult:
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        if self.wrk:
            return self._run_wrk(url, body, hdrs, connections, duration, timeout)
        return asyncio.run(_py_load(url, body, hdrs, connections, duration, timeout))

    def _run_wrk(
        self,
        url: str,
        body: bytes,
        headers: dict[str, str],
        connections: int,
        duration: float,
        timeout: float,
    ) -> LoadResult:
        assert self.wrk is not None
        text = body.decode()
        if "]==]" in text:
            raise ValueError("the body must not contain ']==]'")
        lua_headers = "\n".join(
            f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()
        )
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
            fh.write(_LUA.format(body=text, headers=lua_headers))
            script = Path(fh.name)
        threads = max(1, min(len(self.cpus or ()) or 1, connections))
        cmd = [
            *(["taskset", "-c", ",".join(map(str, self.cpus))] if self.cpus else []),
            self.wrk,
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
            f"--timeout={max(1, round(timeout))}s",
            "-s",
            str(script),
            url,
        ]
        try:
            out = subprocess.run(
                cmd, capture_output=True, text=True, timeout=duration + timeout + 30, check=False
            )
        finally:
            script.unlink(missing_ok=True)
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
        if out.returncode != 0 or line is None:
            raise RuntimeError(
                f"wrk failed ({out.returncode}): {out.stdout[-2000:]}{out.stderr[-2000:]}"
            )
        data = json.loads(line.removeprefix("BENCH_JSON "))
        return LoadResult(
            tool="wrk",
            connections=connections,
            duration_s=data["duration_us"] / 1e6,
            requests=data["requests"],
            p50_ms=data["p50_us"] / 1e3,
            p90_ms=data["p90_us"] / 1e3,
            p99_ms=data["p99_us"] / 1e3,
            mean_ms=data["mean_us"] / 1e3,
            max_ms=data["max_us"] / 1e3,
            errors={k: int(data[k]) for k in ("connect", "read", "write", "status", "timeout")},
        )


async def _py_load(
    url: str,
    body: bytes,
    headers: dict[str, str],
    connections: int,
    duration: float,
    timeout: float,
) -> LoadResult:
    """Closed-loop load: ``connections`` workers each send one request after the other."""
    latencies: list[float] = []
    errors = {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        start = time.perf_counter()
        deadline = start + duration

        async def worker() -> None:
            while time.perf_counter() < deadline and len(latencies) < _MAX_PY_REQUESTS:
                t0 = time.perf_counter()
                try:
                    resp = await client.post(url, content=body, headers=headers)
                except httpx.TimeoutException:
                    errors["timeout"] += 1
                    continue
                except httpx.ConnectError:
                    errors["connect"] += 1
                    continue
                except httpx.HTTPError:
                    errors["read"] += 1
                    continue
                latencies.append(time.perf_counter() - t0)
                if resp.status_code >= 400:
                    errors["status"] += 1

        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    ms = [x * 1e3 for x in latencies]
    return LoadResult(
        tool=PY_TOOL,
        connections=connections,
        duration_s=elapsed,
        requests=len(ms),
        p50_ms=percentile(ms, 50),
        p90_ms=percentile(ms, 90),
        p99_ms=percentile(ms, 99),
        mean_ms=sum(ms) / len(ms) if ms else 0.0,
        max_ms=ms[-1] if ms else 0.0,
        errors=errors,
    )
