"""Where flowhost spends its time per request: py-spy under a scenario's load.

``python -m bench.profile {simple,llm} [--seconds S] [--connections N] [--out FILE]``

Starts flowhost as the ``simple`` (echo app) or ``llm`` (chat app + fake LLM with 1 s delay)
scenario does, warms it up, then samples it with ``py-spy record --gil`` (only samples holding
the GIL, so idle threads do not count) while the load generator runs. Prints the top functions
by own time and by inclusive time, and writes py-spy's raw (collapsed) stacks to ``--out``
(default ``$TMPDIR/flowhost-profile-<scenario>.txt``; open it with speedscope or
flamegraph.pl). Needs py-spy:
``.venv/bin/pip install py-spy`` (it attaches with ptrace: run as root or allow ptrace).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from bench.common import Config, llm_env, start_fake, start_flowhost
from bench.llm import DELAY_S, FLOWHOST_BODY
from bench.loadgen import WRK_INSTALL_HINT, LoadGen
from bench.procs import Pinning, Servers

__all__ = ["main", "summarize"]


def summarize(raw: Path, top: int = 25) -> str:
    """Top frames by own and inclusive samples from py-spy's raw output."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for frame in set(frames):
            incl[frame] += n
    if not total:
        return "no samples"
    out = [f"{total} samples holding the GIL", "", "own time:"]
    out += [f"  {n / total:6.1%}  {f}" for f, n in own.most_common(top)]
    out += ["", "inclusive time (flowhost, openai, httpx/httpcore, starlette/fastapi frames):"]
    keys = ("flowhost/", "openai/", "httpcore", "httpx", "starlette/", "fastapi/", "jinja2/")
    hot = [(f, n) for f, n in incl.most_common() if any(k in f for k in keys)]
    out += [f"  {n / total:6.1%}  {f}" for f, n in hot[: top * 2]]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("scenario", choices=["simple", "llm"])
    parser.add_argument("--seconds", type=float, default=8.0, help="sampling time")
    parser.add_argument("--connections", type=int, help="default: 32 (simple), 500 (llm)")
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument(
        "--out", type=Path, help="raw stacks file [$TMPDIR/flowhost-profile-SCENARIO.txt]"
    )
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("py-spy is missing: `.venv/bin/pip install py-spy`", file=sys.stderr)
        return 2
    pinning = Pinning.detect()
    loadgen = LoadGen(cpus=pinning.load)
    if loadgen.missing_wrk:
        print(WRK_INSTALL_HINT, file=sys.stderr)
    cfg = Config.build(pinning, loadgen, quick=False, duration=None)
    pinning.pin_self_to_load()
    conns = args.connections or (32 if args.scenario == "simple" else 500)
    out = args.out or Path(tempfile.gettempdir()) / f"flowhost-profile-{args.scenario}.txt"
    body = json.dumps(FLOWHOST_BODY).encode()
    with Servers(pinning) as servers:
        if args.scenario == "simple":
            fh = start_flowhost(servers, cfg, app="echo", cpus=pinning.server)
        else:
            fake = start_fake(servers, delay=DELAY_S, cpus=pinning.load)
            fh = start_flowhost(servers, cfg, app="chat", cpus=pinning.server, env=llm_env(fake))
        url = f"{fh.url}/"
        loadgen.run(url, body, connections=conns, duration=2, timeout=10)
        cmd = [
            spy,
            "record",
            "--gil",
            "--nonblocking",
            "-p",
            str(fh.pid),
            "-d",
            f"{max(1, round(args.seconds))}",
        ]
        cmd += ["-r", str(args.rate), "-f", "raw", "-o", str(out)]
        sampler = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            res = loadgen.run(url, body, connections=conns, duration=args.seconds + 2, timeout=10)
            _, err = sampler.communicate(timeout=args.seconds + 60)
        finally:
            if sampler.poll() is None:
                sampler.kill()
                sampler.wait(5)
    if sampler.returncode != 0 or not out.exists():
        print(f"py-spy failed: {err.decode(errors='replace')[-2000:]}", file=sys.stderr)
        return 2
    print(
        f"{args.scenario}: {conns} connections, {res.rps:,.0f} req/s, p50 {res.p50_ms:.2f} ms, "
        f"p99 {res.p99_ms:.2f} ms while sampled (sampling slows the server a little)\n"
    )
    print(summarize(out))
    print(f"\nraw stacks: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
