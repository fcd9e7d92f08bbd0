"""tasks/explain/worker.py: the worker's device, explaining one shard (parts, cache, same answer in any shard),
bisecting failures, the model's output check, the shard result, merging."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tasks.errors import LimelightError
from tasks.explain.aggregate import explanation_schema
from tasks.explain.worker import (
    _CACHE,
    DEVICE_ENV,
    ShardResult,
    clear_cache,
    conform,
    explain_shard,
    merge_parts,
    worker_device,
)
from tasks.inputs.config import load_config
from tasks.inputs.data import scan_decisions
from tasks.plan.shards import plan_shards
from tasks.run.manifest import build_run_info, utc_now


def test_worker_device_follows_the_cluster_env(monkeypatch):
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert worker_device() == "cpu"
    import torch

    monkeypatch.setenv(DEVICE_ENV, "cuda")
    if torch.cuda.is_available():
        assert worker_device() == "cuda:0"
    else:
        with pytest.raises(LimelightError, match="cannot use it"):
            worker_device()


def _run_info(config):
    from tasks.inputs.model import model_sha256

    return build_run_info(config, run_id="test-run", started=utc_now(), model_sha256=model_sha256(config.model),
                          decisions_sha256="d" * 64, reference_sha256="r" * 64)


def test_explain_shard_writes_parts_and_caches_the_model(small_demo, tmp_path, monkeypatch):
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    config = load_config(small_demo)
    index = scan_decisions(config)
    shards = plan_shards(index, 16)
    run = _run_info(config)
    clear_cache()
    first = explain_shard(config, shards[0], run, tmp_path)
    assert len(_CACHE) == 1
    cached = next(iter(_CACHE.values()))
    second = explain_shard(config, shards[1], run, tmp_path)
    assert next(iter(_CACHE.values())) is cached  # model and statistics loaded once per process
    table = pq.read_table(first.part)
    shown = table.group_by("customer_id").aggregate([("rank", "count")]).column("rank_count").to_pylist()
    assert first.decisions == 16 and first.rows == table.num_rows == sum(shown)
    assert all(1 <= n <= 2 * config.explain.top_k + 1 for n in shown)  # reasons (+1 tied), then favourable
    assert first.device == "cpu" and first.worker.endswith(str(os.getpid()))
    assert table.schema.equals(explanation_schema(config.data.id_column))
    assert list(dict.fromkeys(table.column("customer_id").to_pylist())) == index.ids.to_pylist()[:16]
    assert {1, 2, 3} <= set(table.column("rank").to_pylist())
    applicants = pq.read_table(first.applicants)
    assert applicants.column_names == ["customer_id", "full_name", "decision_date"]
    review = {r for r, flag in zip(table.column("customer_id").to_pylist(), table.column("needs_review").to_pylist(),
                                   strict=True) if flag}
    assert set(first.review_ids) == review

    merged = tmp_path / "explanations.parquet"
    rows = merge_parts([second, first], merged, "customer_id", {b"k": b"v"})
    assert rows == first.rows + second.rows
    result = pq.read_table(merged)
    assert result.schema.metadata == {b"k": b"v"}
    assert list(dict.fromkeys(result.column("customer_id").to_pylist())) == index.ids.to_pylist()[:32]
    assert not list(tmp_path.glob(".*.tmp"))  # nothing half-written left behind

    # a part written before the `tied` column existed (a run resumed across versions) merges with it null
    older = tmp_path / "older-part.parquet"
    pq.write_table(pq.read_table(first.part).drop_columns(["tied"]), older)
    merge_parts([dataclasses.replace(first, part=str(older)), second], merged, "customer_id")
    both = pq.read_table(merged)
    assert both.column("tied").null_count == first.rows
    assert both.column("tied").slice(first.rows).null_count == 0


def test_same_decision_same_explanation_in_any_shard(small_demo, tmp_path, monkeypatch):
    """Explanations depend on the decision (seeded by its id), not on the shard it lands in."""
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    config = load_config(small_demo)
    index = scan_decisions(config)
    run = _run_info(config)
    alone = explain_shard(config, plan_shards(index, 16, np.array([20]))[0], run, tmp_path / "a")
    batch = explain_shard(config, plan_shards(index, 16, np.array([5, 20, 33]))[0], run, tmp_path / "b")
    one = pq.read_table(alone.part).to_pandas()
    many = pq.read_table(batch.part).to_pandas()
    many = many[many.customer_id == one.customer_id[0]].reset_index(drop=True)
    assert one.equals(many)


def test_conform_orders_and_types_columns():
    import pandas as pd

    frame = pd.DataFrame({
        "needs_review": [False], "intercept": [0.1], "model_pred": [0.5], "local_pred": [0.4], "fidelity": [0.9],
        "direction": ["raises"], "share": [100.0], "weight": [0.2], "value": ["3"], "condition": ["x > 1"],
        "label": ["X"], "feature": ["x"], "rank": [1], "id": ["A"], "extra": [1],
        "review_reasons": [""], "stability": [1.0], "order_agrees": [True], "selection_z": [3.0], "stable": [True],
        "num_samples": [10000], "prediction_gap": [0.1], "deletion_delta": [-0.2], "deletion_holds": [True],
        "role": ["reason"], "kernel_width": [0.7], "kernel_width_sqrt_d": [0.2], "effective_samples": [4000.0],
        "fidelity_widest": [0.3], "tied": [False], "withheld": [False],
    })
    table = conform(frame, "id")
    assert table.schema.equals(explanation_schema("id"))
    with pytest.raises(ValueError, match="lacks columns"):
        conform(frame.drop(columns=["fidelity"]), "id")


def test_shard_result_is_small_and_picklable():
    import pickle

    result = ShardResult(0, 1, 3, "/p", "/a", ("x",), 0.5, "cpu", "host:1")
    assert pickle.loads(pickle.dumps(result)) == result
    assert Path(result.part).name == "p"


def test_bisection_isolates_failing_rows():
    from tasks.explain.worker import bisect_failures

    calls = []

    def explain(rows: np.ndarray) -> list[int]:
        calls.append(len(rows))
        if {3, 11} & set(rows.tolist()):
            raise ValueError(f"bad rows in {rows.tolist()}\nsecond line")
        return rows.tolist()

    done, failed = bisect_failures(explain, np.arange(16))
    assert [r for rows, _ in done for r in rows.tolist()] == [r for r in range(16) if r not in (3, 11)]
    assert [r for r, _ in failed] == [3, 11]
    assert failed[0][1] == "ValueError: bad rows in [3]"
    assert len(calls) < 16  # far fewer calls than one per row


def test_checked_model_refuses_non_probabilities():
    import torch

    from tasks.errors import ModelError
    from tasks.explain.worker import CheckedModel

    class Fake:
        description, output = "fake", "probabilities"

        def __init__(self, out):
            self.out = torch.tensor(out)

        def __call__(self, x):
            return self.out

    assert CheckedModel(Fake([[0.2, 0.8]]))(None).shape == (1, 2)
    assert CheckedModel(Fake([[0.2, 0.8]])).description == "fake"
    with pytest.raises(ModelError, match="non-finite"):
        CheckedModel(Fake([[float("nan"), 0.5]]))(None)
    with pytest.raises(ModelError, match="not probabilities"):
        CheckedModel(Fake([[0.9, 0.9]]))(None)
    logits = Fake([[3.0, -1.0]])
    logits.output = "logits"
    CheckedModel(logits)(None)  # logits are turned into probabilities by the model wrapper: not checked here


def test_shard_result_round_trips_as_a_record():
    from tasks.explain.worker import ShardResult

    result = ShardResult(3, 2, 6, "p", "a", ("x",), 1.5, "cpu", "host:1", "shard-00003.1", (1,), ("x", "y"),
                         (("z", "explain", "ValueError: no"),))
    assert ShardResult.from_dict(result.to_dict()) == result
