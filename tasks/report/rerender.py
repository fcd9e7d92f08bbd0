"""Re-render a published run for an auditor, and prove the PDFs are the ones the run published.

From ``OUT/manifest.json`` and the inputs it names (the config and the decisions, checked against their
recorded SHA-256) and ``explanations.parquet`` beside it, every customer report and the run summary are
rendered again into another folder; each PDF's SHA-256 must equal the manifest's. The renderer is
deterministic (tasks/report/render.py): every date and identifier comes from the run's :class:`RunInfo`, which
the manifest records (``run``) and ``explanations.parquet`` repeats in its metadata (``limelight.run``).

The model and the reference are not needed: the explanations are the run's own, not recomputed. The manifest's
model record (format, runtime library and version, the file's SHA-256, or an entrypoint's source and ``[model]
files`` hashes) must add up to the model hash the run's PDFs carry (``run.model_sha256``); it is reported back.
The reports and their SHA-256 are read from the run's report index (``reports.parquet``, checked against the
manifest's SHA-256), or from the inline list of a manifest written before the index (tasks/report/index.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.errors import InputError, LimelightError
from tasks.inputs.config import Config, load_config
from tasks.inputs.data import report_columns
from tasks.inputs.schedule import night_sha256
from tasks.inputs.sources import as_string, iter_tables, list_source_files
from tasks.io import file_sha256
from tasks.report import index as report_index
from tasks.report import review
from tasks.report.pdf_structure import PDF_FINISHING, endstream_eol
from tasks.report.summary_lists import summary_layout
from tasks.run import manifest as mf
from tasks.run.info import RunInfo
from tasks.run.manifest import check_sha256


class RerenderMismatch(LimelightError):
    """A re-rendered PDF's bytes differ from the ones the manifest records."""


@dataclass(frozen=True)
class Rerendered:
    run_id: str
    out: Path
    reports: int
    summary: bool
    model: str = ""  # which model made the letters, from the manifest's checked model record


def load_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of a published run; a missing, unreadable or foreign file is one :class:`InputError` line."""
    path = Path(path)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: manifest not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: not a readable manifest ({error})") from None
    if not isinstance(manifest, dict):
        raise InputError(f"{path}: not a limelight manifest (a JSON object with 'run', 'config', 'inputs')")
    for key in ("run_id", "run", "config", "inputs", "outputs", "counts", "review"):
        if key not in manifest:
            raise InputError(f"{path}: not a limelight manifest (key '{key}' missing)")
    return manifest


def check_model_record(manifest: dict[str, Any], manifest_path: Path) -> str:
    """The manifest's model record must name the model hash of the run (the one every PDF repeats): a file's own
    SHA-256, or an entrypoint's source and artifacts recombined. Returns it in words, e.g. ``xgboost file
    model.ubj (sha256 3f9c…, xgboost 3.2.0)``. Manifests from before model formats carry source and sha256 only."""
    from tasks.inputs.model import entrypoint_sha256

    record, run_sha = manifest.get("model") or {}, manifest["run"].get("model_sha256")
    if record.get("sha256") != run_sha:
        raise InputError(f"{manifest_path}: model.sha256 is not the run's model_sha256 (run.model_sha256)")
    model_format = record.get("format")
    if model_format == "entrypoint":
        source = record.get("entrypoint_source") or {}
        try:
            recombined = entrypoint_sha256(str(record["source"]), source.get("sha256"), list(record["files"]))
        except (KeyError, TypeError):
            recombined = None
        if recombined != run_sha:
            raise InputError(f"{manifest_path}: the model record (entrypoint source and files) does not add up to "
                             "the run's model_sha256")
    elif model_format is not None and record.get("file_sha256") != run_sha:
        raise InputError(f"{manifest_path}: model.file_sha256 is not the run's model_sha256")
    runtime = record.get("runtime") or {}
    using = f", {runtime.get('library')} {runtime.get('version')}".rstrip() if runtime.get("version") else ""
    kind = f"{model_format} " if model_format and model_format != "entrypoint" else ""
    noun = "entrypoint" if model_format == "entrypoint" else "file"
    return f"{kind}{noun} {record.get('source')} (sha256 {str(run_sha)[:12]}…{using})"


def run_info(manifest: dict[str, Any], explanations: Path) -> RunInfo:
    """The run's facts from the manifest; ``explanations.parquet`` must repeat the same ones."""
    run = RunInfo.from_dict(manifest["run"])
    metadata = pq.read_schema(explanations).metadata or {}
    embedded = metadata.get(b"limelight.run")
    if embedded is None or RunInfo.from_dict(json.loads(embedded)) != run:
        raise InputError(f"{explanations}: its run metadata (limelight.run) is not the manifest's run {run.run_id}")
    return run


