"""The ``limelight`` command line.

    limelight run CONFIG [--out DIR] [--devices SPEC] [--render-workers N] [--cluster ADDRESS] [--limit N]
                         [--ids FILE] [--deadline ISO [--best-effort]]
    limelight explain CONFIG --out FILE      explanations Parquet only, no PDFs
    limelight validate CONFIG                check config, inputs and model; list every problem
    limelight init --reference REF --model MODEL [--decisions DEC] [--id-column ID] [--out DIR] [--force]
                                             write a config and a reason-catalog skeleton for your model
    limelight demo [--out DIR] [--devices SPEC] [--render-workers N]
                                             build the demo inputs if needed, then run config/demo.toml
    limelight serve [CONFIG] [--out DIR] [--cron CRON] [--timezone TZ]   serve prefect.yaml's nightly deployment
    limelight rerender MANIFEST [--out DIR]  re-render a published run; check every PDF's SHA-256
    limelight review apply OUT --decisions FILE
                                             apply a reviewer's decisions (accept / override) to the run's
                                             review queue: letters, report index, review log, manifest

Exit codes (EXIT_*): 0 every decision reported; 1 a crash (traceback), or the run's accounting does not
hold; 2 a problem the user must fix (:class:`LimelightError`: one red line, no outputs); 3 the run
finished and published, but some decisions failed (``failures.parquet``) or were not reached before
the deadline; 4 the calibration batch shows the deadline would be missed (no outputs; ``--best-effort``
goes on); 130 interrupted. Prefect runs against one server: ``PREFECT_API_URL`` when set, else a
temporary local one.
"""

from __future__ import annotations

import getpass
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from flows.runlog import run_log
from flows.server import ServerError, apply_quiet_env
from tasks.errors import InputError, LimelightError

# Before anything imports prefect: quiet console, no analytics. Prefect's own console handler is
# silenced in the CLI (the CLI prints its own lines; the logs still go to the Prefect server), so a
# failing run prints one line instead of Prefect's traceback.
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")  # e.g. no "task cancelled" noise after a failure
apply_quiet_env()

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "config" / "demo.toml"

app = typer.Typer(
    name="limelight",
    help="Batched LIME explanations and PDF reports for credit decisions.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
errors = Console(stderr=True)
T = TypeVar("T")
EXIT_OK, EXIT_CRASH, EXIT_INPUT, EXIT_INCOMPLETE, EXIT_DEADLINE, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130

ConfigArg = Annotated[Path, typer.Argument(help="the run's TOML config", show_default=False)]
DevicesOpt = Annotated[
    str | None, typer.Option("--devices", help="'auto', 'cpu:N' or 'cuda:0,1,...' (default: [run] devices)")
]
ClusterOpt = Annotated[
    str | None, typer.Option("--cluster", help="existing Dask scheduler, e.g. tcp://host:8786")
]
RenderWorkersOpt = Annotated[int | None, typer.Option(
    "--render-workers", min=0,
    help="CPU workers that render PDFs beside the device workers (default: [run] render_workers, else the cores "
         "the device workers leave; 0: the device workers render)")]
LimitOpt = Annotated[int | None, typer.Option("--limit", min=1, help="explain only the first N decisions")]
IdsOpt = Annotated[Path | None, typer.Option("--ids", help="file of ids (one per line): explain only those")]


def _fail(message: str, code: int) -> typer.Exit:
    errors.print(f"[bold red]error:[/] [red]{escape(message)}[/]", soft_wrap=True, highlight=False)
    return typer.Exit(code)


def _guard(action: Callable[[], T]) -> T:
    """LimelightError: one red line, exit 2 (4 for a missed deadline). Anything else: the traceback, exit 1."""
    from tasks.run.deadline import DeadlineMissed

    try:
        return action()
    except DeadlineMissed as error:
        raise _fail(str(error).splitlines()[0], EXIT_DEADLINE) from None
    except LimelightError as error:
        for line in getattr(error, "lines", ()):  # tasks/report/review.py ReviewRowsError: one line per bad row
            errors.print(f"[red]✗[/] {escape(line)}", soft_wrap=True, highlight=False)
        raise _fail(str(error).splitlines()[0] if str(error) else type(error).__name__, EXIT_INPUT) from None
    except ServerError as error:
        raise _fail(str(error), EXIT_CRASH) from None
    except KeyboardInterrupt:
        raise _fail("interrupted", EXIT_INTERRUPTED) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception:
        traceback.print_exc(file=sys.stderr)
        raise typer.Exit(1) from None


@contextmanager
def _progress_bar() -> Iterator[None]:
    """A Rich progress bar fed by the flow's progress hook (shards explained, reports rendered)."""
    from flows.runtime import progress_hook

    labels = {"explain": "explaining decisions", "render": "rendering reports"}
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=False,
    ) as progress:
        bars: dict[str, Any] = {}

        def hook(stage: str, done: int, total: int) -> None:
            if stage not in bars:
                bars[stage] = progress.add_task(labels.get(stage, stage), total=total)
            progress.update(bars[stage], completed=done, total=total)

        with progress_hook(hook):
            yield


