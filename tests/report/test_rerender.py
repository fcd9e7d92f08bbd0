"""tasks/report/rerender.py and `limelight rerender`: a published run re-rendered byte for byte, or a clear error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tasks.errors import InputError
from tasks.io import file_sha256
from tasks.report.rerender import RerenderMismatch, load_manifest, rerender
from tasks.run.manifest import not_reached_ids

REPO = Path(__file__).resolve().parents[2]
REPORTS = 6  # decisions in the published run: each report costs ~0.4 s to render again

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def published(prefect_api, small_demo, tmp_path_factory):
    """A published run (6 reports) whose config names its own copy of the notices, so a test may edit it."""
    import tomllib

    from flows.pipeline import limelight_flow
    from tasks.io import dump_toml

    folder = tmp_path_factory.mktemp("rerender")
    notices = folder / "notices.toml"
    bundled = tomllib.loads((REPO / "config" / "texts" / "en.toml").read_text(encoding="utf-8"))["notices"]
    notices.write_text(dump_toml(bundled), encoding="utf-8")
    raw = tomllib.loads(small_demo.read_text(encoding="utf-8"))
    raw["report"]["notices"] = str(notices)
    config = folder / "run.toml"
    config.write_text(dump_toml(raw), encoding="utf-8")
    out = folder / "out"
    limelight_flow(config_path=str(config), out=str(out), devices="cpu:1", limit=REPORTS)
    return out, config, notices


def _copy_run(out: Path, target: Path) -> Path:
    """A copy of the published folder (so a test may tamper with it); returns its manifest."""
    shutil.copytree(out, target)
    return target / "manifest.json"


def test_rerender_gives_byte_identical_pdfs(published, tmp_path):
    out, _, _ = published
    again = tmp_path / "again"
    result = rerender(out / "manifest.json", again)
    index = pq.read_table(out / "reports.parquet").to_pylist()
    assert result.reports == REPORTS == len(index) and result.summary
    for entry in index:
        assert (again / entry["file"]).read_bytes() == (out / entry["file"]).read_bytes()
    assert (again / "summary.pdf").read_bytes() == (out / "summary.pdf").read_bytes()


def test_the_cli_rerenders_and_says_so(published, tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    out, _, _ = published
    result = CliRunner().invoke(app, ["rerender", str(out / "manifest.json"), "--out", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    assert f"{REPORTS} reports and the summary" in result.output and "identical" in result.output

    manifest = _copy_run(out, tmp_path / "run")
    (tmp_path / "run" / "explanations.parquet").write_bytes(b"PAR1 not the run's explanations")
    failed = CliRunner().invoke(app, ["rerender", str(manifest), "--out", str(tmp_path / "cli-2")])
    assert failed.exit_code == 2
    lines = failed.output.strip().splitlines()
    assert len(lines) == 1 and "explanations.parquet: explanations SHA-256 changed since the run" in lines[0]


def test_a_changed_config_is_named(published, tmp_path):
    out, config, _ = published
    manifest = _copy_run(out, tmp_path / "run")
    edited = tmp_path / "edited.toml"
    edited.write_text(config.read_text(encoding="utf-8").replace("min_fidelity = 0.3", "min_fidelity = 0.2"))
    data = json.loads(manifest.read_text())
    data["config"]["path"] = str(edited)
    manifest.write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"edited.toml: config SHA-256 changed since the run"):
        rerender(manifest, tmp_path / "again")
    assert not (tmp_path / "again").exists()  # checked before anything is rendered


def test_changed_explanations_are_named(published, tmp_path):
    import pyarrow.parquet as pq

    out, _, _ = published
    manifest = _copy_run(out, tmp_path / "run")
    table = pq.read_table(tmp_path / "run" / "explanations.parquet")
    pq.write_table(table.slice(0, table.num_rows - 3), tmp_path / "run" / "explanations.parquet")
    with pytest.raises(InputError, match=r"run/explanations.parquet: explanations SHA-256 changed"):
        rerender(manifest, tmp_path / "again")


def test_a_pdf_whose_recorded_bytes_differ_is_named(published, tmp_path):
    out, _, _ = published
    manifest = _copy_run(out, tmp_path / "run")
    index = pq.read_table(manifest.parent / "reports.parquet")
    entries = index.to_pylist()
    entry = entries[2]
    entry["sha256"] = "0" * 64
    pq.write_table(index.from_pylist(entries, schema=index.schema), manifest.parent / "reports.parquet")
    with pytest.raises(InputError, match=r"run/reports.parquet: report index SHA-256 changed since the run"):
        rerender(manifest, tmp_path / "again")
    data = json.loads(manifest.read_text())  # a manifest that records the tampered index: the PDF is named
    data["outputs"]["reports.parquet"]["sha256"] = file_sha256(manifest.parent / "reports.parquet")
    manifest.write_text(json.dumps(data))
    differ = rf"{entry['file']}: re-rendered bytes differ .*manifest has 0000"
    with pytest.raises(RerenderMismatch, match=differ) as error:
        rerender(manifest, tmp_path / "again")
    assert "changed since the run" not in str(error.value)  # templates and texts are the run's own


def test_a_changed_notice_text_shows_as_differing_pdfs(published, tmp_path):
    """The notice text changes every report: the byte check catches it, and the manifest's report sources say why."""
    from tasks.report.text import _load_notices

    out, _, notices = published
    original = notices.read_text(encoding="utf-8")
    try:
        notices.write_text(original.replace("Your rights", "Your rights (revised)"), encoding="utf-8")
        _load_notices.cache_clear()
        with pytest.raises(RerenderMismatch, match=rf"reports/.*\.pdf: re-rendered bytes differ.*; {REPORTS - 1} "
                                                   "more files differ; the report notices changed since the run"):
            rerender(out / "manifest.json", tmp_path / "again")
    finally:
        notices.write_text(original, encoding="utf-8")
        _load_notices.cache_clear()
    assert file_sha256(out / "summary.pdf") == load_manifest(out / "manifest.json")["outputs"]["summary.pdf"]["sha256"]


