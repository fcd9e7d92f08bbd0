"""tasks/plan/shards.py: planning shards (file slices of shard_size, in the selection's order), splitting one, reading
one in order."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from tasks.inputs.config import load_config
from tasks.inputs.data import DecisionsIndex, scan_decisions
from tasks.inputs.sources import SourceFile
from tasks.plan.shards import Piece, plan_shards, read_shard


def index_of(*counts: int) -> DecisionsIndex:
    files = tuple(SourceFile(f"/data/part-{i}.parquet", n) for i, n in enumerate(counts))
    ids = pa.chunked_array([pa.array([f"{i}-{r}" for r in range(n)], pa.string()) for i, n in enumerate(counts)])
    return DecisionsIndex(files, ids)


def test_plan_covers_every_row_once_across_files():
    index = index_of(10, 3, 0, 12)
    shards = plan_shards(index, 4)
    assert sum(s.size for s in shards) == 25
    assert all(s.size == 4 for s in shards[:-1]) and shards[-1].size == 1
    assert [s.index for s in shards] == list(range(len(shards)))
    # the third shard takes rows 8-9 of file 0, then rows 0-1 of file 1
    assert shards[2].pieces == (Piece(index.files[0], 8, 10), Piece(index.files[1], 0, 2))
    seen = [(p.source.path, r) for s in shards for p in s.pieces for r in range(p.start, p.stop)]
    assert len(seen) == len(set(seen)) == 25


def test_plan_of_selected_positions_keeps_order_and_merges_runs():
    index = index_of(10, 10)
    positions = np.array([3, 4, 5, 12, 13, 0, 19])
    shards = plan_shards(index, 5, positions)
    assert [s.size for s in shards] == [5, 2]
    assert shards[0].pieces == (Piece(index.files[0], 3, 6), Piece(index.files[1], 2, 4))
    assert shards[1].pieces == (Piece(index.files[0], 0, 1), Piece(index.files[1], 9, 10))


def test_plan_rejects_bad_size():
    with pytest.raises(ValueError):
        plan_shards(index_of(3), 0)


def test_read_shard_in_requested_order(small_demo):
    config = load_config(small_demo)
    index = scan_decisions(config)
    positions = np.array([40, 2, 3, 4, 21, 0])
    shard = plan_shards(index, 16, positions)[0]
    rows = read_shard(config, shard)
    expected = [index.ids[int(p)].as_py() for p in positions]
    assert rows.ids == expected
    assert rows.applicants.column(config.data.id_column).to_pylist() == expected
    assert rows.x.shape == (6, len(config.features))
    whole = read_shard(config, plan_shards(index, 64)[0])
    np.testing.assert_array_equal(rows.x, whole.x[positions])


def test_split_shard_halves_pieces_in_order():
    from tasks.plan.shards import Shard, split_shard

    index = index_of(5, 5)
    shard = plan_shards(index, 7, np.array([3, 4, 5, 6, 7, 0, 1]))[0]
    left, right = split_shard(shard)
    assert (left.size, right.size) == (3, 4)
    assert (left.first, right.first) == (0, 3)
    assert left.pieces == (Piece(index.files[0], 3, 5), Piece(index.files[1], 0, 1))
    assert right.pieces == (Piece(index.files[1], 1, 3), Piece(index.files[0], 0, 2))
    assert (left.name, right.name) == ("shard-00000.0", "shard-00000.1")
    a, b = split_shard(right)
    assert b.first == 5 and b.name == "shard-00000.1.1" and sorted([b.order, left.order, a.order]) == [
        left.order, a.order, b.order]
    with pytest.raises(ValueError):
        split_shard(Shard(0, (Piece(index.files[0], 0, 1),)))
