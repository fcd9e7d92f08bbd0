"""tasks/report/review.py, reviewed.py, review_apply.py and `limelight review apply`: the review queue worked to the
end on a real published run (real PDFs, real WeasyPrint), re-rendered byte for byte, and a real kill mid-apply."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from tasks.io import file_sha256
from tasks.report.rerender import rerender

REPO = Path(__file__).resolve().parents[2]
DECISIONS = 40  # the first 40 demo decisions: enough for 10 accepted + 6 overridden
ACCEPT, OVERRIDE = 10, 6

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def published(prefect_api, small_demo, tmp_path_factory):
    """The small demo's first 40 decisions, published with a fidelity gate most of them fail: a full queue. Two
    features are marked protected (housing; credit history as the age rule, from 10 years), so the run withholds
    them from its letters (issue 21 item 1)."""
    import tomllib

    from flows.pipeline import limelight_flow
    from tasks.io import dump_toml

    folder = tmp_path_factory.mktemp("review")
    raw = tomllib.loads(small_demo.read_text(encoding="utf-8"))
    raw["review"]["min_fidelity"] = 0.97
    for feature in raw["features"]:
        if feature["name"] == "housing":
            feature["protected"] = True
        elif feature["name"] == "credit_history_years":
            feature.update(protected="age", age_threshold=10)
    config = folder / "run.toml"
    config.write_text(dump_toml(raw), encoding="utf-8")
    out = folder / "out"
    limelight_flow(config_path=str(config), out=str(out), devices="cpu:1", limit=DECISIONS)
    return out


@pytest.fixture(scope="module")
def reviewed(published, tmp_path_factory):
    """The published run after the reviewer's file of 10 accepted and 6 overridden decisions; and that file."""
    folder = tmp_path_factory.mktemp("reviewed")
    out = _copy(published, folder / "run")
    accepted, overridden = _decisions(out, folder / "decisions.csv")
    before = _shas(out)
    result = _apply(out, folder / "decisions.csv")
    assert result.exit_code == 0, result.output
    return out, folder / "decisions.csv", before, accepted, overridden, result.output


def _copy(out: Path, target: Path) -> Path:
    shutil.copytree(out, target)
    return target


def _shas(out: Path) -> dict[str, str]:
    return {p.relative_to(out).as_posix(): file_sha256(p) for p in sorted((out / "reports").rglob("*.pdf"))}


def _decisions(out: Path, path: Path, accept: int = ACCEPT, override: int = OVERRIDE) -> tuple[list[str], list[str]]:
    """A reviewer's file: the first ``accept`` queued decisions accepted, the next ``override`` overridden."""
    queue = pq.read_table(out / "review.parquet").to_pylist()
    assert len(queue) >= accept + override, f"only {len(queue)} decisions in review"
    rows = []
    for entry in queue[:accept]:
        rows.append({"id": entry["id"], "action": "accept", "reasons": "", "justification": "",
                     "reviewer": "r.okafor", "time": "2026-12-07T09:30:00+01:00"})
    for entry in queue[accept:accept + override]:
        rows.append({"id": entry["id"], "action": "override", "reasons": "debt_to_income;annual_income",
                     "justification": "Income verified from payslips; debt-to-income is the binding constraint.",
                     "reviewer": "j.lindqvist", "time": "2026-12-07T10:05:00Z"})
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return [r["id"] for r in rows[:accept]], [r["id"] for r in rows[accept:]]


def _apply(out: Path, decisions: Path):
    from flows.cli import app

    return CliRunner().invoke(app, ["review", "apply", str(out), "--decisions", str(decisions)])