def test_rerender_refuses_the_published_folder_and_a_missing_manifest(published, tmp_path):
    out, _, _ = published
    with pytest.raises(InputError, match="is the published run's folder"):
        rerender(out / "manifest.json", out)
    with pytest.raises(InputError, match=r"nothing.json: manifest not found"):
        rerender(tmp_path / "nothing.json", tmp_path / "again")


def test_a_manifest_with_inline_reports_still_rerenders(published, tmp_path):
    """Manifests written before the report index list every report and review id inline: still read."""
    out, _, _ = published
    manifest = _copy_run(out, tmp_path / "run")
    data = json.loads(manifest.read_text())
    index = manifest.parent / "reports.parquet"
    data["outputs"]["reports"] = pq.read_table(index).to_pylist()
    del data["outputs"]["reports.parquet"]
    data["review"] = {"min_fidelity": data["review"]["min_fidelity"],
                      "ids": [r["id"] for r in data["outputs"]["reports"] if r["needs_review"]]}
    data["manifest_version"] = 1
    del data["outputs"]["not-reached.parquet"], data["not_reached"]  # before manifest 3: the ids inline
    data["not_reached_ids"] = []
    manifest.write_text(json.dumps(data))
    index.unlink()
    (manifest.parent / "not-reached.parquet").unlink()
    result = rerender(manifest, tmp_path / "again")
    assert result.reports == REPORTS and result.summary
    assert not_reached_ids(data, manifest.parent) == []
    assert (tmp_path / "again" / "summary.pdf").read_bytes() == (out / "summary.pdf").read_bytes()


