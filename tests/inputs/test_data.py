"""tasks/inputs/data.py, checks.py and sources.py: validation (one line naming file/column/row), encoding, streamed row
reads, --ids files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.errors import InputError
from tasks.inputs.config import parse_config
from tasks.inputs.data import (
    MIN_REFERENCE_ROWS,
    decision_ids,
    read_id_file,
    read_reference,
    read_rows,
    read_rows_at,
    report_columns,
    scan_decisions,
    select_positions,
)
from tasks.inputs.sources import list_source_files
from tasks.plan.validate import validate_all

HOUSING = ["own", "rent", "mortgage"]


def decisions_table(n: int = 30, **overrides: Any) -> pa.Table:
    columns: dict[str, Any] = {
        "customer_id": [f"C{i:03d}" for i in range(n)],
        "full_name": [f"Person {i}" for i in range(n)],
        "income": [20_000.0 + 1000 * i for i in range(n)],
        "dti": pa.array([i % 7 for i in range(n)], pa.int32()),
        "housing": [HOUSING[i % 3] for i in range(n)],
    }
    columns.update(overrides)
    return pa.table(columns)


def reference_table(n: int = 40) -> pa.Table:
    return pa.table({
        "income": [15_000.0 + 900 * i for i in range(n)],
        "dti": [float(i % 9) for i in range(n)],
        "housing": [HOUSING[(i * 2) % 3] for i in range(n)],
    })


def make_config(folder: Path, decisions: Path | None = None, reference: Path | None = None,
                fail_missing: tuple[str, ...] = (), engine: str = "batched", **report: Any):
    """A config of income, dti (numeric) and housing; ``fail_missing`` names the features with missing = "fail"."""
    raw = {
        "data": {
            "decisions": str(decisions or folder / "decisions.parquet"),
            "reference": str(reference or folder / "reference.parquet"),
        },
        "model": {"path": "model.pt", "classes": ["approved", "declined"], "explain": "declined"},
        "explain": {"engine": engine},
        "report": {"applicant_fields": ["full_name"], **report},
        "features": [
            {"name": "income", "label": "Income", "kind": "numeric"},
            {"name": "dti", "label": "Debt to income", "kind": "numeric"},
            {"name": "housing", "label": "Housing", "kind": "categorical", "categories": HOUSING},
        ],
    }
    for feature in raw["features"]:
        if feature["name"] in fail_missing:
            feature["missing"] = "fail"
    return parse_config(raw, folder / "limelight.toml")


@pytest.fixture
def inputs(tmp_path: Path):
    pq.write_table(decisions_table(), tmp_path / "decisions.parquet", row_group_size=8)
    pq.write_table(reference_table(), tmp_path / "reference.parquet")
    return make_config(tmp_path)


def one_line(error: pytest.ExceptionInfo[InputError]) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_valid_inputs_give_ids_in_order(inputs):
    index = scan_decisions(inputs, require_report_columns=True)
    assert index is not None and index.num_rows == 30
    assert index.ids.to_pylist() == [f"C{i:03d}" for i in range(30)]
    assert decision_ids(inputs) == index.ids.to_pylist()


def test_encoding_is_float64_in_config_order_with_category_codes(inputs):
    rows = read_rows(inputs, list_source_files(inputs.data.decisions, "d")[0], 3, 7)
    assert rows.ids == ["C003", "C004", "C005", "C006"]
    assert rows.x.dtype == np.float64 and rows.x.shape == (4, 3)
    np.testing.assert_array_equal(rows.x[:, 0], [23_000, 24_000, 25_000, 26_000])
    np.testing.assert_array_equal(rows.x[:, 1], [3, 4, 5, 6])
    np.testing.assert_array_equal(rows.x[:, 2], [0, 1, 2, 0])  # own, rent, mortgage, own
    assert rows.applicants.column_names == ["customer_id", "full_name"]
    assert rows.applicants.column("full_name").to_pylist()[0] == "Person 3"


def test_rows_across_row_groups_and_arbitrary_order(inputs):
    source = list_source_files(inputs.data.decisions, "d")[0]
    rows = read_rows(inputs, source, 6, 20)  # row groups of 8: spans three
    assert rows.ids == [f"C{i:03d}" for i in range(6, 20)]
    picked = read_rows_at(inputs, source, [25, 2, 17, 2])
    assert picked.ids == ["C025", "C002", "C017", "C002"]
    np.testing.assert_array_equal(picked.x[:, 0], [45_000, 22_000, 37_000, 22_000])


def test_reference_is_encoded_like_decisions(inputs):
    reference = read_reference(inputs)
    assert reference.shape == (40, 3) and reference.dtype == np.float64
    assert set(np.unique(reference[:, 2])) <= {0.0, 1.0, 2.0}


def test_date_column_is_a_report_column(tmp_path):
    config = make_config(tmp_path, date_column="decided_on")
    assert report_columns(config) == ["full_name", "decided_on"]


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        (decisions_table().drop(["customer_id"]), "id column ([data] id_column) 'customer_id' not found"),
        (decisions_table().drop(["dti"]), "feature column 'dti' not found"),
        (decisions_table(income=[str(i) for i in range(30)]), "column 'income' has type string"),
        (decisions_table(housing=[1.5] * 30), "column 'housing' has type double"),
        (decisions_table(customer_id=[1.0 * i for i in range(30)]), "column 'customer_id' has type double"),
        (decisions_table(customer_id=[f"C{i}" if i != 12 else None for i in range(30)]), "row 13: column "
                                                                                         "'customer_id': missing id"),
        (decisions_table(customer_id=[f"C{i % 25}" for i in range(30)]), "row 26: column 'customer_id': "
                                                                         "duplicate id 'C0' (first at row 1"),
        (decisions_table(housing=[HOUSING[i % 3] if i != 9 else "boat" for i in range(30)]),
         "row 10 (customer_id 'C009'): column 'housing': 'boat' is not a configured category (own, rent, mortgage)"),
        (decisions_table(income=[float("nan") if i == 4 else 1.0 for i in range(30)]),
         "row 5 (customer_id 'C004'): column 'income': missing value"),
        (decisions_table(dti=pa.array([None if i == 29 else 1 for i in range(30)], pa.int64())),
         "row 30 (customer_id 'C029'): column 'dti': missing value"),
        (decisions_table().slice(0, 0), "no decisions (0 rows)"),
    ],
    ids=["no-id", "no-feature", "numeric-as-text", "category-as-float", "float-ids", "null-id", "duplicate-id",
         "unknown-category", "nan", "null", "empty"],
)
def test_bad_decisions_give_one_line_naming_file_column_row(tmp_path, table, expected):
    pq.write_table(table, tmp_path / "decisions.parquet", row_group_size=8)
    pq.write_table(reference_table(), tmp_path / "reference.parquet")
    config = make_config(tmp_path, fail_missing=("income", "dti"))
    with pytest.raises(InputError) as error:
        scan_decisions(config)
    message = one_line(error)
    assert message.startswith(str(tmp_path / "decisions.parquet"))
    assert expected in message


def test_missing_and_non_parquet_files(tmp_path):
    pq.write_table(reference_table(), tmp_path / "reference.parquet")
    config = make_config(tmp_path)
    with pytest.raises(InputError, match=r"decisions.parquet: not found \(\[data\] decisions\)"):
        scan_decisions(config)
    (tmp_path / "decisions.parquet").write_text("customer_id,income\nC1,3\n")
    with pytest.raises(InputError, match="decisions.parquet: not a readable Parquet file"):
        scan_decisions(config)


def test_report_columns_required_only_when_rendering(tmp_path):
    pq.write_table(decisions_table().drop(["full_name"]), tmp_path / "decisions.parquet")
    pq.write_table(reference_table(), tmp_path / "reference.parquet")
    config = make_config(tmp_path)
    assert scan_decisions(config) is not None
    with pytest.raises(InputError, match=r"column 'full_name' \(\[report\]\) not found"):
        scan_decisions(config, require_report_columns=True)


def test_validate_collects_every_problem(tmp_path):
    bad = decisions_table(housing=["boat"] * 30, customer_id=["same"] * 30).drop(["dti"])
    pq.write_table(bad, tmp_path / "decisions.parquet")
    pq.write_table(reference_table(5), tmp_path / "reference.parquet")
    config = make_config(tmp_path)
    problems: list[str] = []
    assert scan_decisions(config, problems=problems) is None
    read_reference(config, problems=problems)
    text = "\n".join(problems)
    assert "feature column 'dti' not found" in text
    assert "'boat' is not a configured category" in text
    assert f"reference has 5 rows; LIME's statistics need at least {MIN_REFERENCE_ROWS}" in text


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        (reference_table(0), "reference has 0 rows"),
        (reference_table(3), "reference has 3 rows"),
        (reference_table().drop(["housing"]), "feature column 'housing' not found"),
        (reference_table().set_column(2, "housing", pa.array(["own"] * 39 + ["castle"])),
         "row 40: column 'housing': 'castle' is not a configured category"),
    ],
)
def test_bad_reference(tmp_path, table, expected):
    pq.write_table(decisions_table(), tmp_path / "decisions.parquet")
    pq.write_table(table, tmp_path / "reference.parquet")
    with pytest.raises(InputError) as error:
        read_reference(make_config(tmp_path))
    assert expected in one_line(error)
    assert "reference.parquet" in str(error.value)


def test_hive_partitioned_dataset(tmp_path):
    """A folder of files; a partition column (housing=...) is a feature; ignored files are skipped."""
    table = decisions_table(n=24)
    for value in HOUSING:
        part = tmp_path / "decisions" / f"housing={value}"
        part.mkdir(parents=True)
        subset = table.filter(pa.compute.equal(table["housing"], value)).drop(["housing"])
        pq.write_table(subset, part / "part-0.parquet", row_group_size=3)
    (tmp_path / "decisions" / "_SUCCESS").write_text("")
    pq.write_table(reference_table(), tmp_path / "reference.parquet")
    config = make_config(tmp_path, decisions=tmp_path / "decisions")
    index = scan_decisions(config)
    assert index is not None and index.num_rows == 24 and len(index.files) == 3
    # files sorted by path: housing=mortgage, housing=own, housing=rent
    assert [dict(f.partition)["housing"] for f in index.files] == ["mortgage", "own", "rent"]
    rows = read_rows(config, index.files[1], 0, 8)
    np.testing.assert_array_equal(rows.x[:, 2], [0] * 8)  # own
    assert rows.ids[0] == "C000"


def test_partition_values_are_validated(tmp_path):
    part = tmp_path / "decisions" / "housing=igloo"
    part.mkdir(parents=True)
    pq.write_table(decisions_table().drop(["housing"]), part / "p.parquet")
    pq.write_table(reference_table(), tmp_path / "reference.parquet")
    with pytest.raises(InputError, match="'igloo' is not a configured category"):
        scan_decisions(make_config(tmp_path, decisions=tmp_path / "decisions"))


def test_empty_dataset_folder(tmp_path):
    (tmp_path / "decisions").mkdir()
    pq.write_table(reference_table(), tmp_path / "reference.parquet")
    with pytest.raises(InputError, match="folder holds no Parquet files"):
        scan_decisions(make_config(tmp_path, decisions=tmp_path / "decisions"))


def test_ids_file_selects_in_order(inputs, tmp_path):
    index = scan_decisions(inputs)
    ids = tmp_path / "ids.csv"
    ids.write_text("customer_id\nC007\n\n# a comment\nC002, extra\nC029\n")
    positions = read_id_file(ids, index, "customer_id")
    np.testing.assert_array_equal(positions, [7, 2, 29])
    np.testing.assert_array_equal(select_positions(index, 2, ids, "customer_id"), [7, 2])
    np.testing.assert_array_equal(select_positions(index, 5), np.arange(5))
    assert select_positions(index) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("C001\nC404\n", "ids.txt line 2: unknown customer_id 'C404'"),
        ("C001\nC002\nC001\n", "ids.txt line 3: customer_id 'C001' already listed on line 1"),
        ("\n# nothing\n", "ids.txt: ids file lists no ids"),
    ],
)
def test_bad_ids_file(inputs, tmp_path, text, expected):
    index = scan_decisions(inputs)
    (tmp_path / "ids.txt").write_text(text)
    with pytest.raises(InputError) as error:
        read_id_file(tmp_path / "ids.txt", index, "customer_id")
    assert expected in one_line(error)


def test_missing_ids_file_and_bad_limit(inputs, tmp_path):
    index = scan_decisions(inputs)
    with pytest.raises(InputError, match="nope.txt: ids file not found"):
        select_positions(index, None, tmp_path / "nope.txt", "customer_id")
    with pytest.raises(InputError, match="--limit 0: must be at least 1"):
        select_positions(index, 0)


def test_integer_ids_become_strings(tmp_path):
    pq.write_table(decisions_table(customer_id=list(range(100, 130))), tmp_path / "decisions.parquet")
    pq.write_table(reference_table(), tmp_path / "reference.parquet")
    config = make_config(tmp_path)
    index = scan_decisions(config)
    assert index is not None and index.ids[0].as_py() == "100"
    assert read_rows(config, index.files[0], 0, 2).ids == ["100", "101"]


def test_row_level_problems_fail_the_row_not_the_run(tmp_path):
    """NaN, inf, null and unknown categories: recorded per row (global position), every other row goes on."""
    income = [float("nan") if i == 4 else float("inf") if i == 20 else 1.0 * i for i in range(30)]
    housing = [HOUSING[i % 3] if i != 9 else "boat" for i in range(30)]
    pq.write_table(decisions_table(income=income, housing=housing), tmp_path / "decisions.parquet",
                   row_group_size=8)
    pq.write_table(reference_table(), tmp_path / "reference.parquet")
    config = make_config(tmp_path, fail_missing=("income",))
    failures: dict[int, str] = {}
    index = scan_decisions(config, row_failures=failures)
    assert index is not None and index.num_rows == 30
    assert sorted(failures) == [4, 9, 20]
    assert failures[4].endswith("decisions.parquet row 5: column 'income': missing value")
    assert "row 10: column 'housing': 'boat' is not a configured category (own, rent, mortgage)" in failures[9]
    assert "row 21: column 'income': inf is not a finite number" in failures[20]
    with pytest.raises(InputError, match="row 5 .*'income': missing value"):  # without the dict: the first stops
        scan_decisions(config)


def test_row_positions_count_across_files(tmp_path):
    folder = tmp_path / "decisions"
    folder.mkdir()
    pq.write_table(decisions_table(10), folder / "a.parquet")
    second = decisions_table(10, customer_id=[f"D{i}" for i in range(10)],
                             housing=[HOUSING[0]] * 3 + ["boat"] + [HOUSING[0]] * 6)
    pq.write_table(second, folder / "b.parquet")
    pq.write_table(reference_table(), tmp_path / "reference.parquet")
    config = make_config(tmp_path, decisions=folder)
    failures: dict[int, str] = {}
    scan_decisions(config, row_failures=failures)
    assert list(failures) == [13] and "b.parquet row 4" in failures[13]


def test_infinite_reference_value_is_an_input_error(tmp_path):
    pq.write_table(decisions_table(), tmp_path / "decisions.parquet")
    reference = reference_table()
    reference = reference.set_column(0, "income", pa.array([float("-inf")] + [1.0] * 39))
    pq.write_table(reference, tmp_path / "reference.parquet")
    with pytest.raises(InputError, match="row 1: column 'income': -inf is not a finite number"):
        read_reference(make_config(tmp_path))


def test_validate_warns_about_the_rows_a_run_would_fail(tmp_path):
    """The rows a run fails alone are no problem for validate: counted per kind, the first ones located."""
    income = [float("nan") if i in (4, 6, 7) else float("inf") if i == 20 else 1.0 * i for i in range(30)]
    housing = [HOUSING[i % 3] if i != 9 else "boat" for i in range(30)]
    pq.write_table(decisions_table(income=income, housing=housing), tmp_path / "decisions.parquet",
                   row_group_size=8)
    pq.write_table(reference_table(), tmp_path / "reference.parquet")
    config = make_config(tmp_path, fail_missing=("income",))
    result = validate_all(config, check_model=False)
    assert result.problems == []
    run_failures: dict[int, str] = {}
    scan_decisions(config, row_failures=run_failures)
    assert result.row_failures == run_failures and sorted(run_failures) == [4, 6, 7, 9, 20]
    assert result.summary().startswith("30 decisions in 1 file: 25 would be explained, 5 would fail;")
    assert result.summary().endswith("no input-level problem")
    (line,) = result.row_warnings()
    assert line == (
        f"{tmp_path / 'decisions.parquet'}: 5 rows will go to failures.parquet (3 missing values, 1 infinite value, "
        "1 unknown category): row 5: column 'income': missing value; row 7: column 'income': missing value; "
        "row 8: column 'income': missing value; ... (2 more)"
    )


def test_validate_lists_input_problems_and_still_warns_about_rows(tmp_path):
    folder = tmp_path / "decisions"
    folder.mkdir()
    pq.write_table(decisions_table(10), folder / "a.parquet")
    second = decisions_table(10, customer_id=[f"D{i}" for i in range(10)],
                             income=[float("nan") if i == 3 else 1.0 for i in range(10)]).drop(["dti"])
    pq.write_table(second, folder / "b.parquet")
    pq.write_table(reference_table(5), tmp_path / "reference.parquet")
    result = validate_all(make_config(tmp_path, decisions=folder, fail_missing=("income",)), check_model=False)
    assert len(result.problems) == 2
    assert "b.parquet: feature column 'dti' not found" in result.problems[0]
    assert "reference has 5 rows" in result.problems[1]
    assert result.row_failures == {13: f"{folder / 'b.parquet'} row 4: column 'income': missing value"}
    assert result.row_warnings() == [f"{folder / 'b.parquet'}: 1 row will go to failures.parquet (1 missing value): "
                                     "row 4: column 'income': missing value"]


def _with_gaps(table: pa.Table, rows: dict[str, list[int]]) -> pa.Table:
    """``table`` with nulls (NaN for floats) at the given rows of each column."""
    for name, blanks in rows.items():
        values = table.column(name).to_pylist()
        for row in blanks:
            values[row] = float("nan") if isinstance(values[row], float) else None
        table = table.set_column(table.schema.get_field_index(name), name,
                                 pa.array(values, table.schema.field(name).type))
    return table


def test_missing_values_are_data_in_the_reference_and_explained_in_the_decisions(tmp_path):
    """Nulls and NaNs, numeric and categorical: no row failure, no input problem; encoded as NaN."""
    pq.write_table(_with_gaps(decisions_table(), {"income": [4], "dti": [5], "housing": [6]}),
                   tmp_path / "decisions.parquet", row_group_size=8)
    pq.write_table(_with_gaps(reference_table(), {"income": [0, 3], "dti": [1], "housing": [2, 7, 9]}),
                   tmp_path / "reference.parquet")
    config = make_config(tmp_path)
    failures: dict[int, str] = {}
    assert scan_decisions(config, row_failures=failures) is not None and failures == {}
    result = validate_all(config, check_model=False)
    assert result.problems == [] and result.row_failures == {}
    rows = read_rows(config, list_source_files(config.data.decisions, "d")[0], 0, 30)
    assert [np.flatnonzero(np.isnan(rows.x[:, j])).tolist() for j in range(3)] == [[4], [5], [6]]
    reference = read_reference(config)
    assert [np.flatnonzero(np.isnan(reference[:, j])).tolist() for j in range(3)] == [[0, 3], [1], [2, 7, 9]]


def test_missing_fail_keeps_the_row_failure_and_infinities_still_fail(tmp_path):
    table = _with_gaps(decisions_table(), {"income": [4], "housing": [6]})
    income = table.column("income").to_pylist()
    income[8] = float("inf")
    pq.write_table(table.set_column(2, "income", pa.array(income)), tmp_path / "decisions.parquet")
    pq.write_table(_with_gaps(reference_table(), {"housing": [2]}), tmp_path / "reference.parquet")
    failures: dict[int, str] = {}
    scan_decisions(make_config(tmp_path, fail_missing=("housing",)), row_failures=failures)
    assert sorted(failures) == [6, 8]
    assert failures[6].endswith("row 7: column 'housing': missing value")
    assert failures[8].endswith("row 9: column 'income': inf is not a finite number")
    assert len(read_reference(make_config(tmp_path, fail_missing=("housing",)))) == 40  # the reference keeps it


def test_lime_engine_refuses_a_reference_with_gaps_and_fails_missing_decisions(tmp_path):
    pq.write_table(_with_gaps(decisions_table(), {"dti": [3]}), tmp_path / "decisions.parquet")
    pq.write_table(_with_gaps(reference_table(), {"income": [5]}), tmp_path / "reference.parquet")
    config = make_config(tmp_path, engine="lime")
    with pytest.raises(InputError) as error:
        read_reference(config)
    assert one_line(error) == (
        f"{tmp_path / 'reference.parquet'}: column 'income' has missing values, which [explain] engine = \"lime\" "
        "cannot sample (the lime package has no missing-value support): use engine = \"batched\""
    )
    failures: dict[int, str] = {}
    scan_decisions(config, row_failures=failures)
    assert list(failures) == [3] and failures[3].endswith("column 'dti': missing value")


def test_a_reference_column_without_any_value_is_an_input_error(tmp_path):
    pq.write_table(decisions_table(), tmp_path / "decisions.parquet")
    pq.write_table(_with_gaps(reference_table(), {"dti": list(range(40))}), tmp_path / "reference.parquet")
    with pytest.raises(InputError, match="reference.parquet: column 'dti' has no value"):
        read_reference(make_config(tmp_path))
