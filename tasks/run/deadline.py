"""Deadline runs: parse ``--deadline``, measure the stages' rates without their warm-up, estimate the finish,
and decide how much more to explain so that what is explained is also rendered before the cut.

Plain arithmetic, no clock and no Prefect: the flow measures (flows/pacing.py), these functions decide.

The model of a run (:class:`Pipeline`): device workers explain, render workers render (the render pool, and
the device workers too once they have nothing to explain, where they offer ``RENDER``). What each worker
takes per decision is measured from the tasks it ran (:class:`TaskTime`): the seconds a task held its worker,
from the later of its submission and the end of the worker's previous task, so queueing and Prefect's own
overhead per task count and idle time does not. A worker's first task of a stage carries its warm-up (model
load, ``torch.compile``, the first samples; WeasyPrint's imports, fonts and shared pages) and is left out of
the rate once the stage has later tasks to measure (:func:`stage_rate`); a render task times its warm-up apart
on the worker, so its first task counts too. The finish is the later of two bounds: the explaining (on the
device workers) plus the last render batch, and all the work left spread over every worker that can do it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from tasks.errors import InputError, LimelightError

#: Seconds kept free before the deadline for merging, the summary and publishing.
PUBLISH_MARGIN_S = 10.0
#: One render worker's seconds per report until a render batch has been timed (a quiet core renders 5-6 PDFs/s;
#: this allows for a busy machine). Only the render reserve of a deadline run uses it, and only that early.
PRIOR_RENDER_S = 0.3


def render_prior(cores_wanted: float, cores: int | None) -> float:
    """One render worker's seconds per report until a batch is timed: the base prior (:data:`PRIOR_RENDER_S`),
    stretched by how far the run's workers want more cores than the host they share has (``cores``; None: each
    worker is taken to have its own core, as on a cluster). On 2 cores, 2 device workers explaining and 1 render
    worker want 3: a report takes 1.5 times as long, and the render reserve starts no shard it cannot render."""
    if not cores:
        return PRIOR_RENDER_S
    return PRIOR_RENDER_S * max(1.0, cores_wanted / cores)


def parse_deadline(text: str, now: datetime) -> datetime:
    """``2026-11-23T09:00+01:00`` -> an aware datetime; it must name its time zone and lie in the future."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InputError(f"--deadline {text!r}: not an ISO 8601 time (e.g. 2026-11-23T09:00+01:00)") from None
    if moment.tzinfo is None:
        raise InputError(f"--deadline {text!r}: give the time zone (e.g. 2026-11-23T09:00+01:00 or ...Z)")
    if moment <= now:
        raise InputError(f"--deadline {text!r}: already passed (now {now.astimezone(UTC).isoformat()})")
    return moment


class DeadlineMissed(LimelightError):
    """The calibration shows the run would miss its deadline (and ``--best-effort`` was not given)."""


# --- measuring -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskTime:
    """One finished task: the worker that ran it, the decisions it did, the seconds it held the worker.

    ``warmed``: the worker timed its warm-up apart and ``seconds`` and ``items`` leave it out, so even a
    worker's first task measures the steady rate."""

    worker: str
    items: int
    seconds: float
    warmed: bool = False
    start: float = 0.0  # when it took its worker (the flow's clock)


def held_seconds(submitted: float, done: float, worker_free: float | None) -> float:
    """Seconds a task held its worker: from the later of its submission and the end of the worker's previous
    task (None: its first), to its end. One task at a time per worker (``nthreads = 1``)."""
    start = submitted if worker_free is None else max(submitted, worker_free)
    return max(0.0, done - start)


@dataclass(frozen=True)
class StageRate:
    """One worker's seconds per decision in a stage, and whether the warm-up is out of it."""

    seconds_per_item: float
    steady: bool  # False: only first tasks were measured, warm-up included (pessimistic)
    items: int  # decisions measured