def _log(out: Path) -> list[dict]:
    path = out / "review-log.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def test_the_run_publishes_its_review_queue(published):
    from tasks.report.review import QUEUE_SCHEMA

    manifest = json.loads((published / "manifest.json").read_text())
    queue = pq.read_table(published / "review.parquet")
    assert queue.schema.equals(QUEUE_SCHEMA)
    assert manifest["outputs"]["review.parquet"] == {"sha256": file_sha256(published / "review.parquet"),
                                                    "bytes": (published / "review.parquet").stat().st_size,
                                                    "rows": queue.num_rows}
    rows = pq.read_table(published / "explanations.parquet").to_pylist()
    flagged = list(dict.fromkeys(r["customer_id"] for r in rows if r["needs_review"]))
    assert queue.column("id").to_pylist() == flagged and queue.num_rows == manifest["counts"]["needs_review"]
    index = {r["id"]: r for r in pq.read_table(published / "reports.parquet").to_pylist()}
    for entry in queue.to_pylist():
        mine = [r for r in rows if r["customer_id"] == entry["id"]]
        shown = sorted((r for r in mine if r["role"] != "favourable" and not r["withheld"]), key=lambda r: r["rank"])
        assert entry["features"] == [r["feature"] for r in shown]
        assert entry["weights"] == [r["weight"] for r in shown]
        assert entry["review_reasons"] == mine[0]["review_reasons"].split(",")
        withheld = any(r["withheld"] and r["role"] == "reason" for r in mine)
        assert ("protected-basis" in entry["review_reasons"]) == withheld
        assert (entry["file"], entry["sha256"]) == (index[entry["id"]]["file"], index[entry["id"]]["sha256"])
        assert file_sha256(published / entry["file"]) == entry["sha256"]


def test_no_letter_states_a_protected_feature_and_the_figures_recompute(published):
    """Issue 21 item 1's targets on the run: no letter states a protected feature as a reason; every decision where
    one would have ranked is in review with its gate; the manifest's and the summary's figures equal a recomputation
    from explanations.parquet; protected.parquet lists exactly those decisions."""
    from render_support import embedded_files, flat, pdf_text

    rows = pq.read_table(published / "explanations.parquet").to_pandas()
    manifest = json.loads((published / "manifest.json").read_text())
    index = {r["id"]: r for r in pq.read_table(published / "reports.parquet").to_pylist()}
    would = rows[rows["withheld"] & (rows["role"] == "reason")]
    assert len(would), "no protected feature ranked: the test shows nothing"
    for decision_id, entry in index.items():
        document = json.loads(embedded_files(published / entry["file"])["explanation.json"])
        stated = {f["feature"] for f in document["factors"] if f["role"] == "reason"}
        assert "housing" not in {f["feature"] for f in document["factors"]}
        gated = decision_id in set(would["customer_id"])
        assert ("credit_history_years" in stated) <= (not gated)
        assert ("protected-basis" in document["quality"]["review_reasons"]) == gated
        assert entry["needs_review"] or not gated
    first = would["customer_id"].iloc[0]
    text = flat(pdf_text(published / index[first]["file"], 1, 1))
    assert "Housing status" not in text and "may not be given as a reason for a credit decision" in text
    figures = {f["feature"]: f for f in manifest["protected"]["features"]}
    for name in ("housing", "credit_history_years"):
        mine = would[would["feature"] == name]
        assert figures[name]["reason_decisions"] == mine["customer_id"].nunique()
        assert figures[name]["mean_weight"] == (round(float(mine["weight"].mean()), 6) if len(mine) else None)
        omitted = rows[rows["withheld"] & (rows["feature"] == name)]["customer_id"].nunique()
        assert figures[name]["omitted_decisions"] == omitted
    assert manifest["protected"]["review_decisions"] == would["customer_id"].nunique()
    assert manifest["quality"]["review_reasons"]["protected-basis"] == would["customer_id"].nunique()
    listed = pq.read_table(published / "protected.parquet").to_pandas()
    assert sorted(zip(listed["id"], listed["feature"], strict=True)) == sorted(
        zip(would["customer_id"], would["feature"], strict=True))
    assert manifest["outputs"]["protected.parquet"]["sha256"] == file_sha256(published / "protected.parquet")
    summary = json.loads(embedded_files(published / "summary.pdf")["run-summary.json"])
    assert summary["protected"] == manifest["protected"]


