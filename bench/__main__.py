"""``python -m bench [scenario ...] [--duration S] [--quick]``: run, print, write RESULTS.md.

Exit status: 0 when every target is met, 1 when a target failed, 2 when a scenario did not finish.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from bench import llm, simple, startup, streams, ttfb
from bench.common import Config
from bench.loadgen import WRK_INSTALL_HINT, LoadGen
from bench.procs import ROOT, Pinning
from bench.report import Section, background_load, machine_description, render_results

SCENARIOS: dict[str, Callable[[Config], Section]] = {
    "simple": simple.run,
    "startup": startup.run,
    "llm": llm.run,
    "ttfb": ttfb.run,
    "streams": streams.run,
}
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
FALLBACK_NOTE = (
    "Measured with the Python fallback load generator (`python-httpx`): on a small machine it "
    "runs out of CPU long before the servers do, so its req/s and ratios mostly measure the "
    "client. Use wrk for real figures."
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="flowhost benchmarks; results (with ratios to same-run baselines) go to "
        f"{RESULTS.relative_to(ROOT)}.",
    )
    parser.add_argument(
        "scenarios",
        nargs="*",
        metavar="scenario",
        help=f"any of {', '.join(SCENARIOS)} (default: all)",
    )
    parser.add_argument(
        "--duration", type=float, help="seconds per timed load run (simple: 3 per round, llm: 30)"
    )
    parser.add_argument("--quick", action="store_true", help="short runs: the whole suite < 1 min")
    parser.add_argument(
        "--loadgen",
        choices=["wrk", "python"],
        default="wrk",
        help="wrk (default; falls back to python when missing) or the python fallback",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    args = parser.parse_args(argv)
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(
            f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}"
        )
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    names = list(dict.fromkeys(args.scenarios)) or list(SCENARIOS)
    pinning = Pinning.detect(enabled=not args.no_pin)
    loadgen = LoadGen(prefer_wrk=args.loadgen == "wrk", cpus=pinning.load)
    if loadgen.missing_wrk:
        print(f"WARNING: {WRK_INSTALL_HINT}\n", file=sys.stderr, flush=True)
    cfg = Config.build(pinning, loadgen, quick=args.quick, duration=args.duration)
    machine = machine_description(
        ROOT,
        loadgen=f"{loadgen.tool}: {loadgen.version()}",
        pinning=pinning.describe(),
        load_before=background_load(0.5),
    )
    pinning.pin_self_to_load()  # health polls, the ttfb client and the python load generator
    started, t0 = dt.datetime.now(dt.UTC), time.monotonic()
    sections: list[Section] = []
    for name in names:
        print(f"== {name} ...", flush=True)
        t1 = time.monotonic()
        try:
            section = SCENARIOS[name](cfg)
        except KeyboardInterrupt:
            print("interrupted; servers stopped", file=sys.stderr)
            return 130
        except Exception as exc:
            traceback.print_exc()
            section = Section(
                f"{name}: did not finish", error=f"{type(exc).__name__}: {exc}"[:2000]
            )
        section.notes.extend(cfg.notes)
        cfg.notes.clear()
        if loadgen.wrk is None and name in ("simple", "llm"):
            section.notes.append(FALLBACK_NOTE)
            if loadgen.missing_wrk:
                section.notes.append(WRK_INSTALL_HINT)
        sections.append(section)
        print(section.markdown(), f"({time.monotonic() - t1:.0f} s)\n", sep="\n", flush=True)
    elapsed = time.monotonic() - t0
    text = render_results(
        sections, machine, started=started, elapsed=elapsed, load_after=background_load(0.5)
    )
    RESULTS.write_text(text, encoding="utf-8")
    print(text.split("## Machine")[0].strip().splitlines()[-1])
    print(f"written to {RESULTS}")
    if any(s.error for s in sections):
        return 2
    return 1 if any(not c.passed for s in sections for c in s.checks) else 0


if __name__ == "__main__":
    sys.exit(main())
