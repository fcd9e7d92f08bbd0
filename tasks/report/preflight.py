"""The preflight of ``limelight run``: what ``limelight validate`` checks that would otherwise fail late.

A run explains every decision before it renders a letter, so a missing font, a broken notice, catalog or
template, or a full disk used to stop it only after all the explaining (exit 2, after minutes or hours). The
README promises that exit 2 means "a problem to fix before any work": :func:`preflight` checks, in seconds and
before anything is started or staged,

- the model file's own feature names, kinds and categories against ``[[features]]`` (tasks/inputs/model_names.py);
- when the run renders: the report fonts, the rights notice of ``[report] jurisdiction``, the reason catalog
  and the templates (both document kinds, compiled);
- free disk under the output folder for the run's estimated output (tasks/plan/sizing.py).

The output folder's writability is probed by the caller (flows/output.py ``probe_writable``), which knows
``--out``'s modes. Each failure is one :class:`LimelightError` line naming the file, key or folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tasks.errors import ConfigError, InputError, LimelightError, one_line
from tasks.inputs.config import Config
from tasks.inputs.sources import list_source_files
from tasks.plan.sizing import estimate_output_bytes


def planned_decisions(config: Config, limit: int | None = None, ids_file: str | Path | None = None) -> int:
    """An upper bound of the decisions a run explains, from the Parquet footers (no rows read): all rows, or
    ``--limit``, or the ids file's lines."""
    total = sum(f.num_rows for f in list_source_files(config.data.decisions, "[data] decisions"))
    if ids_file is not None:
        try:
            with open(ids_file, encoding="utf-8") as handle:
                total = min(total, sum(1 for line in handle if line.strip()))
        except OSError as error:
            raise InputError(f"{ids_file}: cannot read the ids file ({error.strerror})") from None
    return min(total, limit) if limit is not None else total


def check_report_files(config: Config) -> None:
    """Fonts, notice, reason catalog and templates: what rendering needs, checked as rendering will use them."""
    from tasks.report.pdf import require_fonts
    from tasks.report.text import load_notice, load_reason_catalog

    for key in ("reasons", "notices"):
        value = getattr(config.report, key)
        if value and not Path(value.replace("{language}", config.report.language)).is_file():
            raise ConfigError(f"{config.source}: [report] {key}: file not found ({value})")
    require_fonts(config.report.language)
    load_notice(config)
    load_reason_catalog(config)
    check_templates()


def check_templates() -> None:
    """Both document kinds' templates and stylesheets load and compile (a broken template fails every letter)."""
    from tasks.report.pdf import TEMPLATES_DIR, document_kind

    for name, template in (("customer_report", "report.html"), ("run_summary", "summary.html")):
        try:
            document_kind(name, template)
        except Exception as error:  # jinja2 or WeasyPrint, or a missing file: one line naming the template
            raise LimelightError(f"{TEMPLATES_DIR / name}: template {template} cannot be loaded "
                                 f"({one_line(error)})") from None


def check_free_space(out: str | Path, needed: int, decisions: int) -> None:
    """Fail when the file system holding ``out`` (or its nearest existing parent) has less free space than
    ``needed`` bytes."""
    existing = Path(str(out).split("{", 1)[0] or ".").expanduser().absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if free < needed:
        raise InputError(f"--out {out}: {_size(free)} free in {existing}, the run needs about {_size(needed)} "
                         f"({decisions} decisions); free space or choose another --out")


def _size(count: int) -> str:
    value = float(count)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"


def preflight_checks(config: Config, out: str | Path, decisions: int, *, render: bool) -> None:
    """Everything a run can check before any work that would otherwise fail it late (module docstring)."""
    from tasks.inputs.model import check_model_features

    if render:
        check_report_files(config)
    check_free_space(out, estimate_output_bytes(decisions, render=render, language=config.report.language),
                     decisions)
    check_model_features(config.model, config.features, config.source)  # last: it imports the model's library
