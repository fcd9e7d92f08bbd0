"""flows/output.py: the few failed or unreached ids put in the selection's order, the most frequent first reasons,
only the indexed reports kept."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.output import failures_table, in_order, keep_only_reports, top_first_reasons


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


@pytest.mark.parametrize("batch_rows", [16_384, 3])
def test_top_first_reasons_count_rank_one_rows_across_row_groups(tmp_path, monkeypatch, batch_rows):
    monkeypatch.setattr("flows.output.TOP_REASONS_BATCH_ROWS", batch_rows)  # 3: batches across row groups
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


def test_only_the_indexed_reports_are_kept_in_every_folder_and_emptied_folders_go(tmp_path):
    staged = ["reports/ab/cd/C-1.pdf", "reports/ab/cd/C-2.pdf", "reports/ab/ef/C-3.pdf", "reports/ab/C-4.pdf",
              "reports/zz/C-5.pdf", "reports/zz/.C-6.pdf.tmp", "reports/ab/cd/C-7.pdf", "reports/cut/C-8.pdf",
              "reports/C-9.pdf"]
    for name in staged:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"%PDF")
    (tmp_path / "reports" / "empty" / "deeper").mkdir(parents=True)
    indexed = ["reports/zz/C-5.pdf", "reports/ab/cd/C-2.pdf", "reports/ab/C-4.pdf", "reports/ab/ef/C-3.pdf",
               "reports/C-9.pdf"]
    keep_only_reports(tmp_path, pa.chunked_array([indexed[:2], indexed[2:]]))
    left = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "reports").rglob("*"))
    assert left == ["reports/C-9.pdf", "reports/ab", "reports/ab/C-4.pdf", "reports/ab/cd", "reports/ab/cd/C-2.pdf",
                    "reports/ab/ef", "reports/ab/ef/C-3.pdf", "reports/zz", "reports/zz/C-5.pdf"]
    keep_only_reports(tmp_path, pa.array([], pa.string()))  # nothing indexed: nothing kept, the folder stays
    assert list((tmp_path / "reports").iterdir()) == []
