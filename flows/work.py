"""The explain step on the workers: the subflow ``limelight-explain-shards`` and its bookkeeping.

The subflow runs with the Dask task runner (flows/cluster.py): it explains the shards (one ``DEVICE``
each, a window of at most two per worker, in the selection's order) and, as each shard is explained,
submits the render batches of its customer reports (one ``RENDER`` each: the render pool). So explaining
and rendering overlap on the workers; what the flow process renders afterwards is the run summary
(flows/steps.py). :class:`_Work` keeps the books: shards and batches in flight, records of finished work
for a resumed run (tasks/run/state.py), shards split when their task fails, the deadline. The subflow
returns :class:`ShardOutputs` to the flow.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import dask
import pyarrow as pa
from distributed import KilledWorker
from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import FlowRunContext

from flows.cluster import RENDER_RESOURCE, RESOURCE
from flows.pacing import Calibration, Pacer
from flows.prefect_tasks import explain_task, prepare_task, render_task
from flows.runtime import progress, say
from tasks.errors import LimelightError, one_line
from tasks.explain.worker import Failure, ShardResult
from tasks.inputs.config import Config
from tasks.plan.shards import Shard, split_shard
from tasks.plan.sizing import MAX_RENDER_BATCHES
from tasks.report import index as report_index
from tasks.run import manifest as mf
from tasks.run.deadline import PRIOR_RENDER_S, PUBLISH_MARGIN_S, DeadlineMissed, estimate, shards_that_fit
from tasks.run.info import RunInfo
from tasks.run.ledger import Ledger
from tasks.run.state import load_record, save_record

#: Dask reruns a task whose worker died once more elsewhere; a shard that kills a second worker is split.
ALLOWED_FAILURES = 1
#: Dask's logs for developers (``distributed.admin.low-level-log-length``, 1,000 by default): each batched
#: stream keeps its last messages, and the local scheduler's stream to a worker holds every ``compute-task``
#: with its task's deserialised spec (the Config, the RunInfo, Prefect's context), so the flow process held specs
#: of tasks long done. Kept short (docs/performance.md: part of the growth; another holder remains).
DASK_LOG_LENGTH = 32
#: A deadline run renders in batches of at most this many reports (within the run's bound on batches), so
#: reports follow explanations closely, the render rate is timed early and a batch cut at the deadline loses little.
DEADLINE_RENDER_BATCH = 8
#: Render batches in flight at most (per worker, at least RENDER_WINDOW in all): while more wait for a worker,
#: no shard is started, so a run whose rendering is slower than its explaining does not hold a spec per batch of
#: the whole run in the Dask scheduler (in the flow process). Idle device workers render meanwhile.
RENDER_WINDOW = 256
#: Render batches carry no poison of their own (the shard was explained); one that shared a worker with a
#: task that killed it twice gets KilledWorker and is submitted again, up to this many attempts in all.
RENDER_ATTEMPTS = 3


@dataclass
class ShardOutputs:
    """What the subflow returns: the shards' results and report index rows (in selection order), what failed
    or was not reached, what a resumed run reused, the deadline estimate, and the timings."""

    results: list[ShardResult]  # without their ids: the ledger counted them (tasks/run/ledger.py)
    review_ids: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))  # in selection order
    reports: pa.Table = field(default_factory=report_index.SCHEMA.empty_table)  # in selection order
    render_failures: list[Failure] = field(default_factory=list)
    worker_failed: list[tuple[Shard, str]] = field(default_factory=list)  # one-decision shards whose task died
    unexplained: list[Shard] = field(default_factory=list)  # not reached before the deadline
    unrendered: list[str] = field(default_factory=list)  # explained, report not reached before the deadline
    reused_shards: int = 0
    reused_batches: int = 0
    rendered_by: dict[str, int] = field(default_factory=dict)  # reports rendered here per worker (host:pid)
    estimate: str | None = None
    stopped_at_deadline: bool = False
    rates: dict[str, float | None] | None = None  # a deadline run: decisions/s estimated after calibration, achieved
    cluster_seconds: float = 0.0  # starting the workers
    explain_seconds: float = 0.0  # from the workers being up to the last shard explained
    render_seconds: float = 0.0  # from then to the last report rendered


@dataclass
class Plan:
    """The subflow's work and its books: the shards, each shard's planned decision ids (looked up when the
    shard comes back, so no id is held while it runs) and the :class:`Ledger` every ending is counted in."""

    shards: list[Shard]
    planned_ids: Callable[[Shard], list[str]]
    ledger: Ledger


#: The plans of runs, handed from the flow to its explain subflow in this process (:func:`hand_over`). As a
#: subflow parameter the shard list would be serialised into every task's Prefect context (the flow run's
#: parameters, twice: as objects and as the API's JSON), which the Dask scheduler in this process deserialises
#: and holds while the task is in flight: O(shards) per task, O(N) per window of tasks in flight.
_PLANS: dict[str, Plan] = {}


def hand_over(plan: Plan) -> str:
    """Keep ``plan`` for :func:`explain_shards` (its ``plan`` parameter), which takes it back once."""
    key = uuid.uuid4().hex
    _PLANS[key] = plan
    return key


def _release(future: Any) -> None:
    """Let the Dask scheduler forget a task whose result the flow holds now. Left to garbage collection, a future
    in a reference cycle lives until a full collection, and meanwhile the scheduler (in the flow process with a
    local cluster) keeps the task's deserialised spec: the Config, the RunInfo and Prefect's context, per task."""
    with contextlib.suppress(Exception):
        future.wrapped_future.release()


def _wait_any(futures: Sequence[Any], timeout: float) -> list[Any]:
    """The futures that are done, waiting up to ``timeout`` seconds for the first one (polling: cheap, and
    independent of which Dask client made them)."""
    end = time.monotonic() + timeout
    while True:
        done = [f for f in futures if f.wrapped_future.done()]
        if done or time.monotonic() >= end:
            return done
        time.sleep(0.05)


class _Work:
    """The subflow's bookkeeping: a window of shards in flight (in selection order), their render batches,
    records of finished work (resume), bisection of shards whose task fails, the deadline."""

    def __init__(self, config: Config, plan: Plan, run: RunInfo, staging: Path, render: bool,
                 workers: int, deadline: datetime | None, best_effort: bool, render_resource: bool,
                 render_batch: int, render_workers: int = 0, devices_render: bool = True,
                 render_prior_s: float = PRIOR_RENDER_S) -> None:
        self.config, self.run, self.staging, self.render = config, run, staging, render
        self.planned_ids, self.ledger = plan.planned_ids, plan.ledger
        self.queue: deque[Shard] = deque(plan.shards)
        self.total = sum(s.size for s in plan.shards)
        if deadline is not None:
            render_batch = min(render_batch, max(DEADLINE_RENDER_BATCH, math.ceil(self.total / MAX_RENDER_BATCHES)))
        self.render_resource, self.render_batch = render_resource, render_batch
        # A deadline run keeps one shard per device worker in flight, so the render reserve decides before each
        # next shard starts (a shard queued on its worker starts the moment the one before ends).
        self.window = workers if deadline is not None else max(2, 2 * workers)
        self.render_window = max(RENDER_WINDOW, 4 * (workers + render_workers))
        self.workers = workers
        self.deadline, self.best_effort = deadline, best_effort
        self.explaining: dict[Any, Shard] = {}
        self.rendering: dict[Any, tuple[ShardResult, int, int]] = {}
        self.out = ShardOutputs(results=[])
        self.review: dict[tuple[Any, ...], pa.Array] = {}  # per shard, compact: 114,410 ids of 1M took 1.4 MB
        self.batches: dict[tuple[Any, ...], pa.Table] = {}  # compact: a million reports stay a few hundred MB
        self.explained = 0  # decisions explained or failed (progress)
        self.finished = 0  # decisions at their end (reported or failed), all
        self.finished_here = 0  # ... of them by this process (not taken from records)
        self.reused_decisions = 0
        self.pacer = Pacer(workers, render_workers, devices_render or not render_resource, render_batch, render,
                           keep=deadline is not None, render_prior_s=render_prior_s)  # else only logged
        self.held_back = False  # a deadline run stopped explaining to render what is explained
        self.clock = time.perf_counter()
        self.explain_done_at: float | None = None
        self.artifact: Any = None
        self.updates = 0
        self.render_attempts: dict[tuple[str, int], int] = {}

    # -- explain --
    def fill(self) -> None:
        while (self.queue and len(self.explaining) < min(self.window, self.shards_allowed())
               and len(self.rendering) < self.render_window):  # (the deadline's reserve first, as before)
            shard = self.queue.popleft()
            record = load_record(self.staging, f"explain-{shard.name}")
            if record is not None:
                result = ShardResult.from_dict(record)
                if Path(result.part).is_file() and Path(result.applicants).is_file():
                    self.out.reused_shards += 1
                    self.explained_ok(shard, result, reused=True)
                    continue
            with dask.annotate(resources={RESOURCE: 1}):
                future = explain_task.submit(self.config, shard, self.run, str(self.staging))
            self.explaining[future] = shard
            self.pacer.submit(future)

    def explained_ok(self, shard: Shard, result: ShardResult, reused: bool = False) -> None:
        """Count the shard in the ledger against its planned ids; keep its result without its ids (the render
        batches in flight hold them until they end): the flow process holds no id per decision explained."""
        self.ledger.explained(result.name, shard.first, self.planned_ids(shard), result.ids,
                              [f[0] for f in result.failures], self.render)
        self.review[result.order] = pa.array(result.review_ids, pa.string())
        self.out.results.append(dataclasses.replace(result, ids=(), review_ids=()))
        if not reused:
            save_record(self.staging, f"explain-{result.name}", result.to_dict())
        self.explained += result.decisions + len(result.failures)
        self.ended(len(result.failures), reused)
        if not self.render:
            self.ended(result.decisions, reused)
            return
        for start in range(0, result.decisions, self.render_batch):
            self.submit_render(result, start, min(start + self.render_batch, result.decisions))

    def explained_failed(self, shard: Shard, error: BaseException) -> None:
        if isinstance(error, LimelightError | OSError):  # the run's problem (the model does not load, an input
            self.cancel()                                   # file went away): stop; a rerun resumes
            raise error
        if shard.size == 1:
            self.out.worker_failed.append((shard, one_line(error)))
            self.ledger.worker_failed(shard.first)
            self.explained += 1
            self.ended(1, False)
            return
        left, right = split_shard(shard)
        get_run_logger().warning("%s failed (%s): splitting it into %s and %s", shard.name, one_line(error),
                                 left.name, right.name)
        self.queue.extendleft([right, left])

    # -- render --
    def submit_render(self, result: ShardResult, start: int, stop: int) -> None:
        key = f"render-{result.name}-{start}"
        record = load_record(self.staging, key)
        if (record is not None and len(record["reports"]) + len(record["failures"]) == stop - start  # same batch
                and all((self.staging / r["file"]).is_file() for r in record["reports"])):
            self.out.reused_batches += 1
            self.rendered_ok(result, start, stop, record, reused=True)
            return
        reports_dir = str(self.staging / mf.REPORTS)
        # One RENDER each: the render pool (and device workers with a free thread) takes a batch as soon as
        # its shard is explained. Without RENDER workers (a cluster that offers none): any worker.
        resources = {RENDER_RESOURCE: 1} if self.render_resource else {}
        slim = dataclasses.replace(result, ids=(), review_ids=(), failures=())  # the task reads its part files
        with dask.annotate(resources=resources):
            future = render_task.submit(self.config, self.run, slim, reports_dir, start, stop)
        self.rendering[future] = (result, start, stop)
        self.pacer.submit(future)

    def rendered_ok(self, result: ShardResult, start: int, stop: int, batch: dict[str, Any], reused: bool = False,
                    record: bool = True) -> None:
        self.ledger.rendered(f"{result.name} reports {start}-{stop - 1}", result.ids[start:stop],
                             [r["id"] for r in batch["reports"]], [f[0] for f in batch["failures"]])
        if record and not reused:
            save_record(self.staging, f"render-{result.name}-{start}",
                        {"reports": batch["reports"], "failures": batch["failures"]})
        self.batches[(result.order, start)] = report_index.entries_table(batch["reports"])
        if not reused and batch.get("worker"):
            by = self.out.rendered_by
            by[batch["worker"]] = by.get(batch["worker"], 0) + len(batch["reports"])
        self.out.render_failures += [tuple(f) for f in batch["failures"]]  # type: ignore[misc]
        self.ended(len(batch["reports"]) + len(batch["failures"]), reused)

    def render_failed(self, result: ShardResult, start: int, stop: int, error: BaseException) -> None:
        if isinstance(error, LimelightError | OSError):
            self.cancel()
            raise error
        attempts = self.render_attempts.get((result.name, start), 1)
        if isinstance(error, KilledWorker) and attempts < RENDER_ATTEMPTS:  # a bystander of another task's crash
            self.render_attempts[(result.name, start)] = attempts + 1
            get_run_logger().warning("render batch %s from %d lost its worker (%s): submitting it again",
                                     result.name, start, one_line(error))
            self.submit_render(result, start, stop)
            return
        failures = [(i, "render", one_line(error)) for i in result.ids[start:stop]]
        self.rendered_ok(result, start, stop, {"reports": [], "failures": failures}, record=False)  # a rerun retries

    # -- progress, deadline --
    def ended(self, count: int, reused: bool) -> None:
        self.finished += count
        if reused:
            self.reused_decisions += count
        else:
            self.finished_here += count
        progress("explain", self.explained, self.total)
        if self.render:
            progress("render", self.finished, self.total)
        if self.artifact is not None and (self.finished * 50 // max(self.total, 1) > self.updates
                                          or self.finished == self.total):
            self.updates = self.finished * 50 // max(self.total, 1)
            update_progress_artifact(self.artifact, progress=100.0 * self.finished / max(self.total, 1))

    def check_estimate(self) -> None:
        """Once calibrated (tasks/run/deadline.py: rates without the warm-up), estimate the finish: say it, or
        stop with DeadlineMissed when it misses the deadline and the run is not best-effort."""
        if self.deadline is None or self.out.estimate is not None or self.finished >= self.total:
            return
        measured = self.pacer.pipeline()  # untimed rendering: the prior, optimistic, so only a miss is sure
        if measured is None or not self.pacer.explain_calibrated(bool(self.queue or self.explaining)):
            return
        pipeline, steady = measured
        unexplained = self.total - self.explained
        guess = estimate(pipeline=pipeline, explained=self.explained - self.finished, unexplained=unexplained,
                         done=self.finished, workers=self.workers, num_samples=self.config.explain.num_samples,
                         now=mf.utc_now(), deadline=self.deadline, steady=steady)
        if guess.meets and not self.pacer.render_timed():
            return  # rendering untimed: a miss is sure already, a meet is not yet
        get_run_logger().info("deadline: calibrated on %d explain and %d render tasks: %s", len(self.pacer.explain),
                              len(self.pacer.rendering), pipeline)
        self.out.estimate = guess.describe()
        self.pacer.calibration = Calibration(time.perf_counter(), self.finished, guess.rate)
        if not guess.meets and not self.best_effort:
            self.cancel()
            raise DeadlineMissed(f"deadline: {self.out.estimate} (--best-effort goes on and publishes what is "
                                 "finished by then)")
        say(self.out.estimate)

    def shards_allowed(self) -> int:
        """Shards that may be in flight: all of them without a deadline; with one, those whose decisions can still
        be explained and rendered before the cut at the rates measured so far (the render reserve)."""
        stop = self.stop_time()
        if stop is None:
            return len(self.explaining) + len(self.queue)
        if time.time() >= stop:
            return 0
        floor = self.pacer.render_floor({f: b - a for f, (_, a, b) in self.rendering.items()})
        measured = self.pacer.pipeline(floor)
        if measured is None:  # nothing explained yet: nothing to go by
            return len(self.explaining) + len(self.queue)
        flying = sorted(self.explaining.values(), key=lambda s: s.order)
        backlog = sum(stop_ - start for _, start, stop_ in self.rendering.values())
        fit = shards_that_fit(measured[0], stop - time.time(), backlog, [s.size for s in [*flying, *self.queue]])
        if fit < len(flying):  # shards queued behind a running one on their worker (a guess: the later ones)
            self.put_back(flying[max(fit, self.workers):])
            flying = flying[:max(fit, self.workers)]
        if fit <= len(flying) and self.queue and not self.held_back:
            self.held_back = True
            get_run_logger().info("deadline: %.1f s left, %d reports to render, %d decisions in flight: %s",
                                  stop - time.time(), backlog, sum(s.size for s in flying), measured[0])
            say(f"deadline: explaining stops at {self.explained + sum(s.size for s in flying)} of {self.total} "
                f"decisions, so that their reports are rendered before the cut")
        return fit

    def put_back(self, shards: list[Shard]) -> None:
        """Cancel these shards in flight and queue them again (in order): the render reserve has no room for them."""
        if not shards:
            return
        for future, shard in list(self.explaining.items()):
            if shard in shards:
                with contextlib.suppress(Exception):
                    future.wrapped_future.cancel()
                del self.explaining[future]
                self.pacer.forget(future)
        self.queue = deque(sorted([*shards, *self.queue], key=lambda s: s.order))
        get_run_logger().info("deadline: %s put back (no room before the cut)", ", ".join(s.name for s in shards))

    def stop_time(self) -> float | None:
        return None if self.deadline is None else self.deadline.timestamp() - PUBLISH_MARGIN_S

    def cancel(self) -> None:
        for future in [*self.explaining, *self.rendering]:
            with contextlib.suppress(Exception):
                future.wrapped_future.cancel()

    def stop_at_deadline(self) -> None:
        self.cancel()
        self.out.stopped_at_deadline = True
        self.out.unexplained = sorted([*self.queue, *self.explaining.values()], key=lambda s: s.order)
        self.out.unrendered = [i for result, start, stop in self.rendering.values() for i in result.ids[start:stop]]
        for shard in self.out.unexplained:
            self.ledger.unexplained(shard.first, shard.size)
        self.ledger.unrendered(len(self.out.unrendered))
        self.queue.clear()
        self.explaining.clear()
        self.rendering.clear()

    def run_all(self) -> None:
        stop = self.stop_time()
        self.fill()
        while self.explaining or self.rendering or self.queue:
            if stop is not None and time.time() >= stop:
                get_run_logger().warning("deadline reached: stopping; publishing what is finished")
                self.stop_at_deadline()
                break
            if self.held_back and self.queue and not self.explaining and not self.rendering:
                get_run_logger().info("deadline: all that fits before the cut is done; publishing it")
                self.stop_at_deadline()  # the rest could not be explained and rendered in time
                break
            timeout = 1.0 if stop is None else min(1.0, stop - time.time())
            done = _wait_any([*self.explaining, *self.rendering], timeout)
            now = time.perf_counter()
            for future in done:
                self.handle(future, now)
            if not self.explaining and self.explain_done_at is None and (not self.queue or self.held_back):
                self.explain_done_at = time.perf_counter()
            self.fill()
            self.check_estimate()
        self.achieved()

    def achieved(self) -> None:
        """A deadline run: the rate achieved from the calibration to the end, beside the estimated one."""
        calibration = self.pacer.calibration
        if calibration is None:
            return
        seconds = time.perf_counter() - calibration.at
        calibration.achieved = (self.finished - calibration.finished) / seconds if seconds > 0 else None
        self.out.rates = {"estimated": round(calibration.rate, 3),
                          "achieved": None if calibration.achieved is None else round(calibration.achieved, 3)}
        if calibration.achieved is not None and not self.out.stopped_at_deadline:
            say(f"deadline: {calibration.rate:.2f} decisions/s estimated after calibration, "
                f"{calibration.achieved:.2f} achieved since")

    def handle(self, future: Any, now: float) -> None:
        try:
            self._handle(future, now)
        finally:
            _release(future)

    def _handle(self, future: Any, now: float) -> None:
        if future in self.explaining:
            shard = self.explaining.pop(future)
            try:
                result = future.result()
            except Exception as error:
                self.pacer.forget(future)
                self.explained_failed(shard, error)
            else:
                self.pacer.explained(future, result.worker, result.decisions + len(result.failures), now)
                self.explained_ok(shard, result)
            return
        result, start, stop = self.rendering.pop(future)
        try:
            batch = future.result()
        except Exception as error:
            self.pacer.forget(future)
            self.render_failed(result, start, stop, error)
        else:
            self.pacer.rendered(future, batch, now)
            self.rendered_ok(result, start, stop, batch)


@flow(name="limelight-explain-shards", persist_result=False, log_prints=False)
def explain_shards(
    config: Config, plan: str, run: RunInfo, staging: str, render: bool, workers: int,
    deadline: datetime | None, best_effort: bool, render_resource: bool, render_batch: int,
    render_workers: int = 0, devices_render: bool = True, render_prior_s: float = PRIOR_RENDER_S,
) -> ShardOutputs:
    """Explain the shards (``plan``: :func:`hand_over`'s key) on the workers (one DEVICE each, in order), and
    render each shard's reports.

    At most two shards per worker are in flight (one with a deadline), so the selection's order (an ids file's
    urgency) is kept and a deadline stops with little work lost. A shard whose task fails (its worker died twice)
    is split in halves down to the decision that fails.
    """
    logger = get_run_logger()
    clock = time.perf_counter()
    work_plan = _PLANS.pop(plan)
    shards = work_plan.shards
    cut = None if deadline is None else deadline.timestamp() - PUBLISH_MARGIN_S
    if cut is not None and time.time() >= cut:  # no time left to start workers and load the model
        logger.warning("deadline: the cut passed before the workers started; publishing that nothing was reached")
        for shard in shards:
            work_plan.ledger.unexplained(shard.first, shard.size)
        return ShardOutputs(results=[], unexplained=sorted(shards, key=lambda s: s.order), stopped_at_deadline=True)
    runner = FlowRunContext.get().task_runner  # type: ignore[union-attr]
    if hasattr(runner, "client"):
        runner.client  # noqa: B018 - start the workers now, so the timings below are the work's own
    cluster_seconds = time.perf_counter() - clock
    if shards and (cut is None or time.time() < cut):  # a model that does not load stops the run here
        with dask.annotate(resources={RESOURCE: 1}):
            ready = prepare_task.submit(config, run)
        logger.info("model ready: %s", ready.result())
        _release(ready)
    work = _Work(config, work_plan, run, Path(staging), render, workers, deadline, best_effort, render_resource,
                 render_batch, render_workers, devices_render, render_prior_s)
    work.artifact = create_progress_artifact(progress=0.0, key="limelight-progress",
                                             description="decisions finished")
    work.run_all()
    end = time.perf_counter()
    explain_end = work.explain_done_at or end
    out = work.out
    out.results.sort(key=lambda r: r.order)
    if work.review:
        out.review_ids = pa.concat_arrays([work.review[key] for key in sorted(work.review)])
    if work.batches:
        out.reports = pa.concat_tables([work.batches[key] for key in sorted(work.batches)])
    out.cluster_seconds, out.explain_seconds = cluster_seconds, explain_end - work.clock
    out.render_seconds = end - explain_end if render else 0.0
    logger.info("explained %d decisions in %d shards (%d reused)", sum(r.decisions for r in out.results),
                len(out.results), out.reused_shards)
    return out
