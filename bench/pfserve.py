"""promptflow's ``pf flow serve`` on the same echo flow, from a side venv (the ``simple`` scenario
runs it beside the bare app and flowhost when it can be installed; no target).

The venv is ``.venv-promptflow`` at the repository root (``pip install promptflow``, about 40 s
the first time; reused afterwards). ``FLOWHOST_BENCH_PROMPTFLOW=off`` skips it. The flow is a copy
of ``examples/flows/echo`` whose tool imports ``promptflow.core.tool`` instead of flowhost's, so
both servers answer ``POST`` ``{"question": "hi"}`` with the same bytes (promptflow at ``/score``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench.procs import EXAMPLES, HOST, ROOT, ServerProc, Servers

__all__ = ["PF_PATH", "PF_VENV", "promptflow_exe", "start_promptflow"]

PF_VENV = ROOT / ".venv-promptflow"
PF_PATH = "/score"  # where `pf flow serve` answers a flow's inputs
INSTALL_TIMEOUT = 900.0


def promptflow_exe(notes: list[str]) -> Path | None:
    """The side venv's ``pf``, installing it when missing; None (with a note) when it cannot be
    installed here or is turned off."""
    pf = PF_VENV / "bin" / "pf"
    if os.environ.get("FLOWHOST_BENCH_PROMPTFLOW", "").lower() in ("off", "0", "false"):
        return None
    if pf.exists():
        return pf
    print(f"installing promptflow into {PF_VENV.relative_to(ROOT)} (once)...", flush=True)
    try:
        subprocess.run(
            [sys.executable, "-m", "venv", str(PF_VENV)], check=True, capture_output=True
        )
        subprocess.run(
            [str(PF_VENV / "bin" / "pip"), "install", "-q", "promptflow"],
            check=True,
            capture_output=True,
            timeout=INSTALL_TIMEOUT,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        last = detail.decode(errors="replace").strip().splitlines()[-1:] or [str(exc)]
        notes.append(f"promptflow is not in this run: it could not be installed ({last[0]})")
        shutil.rmtree(PF_VENV, ignore_errors=True)
        return None
    return pf


def _flow(tmp: Path) -> Path:
    """The echo example with promptflow's ``tool`` decorator."""
    flow = tmp / "pf-echo"
    shutil.copytree(EXAMPLES / "echo", flow)
    code = flow / "echo.py"
    code.write_text(
        code.read_text().replace("from flowhost import tool", "from promptflow.core import tool")
    )
    return flow


def start_promptflow(servers: Servers, pf: Path, *, cpus: tuple[int, ...] | None) -> ServerProc:
    flow = _flow(servers.tmp)
    argv = ["flow", "serve", "--source", str(flow), "--host", HOST, "--skip-open-browser"]
    return servers.start("promptflow", argv, cpus=cpus, exe=[str(pf)], timeout=120.0)
