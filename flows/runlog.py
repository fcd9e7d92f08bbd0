"""The CLI's run log: a file per run that takes the flow's log lines and everything written to stderr while the
flow runs (the workers' and Dask's warnings, such as those on cancelling tasks at a deadline), so the terminal
keeps the CLI's own lines."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console

#: Run logs kept in the log folder (the newest; older ones are removed when a run starts).
KEEP_LOGS = 50


def log_folder() -> Path:
    """Where the CLI's run logs go: ``$XDG_STATE_HOME/limelight/logs`` (default ``~/.local/state/...``)."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "limelight" / "logs"


@contextmanager
def run_log(errors: Console) -> Iterator[Path]:
    """The run's log file: the flow's log lines, and whatever is written to stderr while the flow runs (the
    workers' and Dask's warnings, such as those on cancelling tasks at a deadline). The terminal keeps the CLI's
    own lines: the progress bar and messages (stdout) and its errors (``errors``, pointed at the terminal)."""
    from datetime import UTC, datetime

    folder = log_folder()
    folder.mkdir(parents=True, exist_ok=True)
    for old in sorted(folder.glob("*.log"))[:-KEEP_LOGS]:
        old.unlink(missing_ok=True)
    path = folder / f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{os.getpid()}.log"
    sys.stderr.flush()
    terminal = os.fdopen(os.dup(2), "w", buffering=1)
    loggers = [logging.getLogger(name) for name in ("prefect.flow_runs", "prefect.task_runs", "limelight.pacing")]
    levels = [logger.level for logger in loggers]
    with open(path, "a", buffering=1, encoding="utf-8") as log:
        handler = logging.StreamHandler(log)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        os.dup2(log.fileno(), 2)  # fd 2, inherited by the worker processes started from here
        errors.file = terminal
        logging.getLogger().addHandler(handler)
        for logger in loggers:
            logger.setLevel(logging.INFO)
        try:
            yield path
        finally:
            logging.getLogger().removeHandler(handler)
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)
            sys.stderr.flush()
            os.dup2(terminal.fileno(), 2)
            errors.file = None  # type: ignore[assignment]
            terminal.close()
