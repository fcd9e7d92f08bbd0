"""What lets a killed run be resumed: its identity, its state file, and the records of finished work.

A run stages everything in ``OUT/.limelight-staging-<run id>/``. Right after creating that folder it
writes ``state.json``: the run's identity (a SHA-256 of the config, model and input checksums, the
mode, the target and the exact selection of decisions) and its :class:`RunInfo`. Every finished
shard and render batch then leaves a small JSON record next to its part files, each written
atomically after the files it names. A rerun of the same command finds the folder whose identity
matches, takes over its run id and start time (so every output is byte-identical to an
uninterrupted run) and skips the work its records show as done.

An output folder that holds another run (a staging folder or a published manifest of different
inputs, or published outputs without a manifest) is refused before any work.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks.errors import InputError
from tasks.inputs.config import Config
from tasks.io import write_json_atomic
from tasks.run.info import RunInfo
from tasks.run.manifest import (
    EXPLANATIONS,
    FAILURES,
    MANIFEST,
    NOT_REACHED,
    REPORT_INDEX,
    REPORTS,
    STAGING_PREFIX,
    SUMMARY,
    package_versions,
)

STATE = "state.json"
RECORDS = "records"
#: What a run publishes into its output folder (tasks/run/manifest.py names them too).
PUBLISHED = (EXPLANATIONS, REPORTS, REPORT_INDEX, SUMMARY, FAILURES, NOT_REACHED, MANIFEST)


#: Positions of a ``range`` selection hashed at a time by :func:`run_identity`.
IDENTITY_CHUNK = 1 << 16


def run_identity(*, mode: str, checksums: Mapping[str, str], selection: np.ndarray | range,
                 extra: Mapping[str, Any] | None = None) -> str:
    """SHA-256 naming "the same run": same inputs (by checksum), mode and selected decisions, in order.

    The output path is not part of it (a run's staging folder lives in its output folder), so a staged
    run can be carried to another folder. The positions are hashed as int64 bytes; a ``range`` (every row in
    order) chunk by chunk, to the same digest as its array.
    """
    digest = hashlib.sha256()
    facts = {"mode": mode, "checksums": dict(sorted(checksums.items())), **(extra or {})}
    digest.update(json.dumps(facts, sort_keys=True).encode("utf-8"))
    if isinstance(selection, range):
        for start in range(0, len(selection), IDENTITY_CHUNK):
            part = selection[start : start + IDENTITY_CHUNK]
            digest.update(np.arange(part.start, part.stop, part.step, dtype=np.int64).tobytes())
    else:
        digest.update(np.ascontiguousarray(selection, dtype=np.int64).tobytes())
    return digest.hexdigest()


def effective_settings(config: Config) -> dict[str, Any]:
    """What decides a run's results and its resume records beyond its input files: every resolved setting
    (defaults included, so a changed default is a different run; ``shard_size`` names the records) and
    limelight's version; not where the inputs live nor the devices and threads, which change no result.
    The model's format and its runtime library's version count too (another XGBoost may predict otherwise);
    the model file and ``[model] files`` count by their SHA-256 (the model checksum), not their paths."""
    from tasks.inputs.model import format_and_runtime

    settings = config.model_dump(mode="json", exclude={"run": {"devices", "torch_threads", "render_workers"},
                                                       "data": {"decisions", "reference"},
                                                       "model": {"path", "files", "format"},
                                                       "drift": True})  # thresholds of a comparison, no result
    model_format, runtime = format_and_runtime(config.model)
    return {"settings": settings, "limelight": package_versions(["limelight"]).get("limelight", "unknown"),
            "model": {"format": model_format, "runtime": runtime.to_dict()}}


@dataclass(frozen=True)
class Found:
    """What an output folder holds for this run: a staging folder to resume, or a finished manifest."""

    staging: Path | None = None
    run: RunInfo | None = None
    manifest: dict[str, Any] | None = None


def read_state(staging: Path) -> dict[str, Any] | None:
    try:
        return json.loads((staging / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_state(staging: Path, *, identity: str, mode: str, target: str, run: RunInfo) -> None:
    write_json_atomic(staging / STATE, {"identity": identity, "mode": mode, "target": target, "run": run.to_dict()})


def _conflict(out: Path, run_id: str) -> InputError:
    return InputError(f"--out {out}: output folder holds run {run_id} of other inputs or settings; use another --out "
                      "or remove it")


def find_run(folder: Path, *, identity: str, mode: str, target: Path) -> Found:
    """Look in ``folder`` (the output folder, or the explanation file's folder) for this run.

    Raises :class:`InputError` when a run-mode output folder holds another run. Staging folders
    without a state file (killed before it was written) hold nothing to resume and are removed.
    """
    if not folder.is_dir():
        return Found()
    manifest = None
    if mode == "run":
        manifest = _published(target)
        if manifest is not None and manifest.get("identity") != identity:
            raise _conflict(target, str(manifest.get("run_id", "?")))
    for staging in sorted(folder.glob(f"{STAGING_PREFIX}*")):
        state = read_state(staging)
        if state is None:
            shutil.rmtree(staging, ignore_errors=True)
            continue
        ours = mode == "run" or state.get("target") == str(target)  # explain: other files may share the folder
        if not ours or state.get("mode") != mode:
            continue
        if state.get("identity") != identity:
            raise _conflict(target, str(state.get("run", {}).get("run_id", "?")))
        clean_temporaries(staging)
        return Found(staging=staging, run=RunInfo.from_dict(state["run"]), manifest=manifest)
    if manifest is not None:
        return Found(manifest=manifest)
    if mode == "run":
        leftovers = sorted(name for name in PUBLISHED if (target / name).exists())
        if leftovers:
            raise InputError(f"--out {target}: output folder holds another run's {', '.join(leftovers)} without "
                             "its manifest; use another --out or remove them")
    return Found()


def _published(out: Path) -> dict[str, Any] | None:
    path = out / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise InputError(f"{path}: unreadable manifest of an earlier run; use another --out or remove it") from None


def clean_temporaries(staging: Path) -> None:
    """Remove the half-written temporary files a killed run left (finished files were renamed into place)."""
    for temp in staging.rglob(".*.tmp"):
        temp.unlink(missing_ok=True)


def record_path(staging: Path, name: str) -> Path:
    return Path(staging) / RECORDS / f"{name}.json"


def save_record(staging: Path, name: str, data: Any) -> None:
    write_json_atomic(record_path(staging, name), data)


def load_record(staging: Path, name: str) -> Any | None:
    try:
        return json.loads(record_path(staging, name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