def _run_flow(config: Path, out: Path, mode: str, **options: Any) -> dict[str, Any]:
    from datetime import UTC, datetime

    from flows.cluster import resolve_devices
    from flows.drift import check_baseline
    from flows.output import probe_writable
    from flows.pipeline import limelight_flow
    from flows.runtime import message_hook
    from flows.server import prefect_server
    from tasks.inputs.config import load_config
    from tasks.run.deadline import parse_deadline

    # Cheap checks first, so a typo fails in a second instead of after starting a server.
    loaded = load_config(config)
    if not options.get("cluster"):
        resolve_devices(options.get("devices") or loaded.run.devices, None, loaded.run.torch_threads)
    if options.get("ids") and not Path(options["ids"]).is_file():
        raise InputError(f"{options['ids']}: ids file not found")
    probe_writable(str(out), mode)  # type: ignore[arg-type]
    _preflight(loaded, out, mode, options)
    if options.get("deadline"):
        parse_deadline(options["deadline"], datetime.now(UTC))
    elif options.get("best_effort"):
        raise InputError("--best-effort: only with --deadline")
    check_baseline(str(options["baseline"]) if options.get("baseline") else None)
    # A batch scheduler's SIGTERM unwinds like Ctrl-C: the workers and the temporary server are stopped.
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        with run_log(errors) as log, prefect_server(), _progress_bar(), message_hook(_say):
            return {"log": str(log), **limelight_flow(
                config_path=str(config), out=str(out), mode=mode,
                devices=options.get("devices"), cluster=options.get("cluster"), limit=options.get("limit"),
                ids_file=str(options["ids"]) if options.get("ids") else None,
                deadline=options.get("deadline"), best_effort=bool(options.get("best_effort")),
                trigger="cli", started_by=_user(), render_workers=options.get("render_workers"),
                baseline=str(options["baseline"]) if options.get("baseline") else None,
            )}
    finally:
        signal.signal(signal.SIGTERM, previous)


def _preflight(config: Any, out: Path, mode: str, options: dict[str, Any]) -> None:
    """Before the Prefect server starts: the model's feature names, the report files (fonts, notice, catalog,
    templates) and free disk for the run's output (tasks/report/preflight.py), so such a problem is exit 2 in
    seconds, with nothing staged. The flow's validate step checks the same for deployments."""
    from tasks.report.preflight import planned_decisions, preflight_checks

    render = mode == "run" and config.report.enabled
    decisions = planned_decisions(config, options.get("limit"), options.get("ids"))
    preflight_checks(config, out, decisions, render=render)


def _user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None


def _say(message: str) -> None:
    console.print(f"[cyan]{escape(message)}[/]", soft_wrap=True, highlight=False)


