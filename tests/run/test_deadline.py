"""tasks/run/deadline.py: parsing --deadline, the stages' rates without warm-up, the finish model, the estimate
and the render reserve."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from tasks.errors import InputError
from tasks.run.deadline import (
    PRIOR_RENDER_S,
    Pipeline,
    TaskTime,
    estimate,
    held_seconds,
    parse_deadline,
    render_prior,
    shards_that_fit,
    stage_rate,
)

NOW = datetime(2026, 11, 22, 20, 0, tzinfo=UTC)


def test_parse_deadline_needs_a_zone_and_the_future():
    moment = parse_deadline("2026-11-23T09:00+01:00", NOW)
    assert moment == datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
    with pytest.raises(InputError, match="give the time zone"):
        parse_deadline("2026-11-23T09:00", NOW)
    with pytest.raises(InputError, match="already passed"):
        parse_deadline("2026-11-22T19:00Z", NOW)
    with pytest.raises(InputError, match="not an ISO 8601 time"):
        parse_deadline("tomorrow 9am", NOW)


def test_a_task_holds_its_worker_from_the_later_of_its_submission_and_the_previous_task_end():
    assert held_seconds(submitted=10.0, done=25.0, worker_free=None) == 15.0  # the worker's first task
    assert held_seconds(submitted=10.0, done=25.0, worker_free=18.0) == 7.0  # queued behind another task
    assert held_seconds(submitted=20.0, done=25.0, worker_free=12.0) == 5.0  # the worker was idle until 20
    assert held_seconds(submitted=20.0, done=19.0, worker_free=None) == 0.0


def test_the_warm_up_of_each_worker_is_left_out_of_the_rate():
    # The demo: the first shard of each worker carries model load and the first samples (20 s for 50
    # decisions); later shards take 5 s. The rate from all shards would be a third of the steady one.
    times = [TaskTime("a", 50, 20.0), TaskTime("b", 50, 22.0), TaskTime("a", 50, 5.0), TaskTime("b", 50, 5.0),
             TaskTime("a", 50, 5.0)]
    rate = stage_rate(times)
    assert rate is not None and rate.steady and rate.items == 150
    assert rate.seconds_per_item == pytest.approx(0.1)


def test_tasks_that_started_during_the_run_s_warm_up_are_left_out_too():
    # worker a is warm at 10 s; b compiles until 60 s: a's shard from 10 s to 40 s shared the cores with b's warm-up
    times = [TaskTime("a", 50, 10.0, start=0.0), TaskTime("a", 50, 30.0, start=10.0),
             TaskTime("b", 50, 60.0, start=0.0), TaskTime("a", 50, 10.0, start=40.0)]
    assert stage_rate(times).seconds_per_item == pytest.approx(0.4)  # type: ignore[union-attr]
    rate = stage_rate(times, after=60.0)  # nothing since: all of it, warm-up and all (pessimistic)
    assert rate is not None and not rate.steady and rate.seconds_per_item == pytest.approx(110 / 200)
    late = [*times, TaskTime("b", 50, 10.0, start=60.0)]
    rate = stage_rate(late, after=60.0)
    assert rate is not None and rate.steady and rate.seconds_per_item == pytest.approx(0.2)


def test_the_recent_tasks_give_the_rate_of_a_machine_whose_load_changes():
    times = [TaskTime("a", 10, 1.0), TaskTime("a", 10, 30.0), TaskTime("a", 10, 30.0), TaskTime("a", 10, 10.0),
             TaskTime("a", 10, 10.0)]
    assert stage_rate(times).seconds_per_item == pytest.approx(2.0)  # type: ignore[union-attr]
    assert stage_rate(times, recent=2).seconds_per_item == pytest.approx(1.0)  # type: ignore[union-attr]


def test_first_tasks_only_give_a_pessimistic_rate_and_nothing_gives_none():
    rate = stage_rate([TaskTime("a", 50, 20.0), TaskTime("b", 50, 30.0)])
    assert rate is not None and not rate.steady and rate.seconds_per_item == pytest.approx(0.5)
    assert stage_rate([]) is None
    assert stage_rate([TaskTime("a", 0, 3.0)]) is None


def test_a_task_that_timed_its_warm_up_apart_counts_even_as_the_first():
    # a render batch rendered its first report alone (the warm-up) and reports the other 31 in 6.2 s
    rate = stage_rate([TaskTime("r", 31, 6.2, warmed=True), TaskTime("s", 32, 30.0)])
    assert rate is not None and rate.steady and rate.seconds_per_item == pytest.approx(0.2)


def test_the_finish_is_the_explaining_plus_the_last_batch_when_rendering_keeps_up():
    fast_render = Pipeline(explain_s=0.4, render_s=0.05, device_workers=2, render_workers=2, batch=32)
    # 200 decisions at 0.4 s on 2 workers: 40 s; the last batch: 32 x 0.05 = 1.6 s
    assert fast_render.seconds(200, 200) == pytest.approx(41.6)
    assert fast_render.seconds(200, 0) == pytest.approx(40.0)  # no reports


def test_the_finish_is_all_the_work_over_every_worker_when_rendering_is_the_bottleneck():
    # the demo on 2 cores: 2 device workers and 1 render worker; rendering costs as much as explaining
    slow_render = Pipeline(explain_s=0.2, render_s=0.4, device_workers=2, render_workers=1, batch=32)
    # 100 to explain, 150 to render (50 already explained): (100 x 0.2 + 150 x 0.4) / 3 workers
    assert slow_render.seconds(100, 150) == pytest.approx(80.0 / 3)
    # render-only workers on other hosts (the device workers never render): the render pool alone
    apart = Pipeline(explain_s=0.2, render_s=0.4, device_workers=2, render_workers=1, devices_render=False)
    assert apart.seconds(100, 150) == pytest.approx(60.0)


def test_decisions_that_fit_take_the_explained_ones_first():
    pipeline = Pipeline(explain_s=1.0, render_s=0.5, device_workers=1, render_workers=1, batch=1)
    # 10 explained: rendering them takes 10 x 0.5 / 2 = 2.5 s (or 0.5 s for the last batch of 1)
    assert pipeline.decisions_in(2.5, explained=10, unexplained=100) == 10
    # every further decision: 1 s of explaining (+0.5 s for its report)
    assert pipeline.decisions_in(11.0, explained=10, unexplained=100) == 20
    assert pipeline.decisions_in(0.0, explained=10, unexplained=100) == 0
    assert pipeline.decisions_in(1e9, explained=10, unexplained=100) == 110


def test_an_estimate_that_meets_the_deadline():
    pipeline = Pipeline(explain_s=0.2, render_s=0.1, device_workers=2, render_workers=1, batch=32)
    guess = estimate(pipeline=pipeline, explained=100, unexplained=900, done=0, workers=2, num_samples=5000,
                     now=NOW, deadline=NOW + timedelta(hours=1), margin_s=10)
    # 900 x 0.2 / 2 = 90 s of explaining + 3.2 s for the last batch > (180 + 100) / 3 = 93.3 s of work
    assert guess.needed_s == pytest.approx(280 / 3)
    assert guess.rate == pytest.approx(1000 / (280 / 3))
    assert guess.meets and guess.available_s == 3590 and guess.decisions_that_fit == 1000
    assert guess.explain_rate == pytest.approx(10.0) and guess.render_rate == pytest.approx(30.0)
    assert guess.finish == NOW + timedelta(seconds=280 / 3 + 10)
    line = guess.describe()
    assert line.endswith("meets the deadline") and "explain 10.0/s, render 30.0/s" in line
    assert "warm-up" not in line


def test_an_estimate_that_misses_says_what_would_meet_it():
    pipeline = Pipeline(explain_s=0.2, render_s=0.0, device_workers=2, render_workers=0)  # no reports
    deadline = (NOW + timedelta(seconds=310)).astimezone(timezone(timedelta(hours=1)))
    guess = estimate(pipeline=pipeline, explained=0, unexplained=9600, done=400, workers=2, num_samples=5000,
                     now=NOW, deadline=deadline, margin_s=10, steady=False)
    # 9,600 left at 10/s: 960 s needed, 300 s available
    assert not guess.meets and guess.needed_s == pytest.approx(960)
    assert guess.workers_needed == 7  # ceil(2 * 960 / 300)
    assert guess.samples_that_fit == 1562  # floor(5000 * 300 / 960)
    assert guess.decisions_that_fit == 3400  # 400 done + 10/s * 300 s
    line = guess.describe()
    assert "misses it" in line and "7 workers" in line and "num_samples <= 1562" in line and "3400 decisions" in line
    assert "+01:00" in line and "\n" not in line and "warm-up included" in line


def test_fewer_samples_cannot_help_when_rendering_alone_misses():
    pipeline = Pipeline(explain_s=0.2, render_s=2.0, device_workers=2, render_workers=1, batch=32)
    guess = estimate(pipeline=pipeline, explained=0, unexplained=400, done=0, workers=2, num_samples=5000,
                     now=NOW, deadline=NOW + timedelta(seconds=60), margin_s=10)
    assert not guess.meets and guess.samples_that_fit == 0 and "num_samples" not in guess.describe()


def test_no_time_left_at_all():
    pipeline = Pipeline(explain_s=1.0, render_s=0.0, device_workers=1, render_workers=0)
    guess = estimate(pipeline=pipeline, explained=0, unexplained=90, done=10, workers=1, num_samples=500,
                     now=NOW, deadline=NOW + timedelta(seconds=5), margin_s=10)
    assert not guess.meets and guess.workers_needed is None and guess.samples_that_fit == 0
    assert guess.decisions_that_fit == 10


def test_the_render_reserve_stops_explaining_when_what_is_explained_needs_the_time_left():
    pipeline = Pipeline(explain_s=0.2, render_s=0.3, device_workers=2, render_workers=1, batch=32)
    shards = [50, 50, 50, 50]
    assert shards_that_fit(pipeline, left_s=1000.0, backlog=0, sizes=shards) == 4
    # one shard: (50 x 0.2 + 50 x 0.3) / 3 = 8.3 s, and its explaining + last batch: 5 + 9.6 = 14.6 s
    assert shards_that_fit(pipeline, left_s=15.0, backlog=0, sizes=shards) == 1
    # 100 reports waiting to be rendered take (100 x 0.3) / 3 = 10 s on all workers: nothing more fits in 12 s
    assert shards_that_fit(pipeline, left_s=12.0, backlog=100, sizes=shards) == 0
    assert shards_that_fit(pipeline, left_s=0.0, backlog=0, sizes=shards) == 0
    assert shards_that_fit(pipeline, left_s=5.0, backlog=0, sizes=[]) == 0
    explain_only = Pipeline(explain_s=0.2, render_s=0.0, device_workers=2, render_workers=0)
    assert shards_that_fit(explain_only, left_s=10.0, backlog=500, sizes=shards) == 2  # 5 s per shard


def test_the_render_prior_stretches_with_the_cores_the_workers_want_beyond_the_host_s():
    assert render_prior(3, 2) == pytest.approx(1.5 * PRIOR_RENDER_S)  # 2 device workers + 1 render worker, 2 cores
    assert render_prior(16, 16) == render_prior(4, 16) == PRIOR_RENDER_S  # a core each
    assert render_prior(40, None) == PRIOR_RENDER_S  # a cluster's workers: taken to have a core each


def test_on_shared_cores_the_reserve_starts_no_shard_it_cannot_render():
    """The demo with a 60 s deadline on 2 cores (measured 2026-12-07): the first shard of 50 explained, 18.7 s
    left, 50 decisions in flight. A core per worker (the bare prior) lets one more shard start; counting the 3
    workers on 2 cores, none does, and the workers render what is explained."""
    def fit(render_s: float) -> int:
        pipeline = Pipeline(explain_s=0.1, render_s=render_s, device_workers=2, render_workers=1, batch=8)
        return shards_that_fit(pipeline, left_s=18.7, backlog=50, sizes=[50] * 7)

    assert fit(PRIOR_RENDER_S) == 2
    assert fit(render_prior(3, 2)) == 1  # the shard in flight only