def stage_rate(times: Sequence[TaskTime], recent: int | None = None, after: float | None = None) -> StageRate | None:
    """The stage's seconds per decision per worker from its finished tasks (in the order they finished), over the
    ``recent`` last ones (None: all), so the rate follows a machine whose load changes.

    Each worker's first task is left out (its warm-up) unless the worker timed the warm-up apart, and so is a
    task that started before ``after`` (the end of the run's warm-up: other workers' warm-up shared its cores);
    when no other task is left, these are used, warm-up and all. None: nothing measured yet."""
    seen: set[str] = set()
    steady: list[TaskTime] = []
    first: list[TaskTime] = []
    for task in times:
        warm = task.worker in seen or task.warmed
        (steady if warm and (after is None or task.start >= after) else first).append(task)
        seen.add(task.worker)
    is_steady = sum(t.items for t in steady) > 0
    use = (steady if is_steady else first)[-recent:] if recent else (steady if is_steady else first)
    items = sum(t.items for t in use)
    if items <= 0:
        return None
    return StageRate(sum(t.seconds for t in use) / items, is_steady, items)


# --- the model -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pipeline:
    """How fast a run's workers go: the input of every estimate."""

    explain_s: float  # one device worker's seconds per decision
    render_s: float  # one worker's seconds per report (0: the run renders no reports)
    device_workers: int
    render_workers: int  # workers that only render (the render pool)
    devices_render: bool = True  # device workers render once they have nothing to explain
    batch: int = 32  # reports per render batch (one worker renders a batch)

    def seconds(self, to_explain: int, to_render: int) -> float:
        """Seconds to explain ``to_explain`` decisions and render ``to_render`` reports (theirs and those of
        decisions already explained)."""
        explain_work = max(to_explain, 0) * self.explain_s
        explaining = explain_work / max(self.device_workers, 1)
        if to_render <= 0 or self.render_s <= 0:
            return explaining
        render_work = to_render * self.render_s
        tail = min(to_render, self.batch) * self.render_s  # the last batch is one worker's
        if self.devices_render or self.render_workers < 1:
            spread = (explain_work + render_work) / max(self.device_workers + self.render_workers, 1)
        else:
            spread = render_work / self.render_workers
        return max(explaining + tail, spread)

    def decisions_in(self, seconds: float, explained: int, unexplained: int) -> int:
        """Decisions finished (reported) in ``seconds``, the ``explained`` ones first, then in order."""
        if seconds <= 0:
            return 0
        reports = self.render_s > 0
        low, high = 0, explained + unexplained
        while low < high:  # the largest n that fits; seconds() grows with n
            n = (low + high + 1) // 2
            if self.seconds(max(n - explained, 0), n if reports else 0) <= seconds:
                low = n
            else:
                high = n - 1
        return low

    def scaled(self, explain_factor: float) -> Pipeline:
        return Pipeline(self.explain_s * explain_factor, self.render_s, self.device_workers, self.render_workers,
                        self.devices_render, self.batch)


def shards_that_fit(pipeline: Pipeline, left_s: float, backlog: int, sizes: Sequence[int]) -> int:
    """How many of the next shards (``sizes``, in flight first, then queued, in order) can be explained and have
    their reports rendered, with the ``backlog`` of explained reports not yet rendered, within ``left_s``.

    The render reserve of a deadline run: a shard beyond these is not started (or is cancelled), so the
    workers render what is explained instead of explaining what could not be rendered in time."""
    reports = pipeline.render_s > 0
    taken = 0
    for count, size in enumerate(sizes):
        if pipeline.seconds(taken + size, (backlog + taken + size) if reports else 0) > left_s:
            return count
        taken += size
    return len(sizes)


