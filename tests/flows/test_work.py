"""flows/work.py: the subflow's window of shards in flight."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from flows.work import Plan, _Work
from tasks.run.ledger import Ledger


def window(workers: int, deadline: datetime | None) -> int:
    plan = Plan(shards=[], planned_ids=lambda shard: [], ledger=Ledger(0, 0, 0))
    work = _Work(None, plan, None, Path("unused"), render=True, workers=workers,  # type: ignore[arg-type]
                 deadline=deadline, best_effort=True, render_resource=True, render_batch=8, render_workers=1)
    return work.window


def test_a_deadline_run_keeps_one_shard_per_device_worker_in_flight():
    """Without a deadline each worker has a shard queued behind the running one, so it never waits for the
    flow; with one, the render reserve decides before each next shard starts (a queued shard would start the
    moment the one before ends, before the reserve has seen that shard's time)."""
    assert window(2, None) == 4 and window(1, None) == 2
    soon = datetime.now(UTC) + timedelta(minutes=5)
    assert window(2, soon) == 2 and window(1, soon) == 1
