"""A deadline run's clock (flows/work.py keeps one per run with ``--deadline``).

:class:`Pacer` notes when each task was submitted and when it finished on which worker, turns that into the
stages' rates without their warm-up (tasks/run/deadline.py: :func:`stage_rate`), says when the rates are
calibrated (every device worker has explained a shard after its first, or nothing is left to explain), and
holds what the estimate said so the end of the run can say what it achieved against it.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from tasks.run.deadline import (
    PRIOR_RENDER_S,
    Pipeline,
    TaskTime,
    held_seconds,
    stage_rate,
)

#: Each finished task's time, for the run's log file (flows/cli.py sets it to INFO there).
log = logging.getLogger("limelight.pacing")
#: The rates are taken over the last RECENT tasks per worker of a stage: they follow a machine whose load changes.
RECENT = 4
#: Stages this worker process has done once (its warm-up is over): see :func:`first_time`.
_DONE: set[str] = set()


def first_time(stage: str) -> bool:
    """Whether this process does ``stage`` for the first time; marks it done. (Module state, imported by the
    task at call time, so it lasts as long as the worker process.)"""
    if stage in _DONE:
        return False
    _DONE.add(stage)
    return True


@dataclass
class Calibration:
    """What the estimate said, and when: the end of the run compares its rate with the one achieved."""

    at: float  # time.perf_counter()
    finished: int  # decisions finished by then
    rate: float  # decisions/s the estimate expected from then on
    achieved: float | None = None


class Pacer:
    """Task times per worker, the stages' rates, the calibration."""

    def __init__(self, device_workers: int, render_workers: int, devices_render: bool, batch: int,
                 render: bool, keep: bool = True, render_prior_s: float = PRIOR_RENDER_S) -> None:
        self.device_workers, self.render_workers = device_workers, render_workers
        self.render_prior_s = render_prior_s  # seconds per report until a batch is timed (flows/cluster.py)
        self.devices_render, self.batch, self.render = devices_render, batch, render
        self.keep = keep  # keep the task times (a deadline run's rates); else they are only logged
        self.submitted: dict[Any, float] = {}
        self.worker_free: dict[str, float] = {}
        self.explain: list[TaskTime] = []
        self.rendering: list[TaskTime] = []
        self.calibration: Calibration | None = None

    def submit(self, future: Any) -> None:
        self.submitted[future] = time.perf_counter()

    def forget(self, future: Any) -> None:
        self.submitted.pop(future, None)

    def _held(self, future: Any, worker: str, done: float) -> float:
        held = held_seconds(self.submitted.pop(future, done), done, self.worker_free.get(worker))
        self.worker_free[worker] = done
        return held

    @property
    def warm_at(self) -> float | None:
        """When the last device worker finished its first shard: the run's warm-up is over (None: not yet)."""
        firsts: dict[str, float] = {}
        for task in self.explain:
            firsts.setdefault(task.worker, task.start + task.seconds)
        return max(firsts.values()) if len(firsts) >= self.device_workers else None

    def explained(self, future: Any, worker: str, decisions: int, done: float) -> None:
        held = self._held(future, worker, done)
        task = TaskTime(worker, decisions, held, start=done - held)
        if self.keep:
            self.explain.append(task)
        log.info("explained %s", task)

    def rendered(self, future: Any, batch: dict[str, Any], done: float) -> None:
        """A render batch's time, less the warm-up its worker timed apart (``warmup_s`` for ``warmup_items``)."""
        worker = str(batch.get("worker", "?"))
        held = self._held(future, worker, done)
        items = len(batch["reports"]) + len(batch["failures"]) - int(batch.get("warmup_items", 0))
        warmup = float(batch.get("warmup_s", 0.0))
        task = TaskTime(worker, items, max(held - warmup, 0.0), warmed=bool(batch.get("warm", False)),
                        start=done - held + warmup)
        if self.keep:
            self.rendering.append(task)
        log.info("rendered %s (warm-up %.2f s)", task, float(batch.get("warmup_s", 0.0)))

    def explain_calibrated(self, explaining_left: bool) -> bool:
        """Every device worker is past its warm-up (has explained a shard) and a shard started since then, so the
        steady rate is measured; or nothing is left to explain."""
        if not explaining_left:
            return bool(self.explain) or bool(self.rendering)
        warm = self.warm_at
        return warm is not None and any(t.start >= warm for t in self.explain)

    def render_timed(self) -> bool:
        """A run that renders has timed a render batch started after the run's warm-up (until then its render rate
        is a prior or a floor, not a measure)."""
        if not self.render:
            return True
        warm = self.warm_at
        return warm is not None and any(t.start >= warm for t in self.rendering)

    def render_floor(self, rendering: dict[Any, int]) -> float:
        """Before any render batch is timed: seconds per report the oldest batch in flight (future -> reports)
        has already taken, a floor under the render rate (0 once a batch is timed, or none is in flight)."""
        if self.rendering or not rendering:
            return 0.0
        oldest = min(rendering, key=lambda f: self.submitted.get(f, math.inf))
        since = self.submitted.get(oldest)
        return 0.0 if since is None else (time.perf_counter() - since) / max(rendering[oldest], 1)

    def pipeline(self, render_floor: float = 0.0) -> tuple[Pipeline, bool] | None:
        """The rates measured so far (None before any shard is explained), and whether they are steady. Until a
        render batch is timed, the render rate is the prior (``render_prior_s``) or ``render_floor`` if slower."""
        explain = stage_rate(self.explain, RECENT * self.device_workers, self.warm_at)
        if explain is None:
            return None
        renderers = self.render_workers + (self.device_workers if self.devices_render else 0)
        render = stage_rate(self.rendering, RECENT * max(renderers, 1), self.warm_at) if self.render else None
        render_s = 0.0 if not self.render else (render.seconds_per_item if render
                                                else max(self.render_prior_s, render_floor))
        steady = explain.steady and (not self.render or (render is not None and render.steady))
        return Pipeline(explain.seconds_per_item, render_s, self.device_workers, self.render_workers,
                        self.devices_render, self.batch), steady