def _print_summary(summary: dict[str, Any]) -> None:
    """The run's table; then exit 3 when decisions failed or were not reached, 1 when the accounting is broken."""
    for warning in summary.get("warnings", []):
        errors.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)
    counts = summary["counts"]
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_row("run", summary["run_id"])
    table.add_row("decisions", f"{counts['decisions_in']} on {summary['devices']}")
    if "reported" in counts:
        table.add_row("reported", str(counts["reported"]))
        table.add_row("failed", str(counts["failed"]))
        table.add_row("not reached", str(counts["not_reached"]))
    rate = summary.get("decisions_per_second")
    table.add_row("explanations", f"{summary['seconds']['explain']:.1f} s" + (f" ({rate} decisions/s)" if rate else ""))
    table.add_row("needs review", str(counts["needs_review"]))
    if counts.get("reports_made"):
        table.add_row("reports", str(counts["reports_made"]))
    table.add_row("total", f"{summary['seconds']['total']:.1f} s")
    for name, path in summary["outputs"].items():
        table.add_row(name, escape(path))
    if summary.get("log"):
        table.add_row("log", escape(summary["log"]))
    console.print(table)
    accounting = summary.get("accounting") or {}
    if accounting and not accounting.get("holds", True):
        raise _fail(f"run {summary['run_id']}: decisions unaccounted for ({accounting.get('problem')})", EXIT_CRASH)
    if counts.get("failed") or counts.get("not_reached"):  # a result, not an error: published, exit 3
        where = summary["outputs"].get("failures.parquet", "the failures table")
        unreached = summary["outputs"].get("not-reached.parquet", "not-reached.parquet")
        cut = f" before the deadline (see {unreached})" if summary.get("stopped_at_deadline") else ""
        console.print(f"[yellow]run {escape(summary['run_id'])}: {counts['reported']} of {counts['decisions_in']} "
                      f"decisions reported; {counts['failed']} failed (see {escape(where)}), "
                      f"{counts['not_reached']} not reached{escape(cut)}[/]", soft_wrap=True, highlight=False)
        raise typer.Exit(EXIT_INCOMPLETE)


@app.command()
def run(
    config: ConfigArg,
    out: Annotated[Path | None, typer.Option("--out", help="output folder (default: out/<config name>)")] = None,
    devices: DevicesOpt = None,
    render_workers: RenderWorkersOpt = None,
    cluster: ClusterOpt = None,
    limit: LimitOpt = None,
    ids: IdsOpt = None,
    deadline: Annotated[str | None, typer.Option(
        "--deadline", help="finish by this time (ISO 8601 with zone, e.g. 2026-11-23T09:00+01:00)")] = None,
    best_effort: Annotated[bool, typer.Option(
        "--best-effort", help="with --deadline: go on even if the estimate misses it; publish what is done")] = False,
    baseline: Annotated[Path | None, typer.Option(
        "--baseline", help="compare with this manifest's run (default: the last one under the output root)")] = None,
) -> None:
    """Explain the decisions and write explanations, one PDF per customer, the summary and the manifest.

    Rerunning the same command on the same --out after a crash resumes the run.
    """
    target = out or Path("out") / config.stem
    summary = _guard(lambda: _run_flow(config, target, "run", devices=devices, cluster=cluster, limit=limit,
                                       ids=ids, deadline=deadline, best_effort=best_effort,
                                       render_workers=render_workers, baseline=baseline))
    _print_summary(summary)


@app.command()
def explain(
    config: ConfigArg,
    out: Annotated[Path, typer.Option("--out", help="the explanations Parquet file to write")],
    devices: DevicesOpt = None,
    cluster: ClusterOpt = None,
    limit: LimitOpt = None,
    ids: IdsOpt = None,
) -> None:
    """Write only the explanations Parquet file (no PDFs, no manifest)."""
    summary = _guard(lambda: _run_flow(config, out, "explain", devices=devices, cluster=cluster, limit=limit,
                                       ids=ids))
    _print_summary(summary)


def _validate(config_path: Path) -> tuple[Any, list[str]]:
    """Every problem of config, inputs and model, and the warnings: decisions a run would fail alone (row-level
    problems, as the run finds them), then the report step's own (gaps in the reason catalog)."""
    from tasks.inputs.config import load_config
    from tasks.plan.validate import validate_all

    config = load_config(config_path)  # a config that does not parse is one problem: raised as such
    result = validate_all(config, check_model=True)
    warnings: list[str] = [*result.warnings, *result.row_warnings()]
    if config.report.enabled:
        from tasks.report.pdf import require_fonts
        from tasks.report.text import load_notice, missing_catalog_entries

        for check in (lambda: require_fonts(config.report.language), lambda: load_notice(config)):
            try:
                check()
            except LimelightError as error:
                result.problems.append(str(error))
        try:
            warnings += missing_catalog_entries(config)
        except LimelightError as error:
            result.problems.append(str(error))
    return result, warnings


