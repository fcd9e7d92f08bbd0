"""``limelight validate``: everything a run would check before explaining, without running it.

The decisions are checked as a run checks them, the reference is read, and the model is loaded on the CPU and
probed on reference rows (including the NaN probe of features with gaps, which needs the reference statistics
of tasks/engine/stats.py: so this lives above the engine, not in tasks/inputs/).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tasks.inputs.checks import ROW_PROBLEM_KINDS
from tasks.inputs.config import Config
from tasks.inputs.data import read_reference, scan_decisions
from tasks.inputs.protected import unmarked_warnings
from tasks.inputs.sources import SourceFile, list_source_files


@dataclass
class Validation:
    """What ``limelight validate`` found: input-level ``problems`` (a run would stop, exit 2) and the decisions
    with row-level problems (a run would explain the others and list these in ``failures.parquet``)."""

    problems: list[str] = field(default_factory=list)
    decisions: int = 0
    files: int = 0
    reference_rows: int = 0
    model: str = ""
    row_failures: dict[int, str] = field(default_factory=dict)  # global position -> the run's failure text
    row_kinds: dict[int, str] = field(default_factory=dict)  # global position -> RowProblem.kind
    sources: tuple[SourceFile, ...] = ()
    warnings: list[str] = field(default_factory=list)  # config-level: e.g. a feature that may be a prohibited basis

    def summary(self) -> str:
        failing = len(self.row_failures)
        verdict = "all valid" if not failing else "no input-level problem"
        return (
            f"{self.decisions} decisions in {self.files} file{'s' if self.files != 1 else ''}: "
            f"{self.decisions - failing} would be explained, {failing} would fail; "
            f"reference of {self.reference_rows} rows, model {self.model}: {verdict}"
        )

    def row_warnings(self, shown: int = 3) -> list[str]:
        """One line per decisions file with row-level problems: the count per kind and the first ``shown`` rows,
        e.g. ``d.parquet: 2 rows will go to failures.parquet (2 missing values): row 5: column 'income':
        missing value; row 9: ...``."""
        starts = np.cumsum([0] + [f.num_rows for f in self.sources])
        failing = sorted(self.row_failures)
        lines = []
        for number, source in enumerate(self.sources):
            positions = [p for p in failing if starts[number] <= p < starts[number + 1]]
            if not positions:
                continue
            kinds = [self.row_kinds.get(p, "") for p in positions]
            counts = ", ".join(
                f"{kinds.count(kind)} {names[kinds.count(kind) != 1]}"
                for kind, names in ROW_PROBLEM_KINDS.items() if kind in kinds
            )
            where = [self.row_failures[p].removeprefix(f"{source.path} ") for p in positions[:shown]]
            more = f"; ... ({len(positions) - shown} more)" if len(positions) > shown else ""
            lines.append(f"{source.path}: {len(positions)} row{'s' if len(positions) != 1 else ''} will go to "
                         f"failures.parquet ({counts}): {'; '.join(where)}{more}")
        return lines


def validate_all(config: Config, *, check_model: bool = True) -> Validation:
    """Check the report files, the decisions, the reference and (on the CPU) the model; collect every problem,
    and warn of features whose name or label suggests a prohibited basis and that are not marked ``protected``.

    The decisions are checked as a run checks them (:func:`scan_decisions` with ``row_failures``): a
    row-level problem (:func:`row_problems`) is not a problem here but a decision the run would fail alone.
    """
    result = Validation(warnings=unmarked_warnings(config.features, config.source or "config"))
    for key in ("reasons", "notices"):
        value = getattr(config.report, key)
        if value and not Path(value).is_file():
            result.problems.append(f"{config.source}: [report] {key}: file not found ({value})")
    index = scan_decisions(config, require_report_columns=config.report.enabled, problems=result.problems,
                           row_failures=result.row_failures, row_kinds=result.row_kinds)
    if index is not None:
        result.decisions, result.files, result.sources = index.num_rows, len(index.files), index.files
    elif result.row_failures:  # input-level problems too (the files did list): still say where the bad rows are
        result.sources = tuple(list_source_files(config.data.decisions, "[data] decisions"))
    reference = read_reference(config, problems=result.problems)
    result.reference_rows = len(reference)
    if check_model:
        result.model = _check_model(config, reference, result.problems)
    return result


def _check_model(config: Config, reference: np.ndarray, problems: list[str]) -> str:
    """Load the model on the CPU (never CUDA here) and run it on reference rows; where the reference has
    missing values, probe it with NaN in those features (:func:`tasks.inputs.model.check_missing_contract`)."""
    from tasks.errors import LimelightError
    from tasks.inputs.model import check_missing_contract, load_model

    try:
        model = load_model(config.model, len(config.features), device="cpu", features=config.features,
                           config_source=config.source)
        if len(reference):
            from tasks.engine.stats import fit_reference

            check_missing_contract(model, *fit_reference(reference, config.features).missing_probe())
            failing = [j for j, f in enumerate(config.features) if f.missing == "fail"]
            sample = reference[~np.isnan(reference[:, failing]).any(axis=1)][:64]  # NaN never reaches those
        else:
            sample = reference
        if len(sample):
            import torch

            out = model(torch.as_tensor(sample, dtype=torch.float32))
            if not bool(torch.isfinite(out).all()):
                problems.append(f"{model.description}: output on reference rows is not finite")
    except LimelightError as error:
        problems.append(str(error))
        return ""
    return f"{model.description} (sha256 {model.sha256[:12]})"
