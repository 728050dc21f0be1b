"""Scenario results as Markdown (printed as they come, and written to ``bench/RESULTS.md``)."""

from __future__ import annotations

import datetime as dt
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

__all__ = [
    "Check",
    "Section",
    "background_load",
    "machine_description",
    "render_results",
    "table",
]

PACKAGES = (
    "flowhost",
    "fastapi",
    "starlette",
    "uvicorn",
    "uvloop",
    "httptools",
    "pydantic",
    "pydantic-core",
    "openai",
    "httpx",
    "anyio",
)


@dataclass(frozen=True)
class Check:
    """One target: PASS/FAIL."""

    name: str
    measured: str
    target: str
    passed: bool

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"


@dataclass
class Section:
    title: str
    description: str = ""
    tables: list[list[list[str]]] = field(default_factory=list)  # each: header row, then rows
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    def markdown(self) -> str:
        out = [f"## {self.title}", ""]
        if self.description:
            out += [self.description, ""]
        for t in self.tables:
            out += [table(t), ""]
        if self.checks:
            rows = [["target", "measured", "wanted", "result"]]
            rows += [[c.name, c.measured, c.target, f"**{c.verdict}**"] for c in self.checks]
            out += [table(rows), ""]
        if self.error:
            out += [f"**ERROR**: the scenario did not finish: `{self.error}`", ""]
        out += [f"- {n}" for n in self.notes]
        if self.notes:
            out.append("")
        return "\n".join(out)


def table(rows: list[list[str]]) -> str:
    head, *body = rows
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError):
        pass
    return "unknown"


def _git(root: Path) -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return f"{rev or 'unknown'}{' + uncommitted changes' if dirty else ''}"


def _version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_times() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields), idle


def background_load(seconds: float = 1.0) -> str:
    """How busy the machine is without us: CPU use over ``seconds`` and the load average."""
    try:
        total0, idle0 = _cpu_times()
        time.sleep(seconds)
        total1, idle1 = _cpu_times()
        load1 = os.getloadavg()[0]
    except (OSError, ValueError, IndexError):
        return "unknown"
    busy = 1 - (idle1 - idle0) / max(1, total1 - total0)
    warn = (
        " (**busy: other processes compete for the CPUs; expect noisy numbers**)"
        if busy > 0.15
        else ""
    )
    return f"{busy:.0%} of all CPUs busy, load average {load1:.2f}{warn}"


def _reference_work() -> int:
    n = 0
    for i in range(200_000):
        item: dict[str, str] = {"id": str(i), "text": f"item {i}"}
        n += len(item["text"])
    return n


def speed_reference(rounds: int = 5) -> str:
    """CPU time of a fixed pure-Python loop (dicts, f-strings), the median of ``rounds``: the
    absolute targets (cold start, latencies, retrieval) move with it from machine to machine,
    ratios to a same-run baseline do not. Lower is faster."""
    times = []
    for _ in range(rounds):
        t0 = time.process_time()
        _reference_work()
        times.append(time.process_time() - t0)
    return f"{statistics.median(times) * 1e3:.0f} ms of CPU for a fixed Python loop (lower: faster)"


def machine_description(
    root: Path, *, loadgen: str, pinning: str, load_before: str
) -> list[list[str]]:
    cpus = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cpus
    return [
        ["item", "value"],
        ["CPU", _cpu_model()],
        ["cores", f"{cpus} logical ({usable} usable by this process)"],
        ["memory", _mem_total()],
        ["OS", f"{platform.system()} {platform.release()} ({platform.machine()})"],
        ["Python", f"{platform.python_implementation()} {platform.python_version()}"],
        ["speed reference", speed_reference()],
        ["packages", ", ".join(f"{p} {_version(p)}" for p in PACKAGES)],
        ["load generator", loadgen],
        ["CPU pinning", pinning],
        ["flowhost commit", _git(root)],
        ["other load before the run", load_before],
    ]


def render_results(
    sections: list[Section],
    machine: list[list[str]],
    *,
    started: dt.datetime,
    elapsed: float,
    load_after: str,
) -> str:
    command = " ".join(["python -m bench", *map(shlex.quote, sys.argv[1:])])
    checks = [c for s in sections for c in s.checks]
    failed = [c for c in checks if not c.passed]
    errors = [s.title for s in sections if s.error]
    summary = f"{len(checks) - len(failed)}/{len(checks)} targets met"
    if errors:
        summary += f"; {len(errors)} scenario(s) did not finish: {', '.join(errors)}"
    out = [
        "# flowhost benchmark results",
        "",
        f"Generated by `{command}` on {started:%Y-%m-%d %H:%M} UTC in {elapsed:.0f} s; "
        "this file is overwritten by every run. Every ratio compares against a baseline measured "
        "in the same run, on the same machine, with the same pinning and load generator.",
        "",
        f"**Summary: {summary}.**",
        "",
        "## Machine",
        "",
        table([*machine, ["other load after the run", load_after]]),
        "",
    ]
    out += [s.markdown() for s in sections]
    return "\n".join(out).rstrip() + "\n"