def test_a_summary_recorded_with_an_older_layout_keeps_it(published, tmp_path):
    """A run made before summary layout 2 records no layout with its summary.pdf: it re-renders as layout 1 (the
    review list by id, every review id attached), byte for byte; one recorded with layout 2 (before the summary
    claimed PDF/UA-1) as layout 2; layout 2's failures table is checked too."""
    from tasks.explain.aggregate import read_for_summary
    from tasks.inputs.config import load_config
    from tasks.report.index import review_ids
    from tasks.report.render import render_run_summary
    from tasks.report.rerender import run_info
    from tasks.report.summary import summary_counts

    out, config_path, _ = published
    manifest = _copy_run(out, tmp_path / "run")
    data = json.loads(manifest.read_text())
    assert data["outputs"]["summary.pdf"]["layout"] == 3
    assert b'pdfuaid:part="1"' in (out / "summary.pdf").read_bytes()

    config = load_config(config_path)
    old = render_run_summary(read_for_summary(out / "explanations.parquet"), summary_counts(data["counts"]),
                             review_ids(data, out), config, run_info(data, out / "explanations.parquet"),
                             tmp_path / "old-summary.pdf")
    assert old.read_bytes() != (out / "summary.pdf").read_bytes()
    shutil.copy(old, manifest.parent / "summary.pdf")
    del data["outputs"]["summary.pdf"]["layout"]
    data["outputs"]["summary.pdf"]["sha256"] = file_sha256(old)
    manifest.write_text(json.dumps(data))
    rerender(manifest, tmp_path / "again")
    assert (tmp_path / "again" / "summary.pdf").read_bytes() == old.read_bytes()
    two = render_run_summary(read_for_summary(out / "explanations.parquet"), summary_counts(data["counts"]), [],
                             config, run_info(data, out / "explanations.parquet"), tmp_path / "layout-2.pdf",
                             layout=2, failures=out / "failures.parquet")
    assert b"pdfuaid" not in two.read_bytes() and two.read_bytes() != (out / "summary.pdf").read_bytes()
    shutil.copy(two, manifest.parent / "summary.pdf")
    data["outputs"]["summary.pdf"].update(layout=2, sha256=file_sha256(two))
    manifest.write_text(json.dumps(data))
    rerender(manifest, tmp_path / "again-2")
    assert (tmp_path / "again-2" / "summary.pdf").read_bytes() == two.read_bytes()
    (manifest.parent / "failures.parquet").write_bytes(b"not the run's")
    with pytest.raises(InputError, match=r"run/failures.parquet: failures table SHA-256 changed since the run"):
        rerender(manifest, tmp_path / "again2")


def test_a_missing_report_index_is_one_line(published, tmp_path):
    out, _, _ = published
    manifest = _copy_run(out, tmp_path / "run")
    data = json.loads(manifest.read_text())
    assert data["not_reached"]["count"] == data["outputs"]["not-reached.parquet"]["rows"] == 0
    assert not_reached_ids(data, out) == [] and "not_reached_ids" not in data
    kept = (manifest.parent / "not-reached.parquet").read_bytes()
    (manifest.parent / "not-reached.parquet").write_bytes(b"not the run's")
    with pytest.raises(InputError, match=r"run/not-reached.parquet: not-reached list SHA-256 changed since the run"):
        rerender(manifest, tmp_path / "again")
    (manifest.parent / "not-reached.parquet").write_bytes(kept)
    (manifest.parent / "reports.parquet").unlink()
    with pytest.raises(InputError, match=r"run/reports.parquet: report index not found"):
        rerender(manifest, tmp_path / "again")


@pytest.mark.parametrize("layout", ["hash-prefix", "date"])
def test_reports_in_subfolders_are_indexed_and_rerendered(prefect_api, small_demo, make_config, tmp_path, layout):
    """[report] layout puts each report in a subfolder; the index names it; rerender finds it there."""
    import hashlib

    from flows.pipeline import limelight_flow

    config = make_config(f"{layout}.toml", report={"layout": layout})
    out = tmp_path / "out"
    summary = limelight_flow(config_path=str(config), out=str(out), devices="cpu:1", render_workers=1, limit=4)
    index = pq.read_table(out / "reports.parquet").to_pylist()
    assert summary["counts"]["reports_made"] == len(index) == 4
    decisions = pq.read_table(small_demo.parent / "decisions.parquet").to_pylist()
    dates = {str(d["customer_id"]): str(d["decision_date"])[:10] for d in decisions}
    for entry in index:
        folder = Path(entry["file"]).parent.as_posix()
        want = hashlib.sha256(entry["id"].encode()).hexdigest()[:2] if layout == "hash-prefix" else dates[entry["id"]]
        assert folder == f"reports/{want}"
        assert file_sha256(out / entry["file"]) == entry["sha256"]
    assert sorted(p.relative_to(out).as_posix() for p in (out / "reports").rglob("*.pdf")) == sorted(
        e["file"] for e in index)
    manifest = load_manifest(out / "manifest.json")
    assert manifest["outputs"]["reports"] == {"index": "reports.parquet", "count": 4, "layout": layout}
    result = rerender(out / "manifest.json", tmp_path / "again")
    assert result.reports == 4
    for entry in index:
        assert (tmp_path / "again" / entry["file"]).read_bytes() == (out / entry["file"]).read_bytes()