# --- the estimate --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """When a run would finish at the rates measured so far, and what would meet the deadline."""

    total: int  # decisions this attempt finishes (done included)
    done: int
    rate: float  # decisions per second from now to the finish, all workers together
    finish: datetime
    deadline: datetime
    available_s: float  # seconds left for the remaining work (deadline minus margin minus now)
    needed_s: float  # seconds the remaining work needs
    workers: int
    num_samples: int
    decisions_that_fit: int  # done ones included, finished by the deadline at these rates
    samples_that_fit: int  # LIME samples per decision that would fit (explain time scales with samples)
    explain_rate: float  # decisions/s explained, all device workers (0: nothing left to explain)
    render_rate: float  # reports/s rendered, every worker rendering (0: no reports)
    steady: bool  # the rates leave the warm-up out

    @property
    def meets(self) -> bool:
        return self.needed_s <= self.available_s

    @property
    def workers_needed(self) -> int | None:
        """Workers that would finish in time, if the work spreads over them (None: no time left at all)."""
        if self.available_s <= 0:
            return None
        return max(self.workers, math.ceil(self.workers * self.needed_s / self.available_s))

    def describe(self) -> str:
        """One line: the estimate, and when it misses, what would meet the deadline."""
        finish = self.finish.astimezone(self.deadline.tzinfo).isoformat(timespec="seconds")
        deadline = self.deadline.isoformat(timespec="seconds")
        stages = [f"explain {self.explain_rate:.1f}/s"] if self.explain_rate else []
        stages += [f"render {self.render_rate:.1f}/s"] if self.render_rate else []
        head = (f"estimated finish {finish} for {self.total} decisions at {self.rate:.1f} decisions/s "
                f"({', '.join(stages)}{'' if self.steady else ', warm-up included'}) on "
                f"{self.workers} worker{'s' if self.workers != 1 else ''} (deadline {deadline})")
        if self.meets:
            return head + ": meets the deadline"
        options = []
        if self.workers_needed is not None:
            options.append(f"{self.workers_needed} workers")
        if self.samples_that_fit > 0:
            options.append(f"num_samples <= {self.samples_that_fit}")
        options.append(f"{self.decisions_that_fit} decisions (--limit, most urgent first in --ids)")
        return head + ": misses it; to meet it use " + ", or ".join(options)


def _samples_that_fit(pipeline: Pipeline, to_explain: int, to_render: int, available: float, samples: int) -> int:
    """The largest sample count whose explain time (proportional to it) still lets the rest fit in ``available``."""
    if available <= 0 or pipeline.seconds(0, to_render) > available:
        return 0
    if pipeline.seconds(to_explain, to_render) <= available:
        return samples
    low, high = 0, samples
    while low < high:
        mid = (low + high + 1) // 2
        if pipeline.scaled(mid / samples).seconds(to_explain, to_render) <= available:
            low = mid
        else:
            high = mid - 1
    return low


def estimate(
    *,
    pipeline: Pipeline,
    explained: int,
    unexplained: int,
    done: int,
    workers: int,
    num_samples: int,
    now: datetime,
    deadline: datetime,
    margin_s: float = PUBLISH_MARGIN_S,
    steady: bool = True,
) -> Estimate:
    """The finish of a run with ``done`` decisions finished, ``explained`` more explained but not yet reported,
    and ``unexplained`` still to explain, at ``pipeline``'s rates (``steady``: measured without the warm-up)."""
    reports = pipeline.render_s > 0
    to_render = explained + unexplained if reports else 0
    left = explained + unexplained
    needed = pipeline.seconds(unexplained, to_render)
    available = (deadline - now).total_seconds() - margin_s
    finish = datetime.fromtimestamp(now.timestamp() + needed + margin_s, tz=UTC)
    explain_rate = pipeline.device_workers / pipeline.explain_s if unexplained and pipeline.explain_s > 0 else 0.0
    slots = pipeline.render_workers + (pipeline.device_workers if pipeline.devices_render else 0)
    render_rate = max(slots, 1) / pipeline.render_s if reports else 0.0
    return Estimate(
        total=done + left, done=done, rate=left / needed if needed > 0 else math.inf, finish=finish,
        deadline=deadline, available_s=available, needed_s=needed, workers=workers, num_samples=num_samples,
        decisions_that_fit=done + pipeline.decisions_in(available, explained, unexplained),
        samples_that_fit=_samples_that_fit(pipeline, unexplained, to_render, available, num_samples),
        explain_rate=explain_rate, render_rate=render_rate, steady=steady,
    )
