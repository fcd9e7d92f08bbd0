"""tasks/plan/sizing.py: shard and render-batch sizes keep a run's task runs bounded however many decisions."""

from __future__ import annotations

from math import ceil

import pytest

from tasks.plan.sizing import FLOW_TASK_RUNS, MAX_RENDER_BATCHES, MAX_SHARDS, RENDER_BATCH, RunSizes, run_sizes


def counted(sizes: RunSizes) -> tuple[int, int]:
    """Shards and render batches by walking the plan the flow makes (batches never span shards)."""
    shards = batches = 0
    for first in range(0, sizes.decisions, sizes.shard_size):
        size = min(sizes.shard_size, sizes.decisions - first)
        shards += 1
        batches += ceil(size / sizes.render_batch)
    return shards, batches


def test_small_runs_keep_the_configured_sizes():
    demo = run_sizes(400, 50)
    assert (demo.shard_size, demo.render_batch, demo.shards, demo.render_batches) == (50, 32, 8, 16)
    assert run_sizes(48, 16).render_batch == 16  # a batch never exceeds its shard
    assert run_sizes(0, 256) == RunSizes(0, 256, 32) and run_sizes(0, 256).task_runs == FLOW_TASK_RUNS
    assert run_sizes(20_000, 256) == RunSizes(20_000, 256, RENDER_BATCH)


@pytest.mark.parametrize("decisions", [1, 255, 257, 10_000, 64_001, 100_000, 256_001, 999_983, 1_000_000,
                                       10_000_000])
@pytest.mark.parametrize("shard_size", [1, 50, 256, 4096])
def test_task_runs_are_bounded_whatever_the_number_of_decisions(decisions, shard_size):
    sizes = run_sizes(decisions, shard_size)
    assert counted(sizes) == (sizes.shards, sizes.render_batches)
    assert sizes.shard_size >= shard_size and sizes.render_batch >= min(RENDER_BATCH, sizes.shard_size)
    assert sizes.shards <= max(MAX_SHARDS, ceil(decisions / shard_size))  # never more than configured
    if shard_size * MAX_SHARDS <= decisions:
        assert sizes.shards <= MAX_SHARDS
    assert sizes.render_batches <= max(MAX_SHARDS + MAX_RENDER_BATCHES, ceil(decisions / RENDER_BATCH) + sizes.shards)
    if decisions >= 100_000:
        assert sizes.task_runs <= MAX_SHARDS + MAX_SHARDS + MAX_RENDER_BATCHES + FLOW_TASK_RUNS


def test_a_million_decisions():
    sizes = run_sizes(1_000_000, 256)
    assert (sizes.shard_size, sizes.render_batch) == (1000, 500)
    assert (sizes.shards, sizes.render_batches) == (1000, 2000)
    assert sizes.task_runs == 3008
    unbounded = RunSizes(1_000_000, 256, 32)
    assert (unbounded.shards, unbounded.render_batches) == (3907, 31_250)  # what the configured sizes would make


def test_sizes_are_a_function_of_their_inputs_only():
    assert run_sizes(123_457, 256) == run_sizes(123_457, 256)  # a resumed run plans the same shards
    with pytest.raises(ValueError):
        run_sizes(10, 0)