def test_accept_and_override_change_exactly_those_letters_and_rerender_reproduces_them(published, reviewed,
                                                                                      tmp_path):
    from render_support import flat, has_sentence, pdf_text

    out, decisions, before, accepted, overridden, output = reviewed
    assert f"{ACCEPT + OVERRIDE} applied ({ACCEPT} accepted, {OVERRIDE} overridden)" in output
    after = _shas(out)
    index = {r["id"]: r for r in pq.read_table(out / "reports.parquet").to_pylist()}
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {index[i]["file"] for i in accepted + overridden}  # exactly those letters
    log = _log(out)
    assert [e["id"] for e in log] == accepted + overridden
    for entry in log:
        assert entry["sha256_before"] == before[entry["file"]] and entry["sha256_after"] == after[entry["file"]]
        assert index[entry["id"]]["sha256"] == entry["sha256_after"] and not index[entry["id"]]["needs_review"]
    assert log[0]["time"] == "2026-12-07T08:30:00Z" and log[-1]["reasons"] == ["debt_to_income", "annual_income"]

    manifest = json.loads((out / "manifest.json").read_text())
    original = json.loads((published / "manifest.json").read_text())
    assert manifest["chain"]["revision"] == 1 and manifest["counts"] == original["counts"]
    assert manifest["accounting"] == original["accounting"] and manifest["accounting"]["holds"]
    assert manifest["chain"]["previous"]["sha256"] == file_sha256(published / "manifest.json")
    assert manifest["reviews"]["accepted"] == ACCEPT and manifest["reviews"]["overridden"] == OVERRIDE
    assert manifest["outputs"]["review-log.jsonl"]["entries"] == ACCEPT + OVERRIDE

    accepted_text = flat(pdf_text(out / index[accepted[0]]["file"], 1, 1))
    assert "Requires human review." not in accepted_text and "Reviewed by a member of our staff." in accepted_text
    assert "reviewed your application and these reasons on 2026-12-07 and confirmed them" in accepted_text
    override_text = flat(pdf_text(out / index[overridden[0]]["file"], 1, 1))
    assert "Requires human review." not in override_text and "established the principal reasons below" in override_text
    assert has_sentence(override_text, "Your debt-to-income ratio") and "was found on review to be a" in override_text
    assert override_text.index("debt-to-income") < override_text.index("annual income")  # the reviewer's order
    assert "payslips" not in override_text  # the justification is the log's record, not the customer's text

    rerendered = rerender(out / "manifest.json", tmp_path / "again")  # the log replayed: byte for byte
    assert rerendered.reports == DECISIONS
    assert _shas(tmp_path / "again") == after

    again = _apply(out, decisions)  # the same file again: nothing new
    assert again.exit_code == 0, again.output
    assert f"0 applied (0 accepted, 0 overridden), {ACCEPT + OVERRIDE} already in the log" in again.output
    assert len(_log(out)) == ACCEPT + OVERRIDE and _shas(out) == after


def test_bad_rows_get_one_line_each_and_nothing_is_applied(published, tmp_path):
    out = _copy(published, tmp_path / "run")
    queue = pq.read_table(out / "review.parquet").column("id").to_pylist()
    index = pq.read_table(out / "reports.parquet").to_pylist()
    clear = next((r["id"] for r in index if not r["needs_review"]), None)  # the gate sends most to review
    good = {"action": "accept", "reasons": "", "justification": "", "reviewer": "r1", "time": "2026-12-07T09:00Z"}
    cases = [
        ({**good, "id": "no-such-decision"}, "unknown id"),
        ({**good, "id": clear}, "not in review"),
        ({**good, "id": queue[1], "action": "override", "reasons": "debt_to_income;shoe_size", "justification": "x"},
         "'shoe_size' is not an input feature"),
        ({**good, "id": queue[2], "action": "override", "reasons": "debt_to_income"}, "needs a justification"),
        ({**good, "id": queue[3], "action": "approve"}, "'approve' is not accept or override"),
        ({**good, "id": queue[4], "time": "yesterday"}, "not ISO 8601"),
        ({**good, "id": queue[5], "action": "override", "reasons": "a;b;c;d;e", "justification": "x"}, "at most 4"),
        ({**good, "id": queue[0]}, "the same id as row 2"),
        ({**good, "id": queue[6], "reviewer": ""}, "no reviewer id"),
        ({**good, "id": queue[7], "action": "override", "reasons": "housing", "justification": "x"},
         "'housing' is a protected feature"),
    ]
    cases = [(row, expected) for row, expected in cases if row["id"] is not None]
    rows = [{**good, "id": queue[0]}, *(row for row, _ in cases)]  # the first row is fine
    path = tmp_path / "bad.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "action", "reasons", "justification", "reviewer", "time"])
        writer.writeheader()
        writer.writerows(rows)
    before = _shas(out)
    manifest = (out / "manifest.json").read_bytes()
    result = _apply(out, path)
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.startswith("✗")]
    assert len(lines) == len(cases), result.output
    for row, (_, expected) in enumerate(cases, start=3):  # CSV rows: the header is 1, the fine row 2
        assert any(f"bad.csv: row {row} " in line and expected in line for line in lines), (row, expected, lines)
    assert f"{len(cases)} row(s) of the decisions file cannot be applied; nothing was applied" in result.output
    assert _shas(out) == before and (out / "manifest.json").read_bytes() == manifest
    assert not (out / "review-log.jsonl").exists()


