"""Writing the demo's files (what config/demo.toml points at), cached on disk.

``build_demo`` writes three files:

- ``decisions.parquet``: the loan applications to explain (ids, names, decision dates, the 12 features),
- ``reference.parquet``: the bank's "training sample" (features only) that LIME draws its statistics from,
- ``model.pt``: a TorchScript MLP mapping float32 ``[n, 12]`` (``FEATURES`` order, categoricals as codes) to
  the probabilities of ``["approved", "declined"]``.

Everything is deterministic for a given seed, runs in seconds on one CPU thread, never touches CUDA nor the
network, and is cached on disk: a ``demo.json`` records the generator version and the parameters, so a changed
generator (bump ``GENERATOR_VERSION``) or other parameters rebuild the files.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from tasks.demo.model import CLASSES, model_inputs, train_model
from tasks.demo.portfolio import FEATURE_NAMES, add_gaps, derived_seed, generate_portfolio

#: Bump whenever the generator, the outcome or the model changes: cached demos then rebuild.
GENERATOR_VERSION = 2


@dataclass(frozen=True)
class DemoArtifacts:
    """The demo's input files (what config/demo.toml points at)."""

    decisions: Path
    reference: Path
    model: Path


def default_demo_dir() -> Path:
    """``$LIMELIGHT_DEMO_DIR`` if set, else ``<repo root>/.cache/demo`` (what config/demo.toml expects)."""
    override = os.environ.get("LIMELIGHT_DEMO_DIR")
    if override:
        return Path(override).expanduser()
    return Path(__file__).resolve().parents[2] / ".cache" / "demo"  # tasks/demo/build.py -> the repo root


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same folder, then rename: readers never see a partial file."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        tmp.chmod(0o644)  # mkstemp makes 0600 files; workers running as another user must read them
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    _atomic_write(path, lambda tmp: frame.to_parquet(tmp, engine="pyarrow", index=False))


def _save_torchscript(model: nn.Module, path: Path) -> None:
    """Script and save ``model``; the bytes depend on the weights only (same weights, same sha256)."""
    model.requires_grad_(False)  # callers that forget torch.no_grad() build no autograd graph
    buffer = io.BytesIO()  # the zip's folder is named after the file: saving via the temp name would vary
    with warnings.catch_warnings():
        # torch 2.13 marks torch.jit deprecated; TorchScript is still the contract's portable .pt format.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(model), buffer)
    _atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))


def _cache_key(seed: int, n_decisions: int, n_reference: int, gaps: bool) -> dict[str, int]:
    return {"generator_version": GENERATOR_VERSION, "seed": seed, "n_decisions": n_decisions,
            "n_reference": n_reference, "gaps": int(gaps)}


def _cached(directory: Path, artifacts: DemoArtifacts, key: dict[str, int]) -> bool:
    """True when all three files exist and demo.json says they come from this generator and parameters."""
    if not all(p.is_file() for p in (artifacts.decisions, artifacts.reference, artifacts.model)):
        return False
    try:
        recorded = json.loads((directory / "demo.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(recorded, dict) and all(recorded.get(k) == v for k, v in key.items())


def build_demo(
    directory: Path | None = None,
    *,
    n_decisions: int = 400,
    n_reference: int = 5000,
    seed: int = 7,
    force: bool = False,
    gaps: bool = True,
) -> DemoArtifacts:
    """Write (or reuse) the demo's decisions, reference sample and model in ``directory``.

    ``directory`` defaults to :func:`default_demo_dir`. The files are reused without any work when they exist
    and ``demo.json`` matches the generator version and the parameters, unless ``force``. ``gaps``: the
    decisions and the reference have missing values (:func:`add_gaps`) and the model handles them. Writes are atomic and
    the result is a pure function of the parameters, so concurrent builds are harmless.
    """
    if n_decisions < 1 or n_reference < 1:
        raise ValueError(f"build_demo: n_decisions and n_reference must be positive "
                         f"(got {n_decisions}, {n_reference})")
    directory = Path(directory) if directory is not None else default_demo_dir()
    artifacts = DemoArtifacts(
        decisions=directory / "decisions.parquet",
        reference=directory / "reference.parquet",
        model=directory / "model.pt",
    )
    key = _cache_key(seed, n_decisions, n_reference, gaps)
    if not force and _cached(directory, artifacts, key):
        return artifacts

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "demo.json").unlink(missing_ok=True)  # the files are not a consistent set until the end

    decisions = generate_portfolio(n_decisions, seed)
    reference = generate_portfolio(n_reference, derived_seed(seed, 1))[FEATURE_NAMES]
    if gaps:
        decisions = add_gaps(decisions, derived_seed(seed, 7), showcase=True)
        reference = add_gaps(reference, derived_seed(seed, 8))
    model, metrics = train_model(seed, gaps)
    with torch.no_grad():
        declined = model(torch.from_numpy(model_inputs(decisions)))[:, CLASSES.index("declined")].numpy()

    _write_parquet(decisions, artifacts.decisions)
    _write_parquet(reference, artifacts.reference)
    _save_torchscript(model, artifacts.model)
    record = {
        **key,
        "features": FEATURE_NAMES,
        "classes": CLASSES,
        "metrics": {**metrics, "decisions_declined_at_0.5": round(float((declined >= 0.5).mean()), 4)},
        "torch": torch.__version__,
    }
    _atomic_write(directory / "demo.json",
                  lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8"))
    return artifacts