@app.command()
def validate(config: ConfigArg) -> None:
    """Check the config, the inputs and the model without explaining anything; list every problem.

    Exit 2 when a run would stop (input-level problems); decisions a run would list in failures.parquet
    (a missing or infinite feature value, an unknown category) are warnings.
    """
    result, warnings = _guard(lambda: _validate(config))
    for warning in warnings:
        errors.print(f"[yellow]![/] {escape(warning)}", soft_wrap=True, highlight=False)
    if result.problems:
        for problem in result.problems:
            errors.print(f"[red]✗[/] {escape(problem)}", soft_wrap=True, highlight=False)
        count, failing = len(result.problems), len(result.row_failures)
        rows = f"; besides, {failing} decision{'s' if failing != 1 else ''} would fail alone" if failing else ""
        raise _fail(f"{config}: {count} problem{'s' if count > 1 else ''} found{rows}", EXIT_INPUT)
    console.print(f"[green]✓[/] {escape(str(config))}: {escape(result.summary())}", soft_wrap=True,
                  highlight=False)


def _init(reference: Path, model: Path, decisions: Path | None, id_column: str | None, out: Path, force: bool,
          classes: str | None, explain: str | None, trusted: str | None) -> Any:
    from tasks.plan.init import plan_init, write_init

    def items(text: str | None) -> list[str]:
        return [c.strip() for c in text.split(",") if c.strip()] if text else []

    result = plan_init(reference=reference, model=model, out=out, decisions=decisions, id_column=id_column,
                       classes=items(classes) or None, explain=explain, trusted=items(trusted))
    write_init(result, force=force)
    return result


@app.command()
def init(
    reference: Annotated[Path, typer.Option("--reference", help="the reference population (Parquet)")],
    model: Annotated[Path, typer.Option("--model", help="the model file (.ubj, .json, .txt, .skops, .onnx, .pt)")],
    decisions: Annotated[Path | None, typer.Option(
        "--decisions", help="the decisions to explain (Parquet; default: the reference)")] = None,
    id_column: Annotated[str | None, typer.Option(
        "--id-column", help="the decisions' id column (default: the one column named like an id)")] = None,
    out: Annotated[Path, typer.Option("--out", help="folder for limelight.toml and reasons/en.toml")] = Path("."),
    classes: Annotated[str | None, typer.Option(
        "--classes", help="the model's classes in output order, comma-separated (default: approved,declined)")] = None,
    explain: Annotated[str | None, typer.Option(
        "--explain", help="the class whose probability is explained (default: the last)")] = None,
    trusted: Annotated[str | None, typer.Option(
        "--trusted", help="skops: types to trust beyond skops' defaults, comma-separated, after your review")] = None,
    force: Annotated[bool, typer.Option("--force", help="overwrite existing files")] = False,
) -> None:
    """Write a complete config and a reason-catalog skeleton from the model's own feature names and the reference."""
    result = _guard(lambda: _init(reference, model, decisions, id_column, out, force, classes, explain, trusted))
    categorical = sum(f.kind == "categorical" for f in result.features)
    console.print(f"[green]✓[/] {escape(str(result.config_path))}: {len(result.features)} features "
                  f"({categorical} categorical) from {escape(result.names_from)}", soft_wrap=True, highlight=False)
    console.print(f"[green]✓[/] {escape(str(result.catalog_path))}: {len(result.features)} reason entries to write "
                  "(todo = true)", soft_wrap=True, highlight=False)
    for note in result.notes:
        errors.print(f"[yellow]![/] {escape(note)}", soft_wrap=True, highlight=False)
    relative = os.path.relpath(result.config_path)
    shown = str(result.config_path) if relative.startswith("..") else relative
    console.print("next:", highlight=False)
    console.print(f"  limelight validate {escape(shown)}", soft_wrap=True, highlight=False)
    run_out = os.path.join(os.path.dirname(shown) or ".", "out")
    console.print(f"  limelight run {escape(shown)} --out {escape(run_out)}", soft_wrap=True, highlight=False)


def _build_demo() -> Path:
    from tasks.demo import build_demo
    from tasks.inputs.config import load_config

    config = load_config(DEMO_CONFIG)
    with console.status("building the demo inputs (once; cached)"):
        build_demo(Path(config.data.decisions).parent)
    return DEMO_CONFIG


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="output folder")] = Path("out/demo"),
    devices: DevicesOpt = None,
    render_workers: RenderWorkersOpt = None,
) -> None:
    """Build the demo portfolio and model if needed, then run config/demo.toml."""
    config = _guard(_build_demo)
    summary = _guard(lambda: _run_flow(config, out, "run", devices=devices, render_workers=render_workers))
    _print_summary(summary)  # lists the reports folder and the summary PDF


