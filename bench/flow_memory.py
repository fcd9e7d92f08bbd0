"""What grows in the flow process: the CLI run in this process under tracemalloc, snapshots diffed over time.

    PYTHONPATH=. .venv/bin/python bench/flow_memory.py CONFIG --out OUT [--every 20] [--first 60] [--top 25]
                  [--mode explain] [--devices cpu:2]

A thread records the process's RSS every ``--every`` seconds, starts tracemalloc ``--first`` seconds in (the
workers are up, shards are flowing; tracing the imports and the start would cost minutes) with a first snapshot,
and keeps the latest one. When the run ends it prints the RSS
trace, the flow process's peak RSS (VmHWM) and the allocation sites that grew most between the two snapshots,
grouped by line (``--group traceback`` for whole stacks). tracemalloc slows the flow process itself down; use
it to find a holder, and bench/bench_scale.py (no tracing) for the figures.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import tracemalloc
from pathlib import Path


def status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--out", required=True)
    parser.add_argument("--mode", default="explain", choices=["explain", "run"])
    parser.add_argument("--devices", default="cpu:2")
    parser.add_argument("--every", type=float, default=20.0)
    parser.add_argument("--first", type=float, default=60.0)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--group", default="lineno", choices=["lineno", "traceback", "filename"])
    parser.add_argument("--report", type=float, default=0.0, help="also print the growth every this many seconds")
    args = parser.parse_args()
    start = time.monotonic()
    kept: dict[str, tracemalloc.Snapshot] = {}
    trace: list[tuple[float, int]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(args.every):
            trace.append((time.monotonic() - start, status_kib("VmRSS")))
            if "first" not in kept and time.monotonic() - start >= args.first:
                tracemalloc.start(args.frames)  # only now: tracing the imports and the start costs minutes
                kept["first"] = tracemalloc.take_snapshot()
            elif "first" in kept:
                kept["last"] = tracemalloc.take_snapshot()
                reports = int((time.monotonic() - start - args.first) // args.report) if args.report else 0
                if reports > kept.get("reports", 0):  # a growth report now and then, against the one before:
                    kept["reports"] = reports             # the workers' start is behind us, shards are flowing
                    if "previous" in kept:
                        show(kept["last"].compare_to(kept["previous"], args.group), args,
                             f"{time.monotonic() - start:.0f} s (against the report before)")
                    kept["previous"] = kept["last"]

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    from flows.cli import _run_flow

    try:
        _run_flow(Path(args.config), Path(args.out), args.mode, devices=args.devices)
    finally:
        done.set()
        thread.join()
    print("RSS (s, MiB):", ", ".join(f"{t:.0f}:{kib / 1024:.0f}" for t, kib in trace))
    print(f"flow process peak RSS (VmHWM): {status_kib('VmHWM') / 1024:.1f} MiB")
    if "last" not in kept:
        print("run too short for two snapshots: lower --first / --every", file=sys.stderr)
        return
    show(kept["last"].compare_to(kept["first"], args.group), args, "the last snapshot")


def show(stats: list[tracemalloc.StatisticDiff], args: argparse.Namespace, when: str) -> None:
    print(f"top {args.top} growth ({args.group}) between {args.first:.0f} s and {when} "
          f"(RSS now {status_kib('VmRSS') / 1024:.0f} MiB):", flush=True)
    for stat in stats[: args.top]:
        print(f"  {stat.size_diff / 1024:+10.1f} KiB {stat.count_diff:+8d} blocks  {stat.traceback.format()[-1]}")
        if args.group == "traceback":
            for line in stat.traceback.format()[:-1][-8:]:
                print("      " + line)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