def applicants(config: Config, ids: set[str], extra: Sequence[str] = ()) -> pd.DataFrame:
    """The report columns of the decisions ``ids`` (id as text), read as the pipeline reads them; ``extra``: more
    of the decisions' columns (the features a reviewer's override names: tasks/report/review.py).

    tasks/inputs/sources.py's own scan fills hive partition columns in, so a partition key shown in the report
    (e.g. ``decision_date``) gets exactly the value and type the run's reports got.
    """
    id_column = config.data.id_column
    columns = list(dict.fromkeys([id_column, *report_columns(config), *extra]))
    wanted = pa.array(sorted(ids), pa.string())
    tables = []
    for source in list_source_files(config.data.decisions, "[data] decisions"):
        for _, table in iter_tables(source, columns):
            missing = [c for c in columns if c not in table.column_names]
            if missing:
                raise InputError(f"{source.path}: column(s) {', '.join(map(repr, missing))} not found")
            table = table.select(columns).set_column(0, id_column, as_string(table.column(id_column)))
            tables.append(table.filter(pc.is_in(table.column(id_column), value_set=wanted)))
    joined = pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({id_column: []})
    return joined.to_pandas()


def _inputs(manifest: dict[str, Any], manifest_path: Path) -> tuple[Config, Path]:
    """The run's config (decisions path as the manifest recorded it) and its explanations, all checked."""
    config_path = Path(manifest["config"]["path"] or "")
    check_sha256(config_path, manifest["config"]["sha256"], "config")
    config = load_config(config_path)
    decisions = Path(manifest["inputs"]["decisions"]["path"])
    config = config.model_copy(update={"data": config.data.model_copy(update={"decisions": decisions})})
    run_date = (manifest.get("trigger") or {}).get("run_date")
    night = None  # a night of a hive-partitioned dataset is hashed over its own partition (tasks/inputs/schedule.py)
    if run_date and decisions.is_dir():
        night = night_sha256(list_source_files(decisions, "[data] decisions"), config, run_date)
    check_sha256(decisions, manifest["inputs"]["decisions"]["sha256"], "decisions", night)
    explanations = manifest_path.parent / mf.EXPLANATIONS
    recorded = manifest["outputs"].get(mf.EXPLANATIONS, {}).get("sha256")
    if recorded is None:
        raise InputError(f"{manifest_path}: lists no {mf.EXPLANATIONS}")
    check_sha256(explanations, recorded, "explanations")
    return config, explanations


def _compare(expected: dict[str, str], rendered: dict[str, str], out: Path, changed: list[str]) -> None:
    """Every file the manifest lists must be rendered with the same SHA-256, and nothing else. ``changed``:
    the report sources (templates, texts, notices, reasons) whose SHA-256 differs from the run's."""
    differ = sorted(name for name in expected if name in rendered and rendered[name] != expected[name])
    missing = sorted(set(expected) - set(rendered))
    extra = sorted(set(rendered) - set(expected))
    if not (differ or missing or extra):
        return
    if differ:
        name = differ[0]
        head = (f"{out / name}: re-rendered bytes differ from the run's (SHA-256 {rendered[name][:16]}…, the "
                f"manifest has {expected[name][:16]}…)")
    elif missing:
        head = f"{missing[0]}: listed in the manifest but not re-rendered (no explanation rows for it)"
    else:
        head = f"{out / extra[0]}: re-rendered but not listed in the manifest"
    more = len(differ) + len(missing) + len(extra) - 1
    why = (f"; the report {', '.join(changed)} changed since the run: re-render with the limelight version that "
           "made it" if changed else "")
    raise RerenderMismatch(head + (f"; {more} more file{'s' if more > 1 else ''} differ" if more else "") + why)


def _reviews(manifest: dict[str, Any], folder: Path) -> dict[str, review.Resolution]:
    """The resolutions the review log holds (replayed into the letters), with the manifest chain, the queue and
    the log checked: every earlier manifest in place, the log append-only, no review apply left unfinished."""
    if (folder / review.JOURNAL).exists():
        raise InputError(f"{folder / review.JOURNAL}: a review apply was interrupted; finish it first (run "
                         "limelight review apply on this folder again)")
    outputs = manifest["outputs"]
    if review.QUEUE in outputs:
        check_sha256(folder / review.QUEUE, outputs[review.QUEUE]["sha256"], "review queue")
    earlier = mf.check_chain(manifest, folder)
    if review.LOG not in outputs:
        return {}
    check_sha256(folder / review.LOG, outputs[review.LOG]["sha256"], "review log")
    review.check_log(earlier, folder)
    return review.latest(review.read_log(folder / review.LOG))


