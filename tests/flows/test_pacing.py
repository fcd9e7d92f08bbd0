"""flows/pacing.py: a deadline run's task times, per worker, into the stages' rates and the calibration."""

from __future__ import annotations

import pytest

from flows.pacing import Pacer
from tasks.run.deadline import PRIOR_RENDER_S


def pacer_with(explained: list[tuple[str, float, float]], render: bool = True) -> Pacer:
    """A pacer that saw explain shards of 10 decisions: (worker, submitted, done), in the order they finished."""
    pacer = Pacer(device_workers=2, render_workers=1, devices_render=True, batch=32, render=render)
    for number, (worker, submitted, done) in enumerate(explained):
        future = f"shard-{number}"
        pacer.submitted[future] = submitted
        pacer.explained(future, worker, 10, done)
    return pacer


def test_shards_queued_on_a_worker_count_from_the_end_of_the_one_before():
    # both shards of each worker submitted at 0; first shards end at 12 and 14 (model load), the next 2 s later
    pacer = pacer_with([("a", 0.0, 12.0), ("b", 0.0, 14.0), ("a", 0.0, 14.0), ("b", 0.0, 16.0)], render=False)
    assert pacer.explain_calibrated(explaining_left=True)
    measured = pacer.pipeline()
    assert measured is not None
    pipeline, steady = measured
    assert steady and pipeline.explain_s == pytest.approx(0.2) and pipeline.render_s == 0.0


def test_calibrated_once_every_device_worker_is_warm_and_a_shard_started_since():
    pacer = pacer_with([("a", 0.0, 12.0), ("a", 0.0, 14.0)])
    assert not pacer.explain_calibrated(explaining_left=True)  # b still loads its model
    assert pacer.explain_calibrated(explaining_left=False)  # nothing left to explain: as calibrated as it gets
    pacer = pacer_with([("a", 0.0, 12.0), ("b", 0.0, 30.0)])
    assert not pacer.explain_calibrated(explaining_left=True)  # warm, but no steady shard yet
    pacer = pacer_with([("a", 0.0, 12.0), ("a", 0.0, 14.0), ("b", 0.0, 30.0)])
    assert not pacer.explain_calibrated(explaining_left=True)  # a's second shard ran while b compiled
    pacer = pacer_with([("a", 0.0, 12.0), ("a", 0.0, 14.0), ("b", 0.0, 30.0), ("a", 30.0, 32.0)])
    assert pacer.warm_at == 30.0 and pacer.explain_calibrated(explaining_left=True)


def test_a_render_batch_counts_without_the_warm_up_its_worker_timed_apart():
    pacer = pacer_with([("a", 0.0, 12.0), ("b", 0.0, 14.0), ("a", 0.0, 14.0), ("b", 0.0, 16.0)])
    assert not pacer.render_timed()
    assert pacer.pipeline()[0].render_s == PRIOR_RENDER_S  # type: ignore[index]
    pacer.submitted["batch"] = 12.0
    # 10 reports on a fresh render worker: 6 s for the first (warm-up), 1.8 s for the other 9
    pacer.rendered("batch", {"reports": [{}] * 10, "failures": [], "worker": "r", "warm": True, "warmup_s": 6.0,
                             "warmup_items": 1}, done=19.8)
    assert pacer.render_timed()
    pipeline, steady = pacer.pipeline()  # type: ignore[misc]
    assert steady and pipeline.render_s == pytest.approx(0.2)


def test_before_a_render_batch_is_timed_the_oldest_in_flight_is_a_floor():
    pacer = pacer_with([("a", 0.0, 12.0)])
    assert pacer.render_floor({}) == 0.0
    pacer.submit("batch")
    pacer.submitted["batch"] -= 32.0  # in flight for 32 s with 16 reports: at least 2 s per report
    assert pacer.render_floor({"batch": 16}) == pytest.approx(2.0, abs=0.1)
    assert pacer.pipeline(2.0)[0].render_s == 2.0  # type: ignore[index]


def test_until_a_render_batch_is_timed_the_rate_is_the_run_s_prior():
    pacer = Pacer(device_workers=2, render_workers=1, devices_render=True, batch=8, render=True, render_prior_s=0.45)
    pacer.submitted["shard"] = 0.0
    pacer.explained("shard", "a", 10, 5.0)
    assert pacer.pipeline()[0].render_s == 0.45  # type: ignore[index]
    assert pacer.pipeline(render_floor=1.2)[0].render_s == 1.2  # type: ignore[index]  # a batch in flight is slower
