"""tasks/inputs/schedule.py: which night a run explains and which decisions belong to it."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.errors import ConfigError, InputError
from tasks.inputs.config import parse_config
from tasks.inputs.data import scan_decisions
from tasks.inputs.schedule import date_key, day_positions, parse_run_date, previous_day, select_day

REPO = Path(__file__).resolve().parents[2]
DAYS = [date(2026, 11, 19), date(2026, 11, 20), date(2026, 11, 21)]


@pytest.fixture(scope="module")
def twelve(demo_artifacts) -> pa.Table:
    """Twelve demo decisions dated 19, 20, 21, 19, 20, 21, ... November."""
    table = pq.read_table(demo_artifacts.decisions).slice(0, 12)
    dates = pa.array([DAYS[i % 3] for i in range(12)], pa.date32())
    return table.set_column(table.schema.get_field_index("decision_date"), "decision_date", dates)


def make(tmp_path: Path, decisions: Path, demo_artifacts, data: dict | None = None, report: dict | None = None):
    import tomllib

    raw = tomllib.loads((REPO / "config" / "demo.toml").read_text(encoding="utf-8"))
    raw["data"].update({"decisions": str(decisions), "reference": str(demo_artifacts.reference), **(data or {})})
    raw["model"]["path"] = str(demo_artifacts.model)
    raw["report"].update(report or {})
    return parse_config(raw, tmp_path / "night.toml")


def test_run_date_parses_iso_dates_only():
    assert parse_run_date("2026-11-20") == date(2026, 11, 20)
    assert parse_run_date(" 2026-11-20 ") == date(2026, 11, 20)
    for bad in ("20261120", "2026-11-31", "yesterday", "2026-11-20T02:00"):
        with pytest.raises(InputError, match=rf"run_date '{bad}': not a date \(expected YYYY-MM-DD"):
            parse_run_date(bad)


def test_yesterday_is_taken_in_the_schedules_time_zone():
    # 02:00 in London on 22 November (winter, UTC+0) explains the 21st.
    assert previous_day(datetime(2026, 11, 22, 2, 0, tzinfo=UTC), "Europe/London") == date(2026, 11, 21)
    # 01:00 in London in summer is 00:00 UTC the same day; 23:30 UTC is already tomorrow in Berlin.
    assert previous_day(datetime(2026, 7, 1, 0, 0, tzinfo=UTC), "Europe/London") == date(2026, 6, 30)
    assert previous_day(datetime(2026, 7, 1, 23, 30, tzinfo=UTC), "Europe/Berlin") == date(2026, 7, 1)
    assert previous_day(datetime(2026, 7, 1, 23, 30, tzinfo=UTC), "UTC") == date(2026, 6, 30)
    # 02:00 in Sydney on 1 March is still 28 February in UTC: Sydney's yesterday is 28 February.
    assert previous_day(datetime(2026, 2, 28, 15, 0, tzinfo=UTC), "Australia/Sydney") == date(2026, 2, 28)
    with pytest.raises(ConfigError, match="timezone 'Europe/Londres': not an IANA time zone"):
        previous_day(datetime(2026, 7, 1, tzinfo=UTC), "Europe/Londres")


def test_the_date_key_defaults_to_the_reports_date_column(tmp_path, twelve, demo_artifacts):
    pq.write_table(twelve, tmp_path / "d.parquet")
    assert date_key(make(tmp_path, tmp_path / "d.parquet", demo_artifacts)) == "decision_date"
    explicit = make(tmp_path, tmp_path / "d.parquet", demo_artifacts, data={"date_column": "booked_on"})
    assert date_key(explicit) == "booked_on"
    none = make(tmp_path, tmp_path / "d.parquet", demo_artifacts, report={"date_column": None})
    assert date_key(none) is None


@pytest.mark.parametrize("kind", ["date32", "timestamp", "timestamp_tz", "string", "integer", "dictionary"])
def test_a_days_decisions_by_column(tmp_path, twelve, demo_artifacts, kind):
    values = [DAYS[i % 3] for i in range(12)]
    column = {
        "date32": pa.array(values, pa.date32()),
        "timestamp": pa.array([datetime(d.year, d.month, d.day, 16, 45) for d in values], pa.timestamp("us")),
        # 23:30 UTC on the 19th is 00:30 on the 20th in Berlin: the timestamp's own zone decides.
        "timestamp_tz": pa.array([datetime(d.year, d.month, d.day - 1, 23, 30, tzinfo=UTC) for d in values],
                                 pa.timestamp("us", tz="UTC")).cast(pa.timestamp("us", tz="Europe/Berlin")),
        "string": pa.array([f"{d.isoformat()}T09:{i:02d}:00" for i, d in enumerate(values)]),
        "integer": pa.array([int(d.strftime("%Y%m%d")) for d in values], pa.int64()),
        "dictionary": pa.array([d.isoformat() for d in values]).dictionary_encode(),
    }[kind]
    table = twelve.append_column("booked_on", column)
    pq.write_table(table, tmp_path / "d.parquet", row_group_size=5)
    config = make(tmp_path, tmp_path / "d.parquet", demo_artifacts, data={"date_column": "booked_on"})
    index = scan_decisions(config)
    assert day_positions(index, "booked_on", DAYS[1]).tolist() == [1, 4, 7, 10]
    assert day_positions(index, "booked_on", date(2026, 11, 22)).tolist() == []


def test_a_days_decisions_by_hive_partition(tmp_path, twelve, demo_artifacts):
    """decision_date=YYYY-MM-DD folders: the partition key dates the rows (the files need not hold it)."""
    root = tmp_path / "decisions"
    for day in DAYS:
        rows = [i for i in range(12) if DAYS[i % 3] == day]
        folder = root / f"decision_date={day.isoformat()}"
        folder.mkdir(parents=True)
        pq.write_table(twelve.take(rows).drop_columns(["decision_date"]), folder / "part-0.parquet")
    config = make(tmp_path, root, demo_artifacts)
    index = scan_decisions(config, require_report_columns=True)
    positions = select_day(index, config, "2026-11-20")
    ids = index.ids.to_pylist()
    assert [ids[p] for p in positions] == twelve.column("customer_id").to_pylist()[1::3]
    assert positions.tolist() == [4, 5, 6, 7]  # the second folder, in file order


def test_ids_and_limit_apply_within_the_day(tmp_path, twelve, demo_artifacts):
    pq.write_table(twelve, tmp_path / "d.parquet")
    config = make(tmp_path, tmp_path / "d.parquet", demo_artifacts)
    index = scan_decisions(config)
    ids = twelve.column("customer_id").to_pylist()
    listed = tmp_path / "ids.txt"
    listed.write_text("\n".join([ids[10], ids[0], ids[4], ids[3]]) + "\n")  # 21st, 19th, 20th, 19th
    assert select_day(index, config, "2026-11-19", ids_file=listed).tolist() == [0, 3]
    assert select_day(index, config, "2026-11-19", ids_file=listed, limit=1).tolist() == [0]
    assert select_day(index, config, "2026-11-21", limit=2).tolist() == [2, 5]
    with pytest.raises(InputError, match=r"d.parquet: no decisions dated 2026-11-22 \('decision_date'\)$"):
        select_day(index, config, "2026-11-22")
    only_21st = tmp_path / "only.txt"
    only_21st.write_text(ids[2] + "\n")
    with pytest.raises(InputError, match="no decisions dated 2026-11-20 .* among the ids of .*only.txt"):
        select_day(index, config, "2026-11-20", ids_file=only_21st)


def test_missing_or_unusable_date_keys_are_named(tmp_path, twelve, demo_artifacts):
    pq.write_table(twelve.append_column("score", pa.array(np.arange(12.0))), tmp_path / "d.parquet")
    no_key = make(tmp_path, tmp_path / "d.parquet", demo_artifacts, report={"date_column": None})
    index = scan_decisions(no_key)
    with pytest.raises(ConfigError, match=r"night.toml: \[data\] date_column: not set; run_date 2026-11-20 needs"):
        select_day(index, no_key, "2026-11-20")
    absent = make(tmp_path, tmp_path / "d.parquet", demo_artifacts, data={"date_column": "booked_on"})
    with pytest.raises(InputError, match=r"d.parquet: date column 'booked_on' \(\[data\] date_column\) not found"):
        select_day(index, absent, "2026-11-20")
    wrong = make(tmp_path, tmp_path / "d.parquet", demo_artifacts, data={"date_column": "score"})
    with pytest.raises(InputError, match=r"d.parquet: column 'score' \(\[data\] date_column\) has type double"):
        select_day(index, wrong, "2026-11-20")
    with pytest.raises(InputError, match="run_date '20/11/2026': not a date"):
        select_day(index, wrong, "20/11/2026")


def test_a_partitioned_nights_checksum_covers_its_own_partition_only(tmp_path, twelve, demo_artifacts):
    from tasks.inputs.schedule import night_sha256
    from tasks.inputs.sources import list_source_files

    root = tmp_path / "decisions"
    for day in DAYS[:2]:
        (root / f"decision_date={day.isoformat()}").mkdir(parents=True)
        pq.write_table(twelve.slice(0, 3).drop_columns(["decision_date"]),
                       root / f"decision_date={day.isoformat()}" / "part-0.parquet")
    config = make(tmp_path, root, demo_artifacts)

    def sha(day: str) -> str | None:
        return night_sha256(list_source_files(root, "[data] decisions"), config, day)

    before = sha("2026-11-19")
    later = root / "decision_date=2026-11-21"
    later.mkdir()
    pq.write_table(twelve.slice(3, 3).drop_columns(["decision_date"]), later / "part-0.parquet")
    assert sha("2026-11-19") == before  # a later night landing changes nothing for this one
    assert sha("2026-11-20") != before  # same bytes, other partition path
    own = root / "decision_date=2026-11-19" / "part-1.parquet"
    pq.write_table(twelve.slice(6, 3).drop_columns(["decision_date"]), own)
    assert sha("2026-11-19") != before  # the night's own data changed
    single = tmp_path / "d.parquet"
    pq.write_table(twelve, single)
    assert night_sha256(list_source_files(single, "d"), make(tmp_path, single, demo_artifacts), "2026-11-19") is None