def rerender(manifest_path: str | Path, out: str | Path) -> Rerendered:
    """Re-render the run's reports and summary into ``out`` and check every PDF against the manifest.

    Raises :class:`InputError` when an input's SHA-256 changed, and :class:`RerenderMismatch` naming the
    first file whose bytes differ. The re-rendered files stay in ``out`` either way, for inspection.
    """
    from tasks.report.text import report_sources

    manifest_path = Path(manifest_path).resolve()
    manifest = load_manifest(manifest_path)
    out = Path(out).resolve()
    if out == manifest_path.parent:
        raise InputError(f"--out {out}: is the published run's folder; re-render into another folder")
    config, explanations = _inputs(manifest, manifest_path)
    run = run_info(manifest, explanations)
    if run.config_sha256 != manifest["config"]["sha256"]:
        raise InputError(f"{manifest_path}: run.config_sha256 is not config.sha256")
    model = check_model_record(manifest, manifest_path)
    rows = pd.read_parquet(explanations)
    id_column = config.data.id_column
    resolutions = _reviews(manifest, manifest_path.parent)
    unreached = manifest["outputs"].get(mf.NOT_REACHED)  # manifest 3 on; before, the ids were inline
    if isinstance(unreached, dict) and "sha256" in unreached:
        check_sha256(manifest_path.parent / mf.NOT_REACHED, str(unreached["sha256"]), "not-reached list")
    if summary_layout(manifest) > 1:  # its summary lists the failures: checked before anything is rendered
        _failures(manifest, manifest_path.parent)
    people = applicants(config, set(rows[id_column].astype(str)), review.override_features(resolutions))
    with endstream_eol(manifest.get("pdf_finishing") == PDF_FINISHING):  # older runs: their PDFs as they were
        expected, rendered = _render_again(manifest, manifest_path, out, rows, people, config, run, resolutions)
    recorded = manifest.get("report_sources") or {}
    current = report_sources(config) if recorded else {}
    _compare(expected, rendered, out, [name for name, sha in recorded.items() if current.get(name) != sha])
    return Rerendered(run.run_id, out, len(rendered) - (mf.SUMMARY in expected), mf.SUMMARY in expected, model)


def _failures(manifest: dict[str, Any], folder: Path) -> Path:
    """The run's failures.parquet, checked against the SHA-256 the manifest records (its summary lists them)."""
    path = folder / mf.FAILURES
    described = manifest["outputs"].get(mf.FAILURES)
    if not isinstance(described, dict) or "sha256" not in described:
        raise InputError(f"{folder / mf.MANIFEST}: outputs names no {mf.FAILURES} with its SHA-256 (the summary "
                         "lists the run's failures)")
    check_sha256(path, str(described["sha256"]), "failures table")
    return path


def _render_again(manifest: dict[str, Any], manifest_path: Path, out: Path, rows: pd.DataFrame, people: Any,
                  config: Config, run: RunInfo, resolutions: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """Render the run's reports and summary into ``out``: the SHA-256 the manifest expects and those rendered."""
    from tasks.report.render import render_customer_reports, render_run_summary
    from tasks.report.summary import summary_counts

    id_column = config.data.id_column
    expected: dict[str, str] = {}
    rendered: dict[str, str] = {}
    reports = report_index.manifest_reports(manifest, manifest_path.parent)
    if reports is not None:
        expected.update(zip(reports.column("file").to_pylist(), reports.column("sha256").to_pylist(), strict=True))
        folders = (PurePosixPath(file).parent.relative_to(mf.REPORTS) for file in reports.column("file").to_pylist())
        subfolders = {str(i): "/".join(folder.parts)  # the run's layout: '' for a report directly in reports/
                      for i, folder in zip(reports.column("id").to_pylist(), folders, strict=True)}
        made = render_customer_reports(rows, people, config, run, out / mf.REPORTS, subfolders,
                                       review.review_values(people, id_column, resolutions))
        for report in made:
            rendered[f"{mf.REPORTS}/{report.path.relative_to(out / mf.REPORTS).as_posix()}"] = report.sha256
    summary = manifest["outputs"].get(mf.SUMMARY)
    if summary is not None:
        expected[mf.SUMMARY] = summary["sha256"]
        counts = summary_counts(manifest["counts"])
        layout = summary_layout(manifest)
        review_list = report_index.review_ids(manifest, manifest_path.parent) if layout == 1 else []
        path = render_run_summary(rows, counts, review_list, config, run, out / mf.SUMMARY, layout=layout,
                                  failures=_failures(manifest, manifest_path.parent) if layout > 1 else None,
                                  drift=manifest.get("drift"))  # only runs compared with a baseline have one
        rendered[mf.SUMMARY] = file_sha256(path)
    return expected, rendered