def _serve(config: Path | None, out: str | None, **options: Any) -> None:
    """Build the nightly deployment (prefect.yaml + overrides), check its config, then serve it until stopped."""
    from prefect import serve as prefect_serve

    from flows.deployments import nightly_deployment
    from flows.server import configured_api_url
    from tasks.inputs.config import load_config

    if not configured_api_url():
        raise LimelightError("limelight serve needs a Prefect server whose scheduler runs: start one (prefect "
                             "server start) and set PREFECT_API_URL")
    deployment = nightly_deployment(config, out, **options)
    load_config(deployment.parameters["config_path"])  # a typo fails now, not at 02:00
    schedule = deployment.schedules[0].schedule
    console.print(
        f"serving [bold]limelight/{escape(deployment.name)}[/]: cron '{escape(schedule.cron)}' "
        f"({escape(schedule.timezone or 'UTC')}), config {escape(deployment.parameters['config_path'])}, "
        f"out {escape(deployment.parameters['out'])}; Ctrl-C stops", soft_wrap=True, highlight=False,
    )
    prefect_serve(deployment, print_starting_message=False)


@app.command()
def serve(
    config: Annotated[Path | None, typer.Argument(help="the run's TOML config (default: prefect.yaml's)")] = None,
    out: Annotated[str | None, typer.Option("--out", help="output folder; {date} is the run_date")] = None,
    cron: Annotated[str | None, typer.Option("--cron", help="cron schedule (default: prefect.yaml's)")] = None,
    timezone: Annotated[
        str | None, typer.Option("--timezone", help="IANA time zone of the schedule (default: prefect.yaml's)")
    ] = None,
    devices: DevicesOpt = None,
    cluster: ClusterOpt = None,
    name: Annotated[str | None, typer.Option("--name", help="deployment name (default: nightly)")] = None,
) -> None:
    """Serve the nightly deployment of prefect.yaml: each night explains the day before (run_date)."""
    _guard(lambda: _serve(config, out, cron=cron, timezone=timezone, devices=devices, cluster=cluster, name=name))


@app.command()
def rerender(
    manifest: Annotated[Path, typer.Argument(help="a published run's manifest.json", show_default=False)],
    out: Annotated[Path | None, typer.Option("--out", help="folder for the re-rendered PDFs "
                                                           "(default: out/rerender-<run id>)")] = None,
) -> None:
    """Re-render a published run's reports and summary from its manifest and inputs; check each PDF's SHA-256."""
    from tasks.report.rerender import load_manifest
    from tasks.report.rerender import rerender as rerender_run

    def action() -> Any:
        target = out or Path("out") / f"rerender-{load_manifest(manifest)['run_id']}"
        with console.status("re-rendering the run's PDFs"):
            return rerender_run(manifest, target)

    result = _guard(action)
    what = f"{result.reports} reports" + (" and the summary" if result.summary else "")
    console.print(f"[green]✓[/] run {escape(result.run_id)}: {what} re-rendered into {escape(str(result.out))}, "
                  "byte-identical to the manifest", soft_wrap=True, highlight=False)
    if result.model:
        console.print(f"  model: {escape(result.model)}", soft_wrap=True, highlight=False)


review_app = typer.Typer(help="The review queue (OUT/review.parquet) worked to the end: docs/review.md.",
                          no_args_is_help=True)
app.add_typer(review_app, name="review")


@review_app.command("apply")
def review_apply(
    out: Annotated[Path, typer.Argument(help="a published run's output folder", show_default=False)],
    decisions: Annotated[Path, typer.Option(
        "--decisions", help="CSV or Parquet: id, action (accept | override), reasons (override: 1-4 features, "
                            "';'-separated, most important first), justification (override), reviewer, time "
                            "(ISO 8601 with offset)")],
) -> None:
    """Apply a reviewer's decisions: re-render those letters, update the report index, append to the review log
    (review-log.jsonl) and chain a new manifest to the previous one. One bad row: nothing is applied."""
    from tasks.report.review_apply import apply_decisions

    result = _guard(lambda: apply_decisions(out, decisions))
    if result.recovered:
        console.print(f"finished an interrupted batch first: {result.recovered} entries", highlight=False)
    console.print(
        f"[green]✓[/] {escape(str(out))}: {result.applied} applied ({result.accepted} accepted, {result.overridden} "
        f"overridden), {result.repeated} already in the log; the log holds {result.log_entries} entries; manifest "
        f"revision {result.revision}", soft_wrap=True, highlight=False)


def main() -> None:  # pragma: no cover - console entry point alias
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