KILL = """
import os, signal, sys
import tasks.report.review_apply as apply
point = (sys.argv[3], int(sys.argv[4]))
apply.STEP_HOOK = lambda step, i: os.kill(os.getpid(), signal.SIGKILL) if (step, i) == point else None
apply.apply_decisions(sys.argv[1], sys.argv[2])
"""


@pytest.mark.parametrize("step, position", [("renamed", 7), ("logged", 3), ("archived", 0)])
def test_a_kill_mid_apply_loses_and_duplicates_nothing(published, reviewed, tmp_path, step, position):
    """A real SIGKILL of the applying process between two steps; the rerun of the same file finishes the batch and
    ends where an uninterrupted apply of it ended (``reviewed``)."""
    reference, decisions = reviewed[0], reviewed[1]
    out = _copy(published, tmp_path / "run")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    killed = subprocess.run([sys.executable, "-c", KILL, str(out), str(decisions), step,
                             str(position)], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    assert (out / ".review-journal.json").exists()
    logged = {"renamed": 7, "logged": 4, "archived": ACCEPT + OVERRIDE}[step]
    assert len(_log(out)) == logged
    from tasks.errors import InputError

    with pytest.raises(InputError, match="a review apply was interrupted"):
        rerender(out / "manifest.json", tmp_path / "too-early")

    result = _apply(out, decisions)
    assert result.exit_code == 0, result.output
    assert "finished an interrupted batch first" in result.output
    log = _log(out)
    assert len(log) == ACCEPT + OVERRIDE and len({e["id"] for e in log}) == ACCEPT + OVERRIDE
    strip = ("applied_at", "batch")
    assert [{k: v for k, v in e.items() if k not in strip} for e in log] == \
        [{k: v for k, v in e.items() if k not in strip} for e in _log(reference)]
    assert _shas(out) == _shas(reference)
    assert not (out / ".review-journal.json").exists() and not list(out.rglob("*.review-*.tmp"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["chain"]["revision"] == 1
    assert (out / "reports.parquet").read_bytes() == (reference / "reports.parquet").read_bytes()
    if step == "logged":  # re-rendering costs ~15 s: once is enough
        assert rerender(out / "manifest.json", tmp_path / "again").reports == DECISIONS


def test_the_queue_reads_only_the_flagged_rows_and_its_columns_batch_by_batch(tmp_path):
    import pyarrow as pa

    from tasks.report.review import flagged_rows

    table = pa.table({"loan": ["a", "a", "b", "b", "c", "d"], "rank": [1, 2, 1, 2, 1, 1],
                      "needs_review": [True, True, False, False, None, True], "feature": list("xyzxyz"),
                      "condition": ["long text"] * 6, "weight": [0.3, 0.1, 0.2, 0.1, 0.4, 0.5]})
    path = tmp_path / "explanations.parquet"
    pq.write_table(table, path, row_group_size=4)
    rows = flagged_rows(path, "loan", batch_rows=2)
    assert rows.column_names == ["loan", "needs_review", "rank", "feature", "weight"]  # no text of every factor
    assert rows.to_pydict()["loan"] == ["a", "a", "d"]  # a missing flag is not in review
