"""The flow process's peak RSS step by step: the CLI run in this process, each flow step's own peak measured.

    PYTHONPATH=. .venv/bin/python bench/flow_peaks.py explain CONFIG --out OUT.parquet [other CLI arguments]

A short-lived allocation (a table built and freed within a second) raises a process's peak RSS (VmHWM) but
escapes a sampled RSS trace. Here the kernel's peak is read and reset (``/proc/self/clear_refs``) at every entry
to and exit from a step, so each step's peak is exact whatever its length: the largest RSS the process reached
while the step ran, steps inside it included. Printed at exit, per step in the order they first ran: how often it
ran, the RSS when it first started, its peak, and its peak above its own start (the largest over its calls).
The steps are the flow's (flows/pipeline.py) and the end of the explain step (merge, account, artifacts); what
runs after the flow (the CLI's output, the cluster's shutdown) is "after the flow". Linux only.
"""

from __future__ import annotations

import atexit
import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flow_memory import status_kib  # bench/, this script's folder

CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass
class Step:
    name: str
    calls: int = 0
    first_start_kib: int = 0
    peak_kib: int = 0
    rise_kib: int = 0  # the largest peak above the start of the same call


@dataclass
class Peaks:
    """Open steps' running peaks; every read of VmHWM is followed by a reset, so each read covers the time since
    the previous one and is credited to every step open during it."""

    steps: dict[str, Step] = field(default_factory=dict)
    open: list[tuple[Step, int, list[int]]] = field(default_factory=list)  # (step, start RSS, [peak])
    overall_kib: int = 0

    def read(self) -> None:
        peak = status_kib("VmHWM")
        self.overall_kib = max(self.overall_kib, peak)
        for _, _, running in self.open:
            running[0] = max(running[0], peak)
        CLEAR_REFS.write_text("5")

    def wrap(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def measured(*args: Any, **kwargs: Any) -> Any:
            self.read()
            step = self.steps.setdefault(name, Step(name))
            start = status_kib("VmRSS")
            if not step.calls:
                step.first_start_kib = start
            step.calls += 1
            frame = (step, start, [start])
            self.open.append(frame)
            try:
                return function(*args, **kwargs)
            finally:
                self.read()
                self.open.remove(frame)
                step.peak_kib = max(step.peak_kib, frame[2][0])
                step.rise_kib = max(step.rise_kib, frame[2][0] - start)

        return measured

    def report(self) -> None:
        self.read()
        print(f"\nflow process peaks (MiB): overall {self.overall_kib / 1024:.1f}", file=sys.stderr)
        print(f"{'step':<28}{'calls':>6}{'start':>9}{'peak':>9}{'rise':>8}", file=sys.stderr)
        for step in self.steps.values():
            print(f"{step.name:<28}{step.calls:>6}{step.first_start_kib / 1024:>9.1f}{step.peak_kib / 1024:>9.1f}"
                  f"{step.rise_kib / 1024:>8.1f}", file=sys.stderr)


PIPELINE_STEPS = ("validate", "plan", "explain", "compare_with_baseline", "render", "publish", "summarize")
INNER_STEPS = ("_account", "merge_task", "failures_table", "not_reached_table", "write_table_atomic",
               "top_first_reasons", "create_markdown_artifact", "create_table_artifact", "returned_review",
               "keep_only_reports", "write_queue", "summary_task", "quality_task", "drift_task")


def instrument(peaks: Peaks) -> None:
    """Wrap the flow's steps where flows/pipeline.py and flows/steps.py look them up."""
    import flows.pipeline
    import flows.steps

    for name in PIPELINE_STEPS:
        setattr(flows.pipeline, name, peaks.wrap(name, getattr(flows.pipeline, name)))
    for name in INNER_STEPS:
        if hasattr(flows.steps, name):
            setattr(flows.steps, name, peaks.wrap(name, getattr(flows.steps, name)))
    summarize = flows.pipeline.summarize  # the flow's last step: what follows is "after the flow"

    @functools.wraps(summarize)
    def last_step(*args: Any, **kwargs: Any) -> Any:
        try:
            return summarize(*args, **kwargs)
        finally:
            peaks.read()
            after = peaks.steps.setdefault("after the flow", Step("after the flow"))
            after.calls, after.first_start_kib = 1, status_kib("VmRSS")
            peaks.open.append((after, after.first_start_kib, [after.first_start_kib]))

    flows.pipeline.summarize = last_step


def main() -> None:
    peaks = Peaks()
    instrument(peaks)

    def at_exit() -> None:
        peaks.read()
        for step, start, running in peaks.open:
            step.peak_kib, step.rise_kib = max(step.peak_kib, running[0]), max(step.rise_kib, running[0] - start)
        peaks.report()

    atexit.register(at_exit)
    sys.argv = ["limelight", *sys.argv[1:]]
    from flows.cli import app

    app()


if __name__ == "__main__":
    main()
