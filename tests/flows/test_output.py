"""flows/output.py: the few failed or unreached ids put in the selection's order, the most frequent first reasons."""

import pyarrow as pa
import pyarrow.parquet as pq

from flows.output import failures_table, in_order, top_first_reasons


def test_ids_are_put_in_the_selections_order_repeats_together_strangers_last():
    selected = pa.array(["s5", "s1", "s9", "s3", "s7"])
    assert in_order(["s3", "s1", "s7"], selected) == ["s1", "s3", "s7"]
    assert in_order(["x", "s9", "s5", "s9"], selected) == ["s5", "s9", "s9", "x"]
    assert in_order([], selected) == []
    assert in_order(["b", "a"], None) == ["b", "a"]  # no selection to go by: as given


def test_the_failures_table_follows_the_selection():
    selected = pa.array(["a", "b", "c"])
    table = failures_table([("c", "render", "boom"), ("a", "input", "bad row")], "loan", selected)
    assert table.to_pydict() == {"loan": ["a", "c"], "stage": ["input", "render"], "error": ["bad row", "boom"]}
    assert failures_table([], "loan", None).num_rows == 0


def test_top_first_reasons_count_rank_one_rows_across_row_groups(tmp_path):
    path = tmp_path / "explanations.parquet"
    features = ["income", "debt", "age", "debt", "income", "debt", "term", "age", "age"]
    ranks = [1, 1, 1, 1, 2, 1, 1, 1, 1]
    pq.write_table(pa.table({"feature": features, "rank": ranks}), path, row_group_size=4)
    assert top_first_reasons(str(path), 2) == [("debt", 3), ("age", 3)]  # a tie: the first seen first
    assert top_first_reasons(str(path)) == [("debt", 3), ("age", 3), ("income", 1), ("term", 1)]
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"feature": pa.array([], pa.string()), "rank": pa.array([], pa.int64())}), empty)
    assert top_first_reasons(str(empty)) == []


def test_the_flow_returns_the_first_review_ids_and_counts_them_all():
    from flows.output import RETURNED_REVIEW_IDS, returned_review

    ids = [f"C-{i:06d}" for i in range(RETURNED_REVIEW_IDS + 5)]
    for given in (ids, pa.array(ids)):
        returned = returned_review(given)
        assert returned["review_ids"] == ids[:RETURNED_REVIEW_IDS] and returned["review_count"] == len(ids)
    assert returned_review(pa.array([], pa.string())) == {"review_ids": [], "review_count": 0}
