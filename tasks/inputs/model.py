"""Loading the bank's model behind one contract: float32 [n, d] in, class probabilities [n, C] out.

Supported (``[model] format``, inferred from the file where unambiguous; tasks/inputs/model_formats.py): a
TorchScript file (``torch.jit.save``), a torch.export archive (``.pt2``), an ONNX file, an XGBoost model
(``.ubj``/``.json``), a LightGBM model (``.txt``), a scikit-learn estimator saved with skops; or a Python
entrypoint ``package.module:function`` returning a callable that takes a float32 numpy array and returns
probabilities (e.g. a scikit-learn ``predict_proba``), evaluated on the CPU in large chunks.
Inputs are in the configured feature order with categorical features as integer codes.

The audit (:func:`model_audit`): a model file's SHA-256 is the file's own (``sha256sum model.ubj``); an
entrypoint's is the SHA-256 of its name, its module's source and every artifact in ``[model] files``.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tasks.errors import ModelError
from tasks.inputs.config import FeatureConfig, ModelConfig
from tasks.inputs.model_formats import (
    PICKLE_REFUSED,
    Runtime,
    chunked_forward,
    infer_format,
    is_pickle,
    lightgbm_forward,
    onnx_forward,
    runtime_of,
    skops_forward,
    xgboost_forward,
)
from tasks.inputs.model_names import check_feature_names, read_model_facts
from tasks.io import file_sha256


@dataclass(frozen=True)
class ModelAudit:
    """What the manifest records about the model: enough for an auditor to tell which model made a letter."""

    source: str  # the model file, or the entrypoint 'pkg.mod:fn'
    format: str  # one of FORMATS, or "entrypoint"
    sha256: str  # the model hash every output repeats (RunInfo.model_sha256)
    runtime: Runtime
    file_sha256: str | None = None  # a model file's own SHA-256 (equal to sha256)
    entrypoint_source: dict[str, str] | None = None  # the entrypoint module's source file and its SHA-256
    files: tuple[dict[str, str], ...] = ()  # [model] files: path and SHA-256 of each artifact

    def to_dict(self) -> dict[str, Any]:
        record: dict[str, Any] = {"source": self.source, "format": self.format, "sha256": self.sha256,
                                  "runtime": self.runtime.to_dict()}
        if self.file_sha256 is not None:
            record["file_sha256"] = self.file_sha256
        if self.format == "entrypoint":
            record["entrypoint_source"] = self.entrypoint_source
            record["files"] = [dict(entry) for entry in self.files]
        return record


def entrypoint_sha256(entrypoint: str, source_sha256: str | None, files: list[dict[str, str]]) -> str:
    """The model hash of an entrypoint: its name, its module source's SHA-256 and each artifact's (name, SHA-256),
    as canonical JSON. tasks/report/rerender.py recomputes it from the manifest's record."""
    facts = {"entrypoint": entrypoint, "source_sha256": source_sha256,
             "files": [[Path(entry["path"]).name, entry["sha256"]] for entry in files]}
    return hashlib.sha256(json.dumps(facts, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def model_format(model: ModelConfig) -> str:
    """The configured format, or the one the file shows; "entrypoint" for an entrypoint."""
    if model.path is None:
        return "entrypoint"
    if model.format is None and not model.path.is_file():
        raise ModelError(f"{model.path}: model file not found")
    return model.format or infer_format(model.path)


def _loadable_format(model: ModelConfig) -> str:
    """:func:`model_format`, refusing a pickle file (arbitrary code on load) in one line."""
    model_format_ = model_format(model)
    if model.path is not None and is_pickle(model.path):
        raise ModelError(f"{model.path}: {PICKLE_REFUSED}")
    return model_format_


def model_audit(model: ModelConfig) -> ModelAudit:
    """Hash the model (file, or entrypoint source and artifacts) and name its format and runtime."""
    if model.path is not None:
        model_format_ = _loadable_format(model)
        try:
            sha = file_sha256(model.path)
        except OSError as error:
            raise ModelError(f"{model.path}: cannot read model ({error.strerror})") from None
        return ModelAudit(str(model.path), model_format_, sha, runtime_of(model_format_), file_sha256=sha)
    entrypoint = model.entrypoint or ""
    module_name, _, _ = entrypoint.partition(":")
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        spec = None
    source = None
    if spec is not None and spec.origin and Path(spec.origin).is_file():
        source = {"path": spec.origin, "sha256": file_sha256(Path(spec.origin))}
    files = []
    for path in model.files:
        try:
            files.append({"path": str(path), "sha256": file_sha256(path)})
        except OSError as error:
            raise ModelError(f"{path}: [model] files: cannot read ({error.strerror})") from None
    sha = entrypoint_sha256(entrypoint, source["sha256"] if source else None, files)
    return ModelAudit(entrypoint, "entrypoint", sha, runtime_of(None), entrypoint_source=source, files=tuple(files))


def format_and_runtime(model: ModelConfig) -> tuple[str, Runtime]:
    """The model's format ("entrypoint" for one; "unknown" for a file that cannot be read) and its runtime."""
    if model.path is None:
        return "entrypoint", runtime_of(None)
    try:
        found = model_format(model)
    except ModelError:
        found = "unknown"  # the file is gone: the run's hash still says which file it was
    return found, runtime_of(found)


def model_record(model: ModelConfig, run_sha256: str) -> dict[str, Any]:
    """The manifest's ``model`` block for a run whose model hash was ``run_sha256``: format, runtime library and
    version, and for a file its own SHA-256, for an entrypoint its source's and each artifact's. An entrypoint's
    parts are hashed again and must still add up to ``run_sha256`` (else the model changed during the run)."""
    if model.path is not None:
        found, runtime = format_and_runtime(model)
        return ModelAudit(str(model.path), found, run_sha256, runtime, file_sha256=run_sha256).to_dict()
    audit = model_audit(model)
    if audit.sha256 != run_sha256:
        raise ModelError(f"entrypoint {model.entrypoint!r}: its source or [model] files changed during the run "
                         f"(SHA-256 now {audit.sha256[:16]}…, the run used {run_sha256[:16]}…)")
    return audit.to_dict()


def model_sha256(model: ModelConfig) -> str:
    """SHA-256 of the model file, or of the entrypoint's name, its module's source and its ``files``."""
    return model_audit(model).sha256


class LoadedModel:
    """The model as a callable on ``device``: float32 [n, d] -> class probabilities [n, C]."""

    def __init__(
        self,
        forward: Callable[[torch.Tensor], torch.Tensor],
        *,
        device: torch.device,
        num_features: int,
        output: str,
        sha256: str,
        description: str,
        format: str = "torchscript",
        runtime: Runtime | None = None,
        rows_per_call: int | None = None,
    ) -> None:
        self._forward = forward
        self.device = device
        self.num_features = num_features
        self.output = output
        self.sha256 = sha256
        self.description = description
        self.format = format
        self.runtime = runtime or runtime_of("torchscript")
        #: rows the engine should hand over per call on the CPU; None: the engine's cache-sized default (torch)
        self.rows_per_call = rows_per_call

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out = self._forward(x)
            if out.dim() != 2:
                raise ModelError(f"{self.description}: output has shape {tuple(out.shape)}, expected [n, C]")
            if self.output == "logits":
                out = torch.softmax(out.to(torch.float32), dim=1)
            return out


def _load_torchscript(path: Path, device: torch.device) -> torch.nn.Module:
    module = torch.jit.load(str(path), map_location=device)
    module.eval()
    return module


def _load_exported(path: Path, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    program = torch.export.load(str(path))
    if device.type != "cpu":
        from torch.export.passes import move_to_device_pass

        program = move_to_device_pass(program, device)
    return program.module()


def _entrypoint_forward(entrypoint: str, chunk_rows: int) -> Callable[[torch.Tensor], torch.Tensor]:
    module_name, _, attribute = entrypoint.partition(":")
    try:
        factory: Any = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ModelError(f"entrypoint {entrypoint!r}: cannot import ({error})") from None
    try:
        predict = factory()
    except Exception as error:  # the bank's code: report it in one line
        raise ModelError(f"entrypoint {entrypoint!r}: calling it failed ({type(error).__name__}: {error})") from None
    if not callable(predict):
        raise ModelError(f"entrypoint {entrypoint!r}: returned {type(predict).__name__}, not a callable")
    return chunked_forward(lambda rows: np.asarray(predict(rows)), chunk_rows)


_NATIVE = {"xgboost": xgboost_forward, "lightgbm": lightgbm_forward, "onnx": onnx_forward}


def _file_forward(model: ModelConfig, model_format_: str, num_features: int, device: torch.device
                  ) -> Callable[[torch.Tensor], torch.Tensor]:
    path = model.path
    assert path is not None
    if model_format_ in _NATIVE:
        return _NATIVE[model_format_](path, num_features, device, model.cpu_chunk_rows)
    if model_format_ == "skops":
        return skops_forward(path, num_features, device, model.cpu_chunk_rows, model.trusted)
    try:
        return _load_exported(path, device) if model_format_ == "torch-export" else _load_torchscript(path, device)
    except Exception as error:
        kind = type(error).__name__
        raise ModelError(f"{path}: not a loadable TorchScript or torch.export model ({kind})") from None


def load_model(model: ModelConfig, num_features: int, device: torch.device | str = "cpu",
               sha256: str | None = None, *, features: Sequence[FeatureConfig] | None = None,
               config_source: Path | str | None = None) -> LoadedModel:
    """Load the configured model onto ``device`` and check it on two rows of zeros. ``sha256``: the model's, when
    the caller has it (a worker: the run's, taken once in the flow); the model is hashed otherwise. With
    ``features`` (the config's ``[[features]]``, from ``config_source``), the names, kinds and categories the
    model file stores are checked against them first (:func:`check_model_features`)."""
    device = torch.device(device)
    if model.path is not None and not model.path.is_file():
        raise ModelError(f"{model.path}: model file not found")
    if sha256 is None:
        audit = model_audit(model)
        model_format_, runtime, sha256 = audit.format, audit.runtime, audit.sha256
    else:
        model_format_ = _loadable_format(model)
        runtime = runtime_of(model_format_)
    if features is not None:
        check_model_features(model, features, config_source, model_format_)
    rows_per_call = None
    if model.path is not None:
        forward = _file_forward(model, model_format_, num_features, device)
        description = str(model.path)
        if model_format_ not in ("torchscript", "torch-export"):
            rows_per_call = model.cpu_chunk_rows  # native libraries: large calls, threaded inside
    else:
        forward = _entrypoint_forward(model.entrypoint or "", model.cpu_chunk_rows)
        description = f"entrypoint {model.entrypoint!r}"
        rows_per_call = model.cpu_chunk_rows
    loaded = LoadedModel(
        forward,
        device=device,
        num_features=num_features,
        output=model.output,
        sha256=sha256,
        description=description,
        format=model_format_,
        runtime=runtime,
        rows_per_call=rows_per_call,
    )
    check_model_contract(loaded, len(model.classes))
    return loaded


def check_model_features(model: ModelConfig, features: Sequence[FeatureConfig], config_source: Path | str | None,
                         model_format_: str | None = None) -> None:
    """The model file's own feature names (and kinds and categories, where its format stores them) against the
    config's ``[[features]]``: the first mismatch is one :class:`ModelError` line (tasks/inputs/model_names.py).
    Nothing to check for an entrypoint or a format that stores no names."""
    if model.path is None:
        return
    found = model_format_ or _loadable_format(model)
    facts = read_model_facts(model.path, found, model.trusted)
    check_feature_names(model.path, facts, features, config_source)


def is_probabilities(out: torch.Tensor) -> bool:
    """Whether every row of a model's ``[N, C]`` output is a probability vector: values in [0, 1] (within
    1e-6) summing to 1 (within 1e-3, float32 models). The load-time contract and the per-decision check
    (tasks/explain/worker.py, CheckedModel) both ask this."""
    values = out.detach().to(torch.float64)
    in_range = bool(((values >= -1e-6) & (values <= 1 + 1e-6)).all())
    return in_range and float((values.sum(1) - 1).abs().max()) <= 1e-3


def check_model_contract(model: LoadedModel, num_classes: int) -> None:
    """Call the model on two rows of zeros: the output must be [2, C] probabilities."""
    probe = torch.zeros(2, model.num_features, dtype=torch.float32, device=model.device)
    try:
        out = model(probe)
    except ModelError:
        raise
    except Exception as error:
        raise ModelError(
            f"{model.description}: fails on input float32 [2, {model.num_features}] "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
        ) from None
    if tuple(out.shape) != (2, num_classes):
        raise ModelError(
            f"{model.description}: output shape {tuple(out.shape)} for 2 rows, expected (2, {num_classes}) "
            f"for classes in [model] classes"
        )
    out = out.to(torch.float64)
    if not torch.isfinite(out).all():
        raise ModelError(f"{model.description}: output is not finite")
    if model.output == "probabilities" and not is_probabilities(out):
        raise ModelError(
            f"{model.description}: outputs are not probabilities (rows must sum to 1); "
            "set [model] output = \"logits\" if it returns logits"
        )


def check_missing_contract(model: LoadedModel, probe: np.ndarray, names: list[str]) -> None:
    """Where the reference has missing values, the model receives NaN in those features (docs/method.md,
    "Missing values"): call it on ``probe`` (``ReferenceStats.missing_probe()``: row i has NaN in feature
    ``names[i]``, the last row in all of them) and require finite output, row by row.

    A model that fails gets one line naming the (first) feature and the two fixes.
    """
    if not names:
        return
    rows = torch.as_tensor(probe, dtype=torch.float32, device=model.device)
    for i in range(len(rows)):
        try:
            out = model(rows[i : i + 1]).to(torch.float64)
            failed = None if bool(torch.isfinite(out).all()) else "returns non-finite output"
        except ModelError:
            raise
        except Exception as error:  # the bank's code: report it in one line
            failed = f"fails ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
        if failed is None:
            continue
        what = f"'{names[i]}' is" if i < len(names) else f"{', '.join(repr(n) for n in names)} are"
        fix_for = f"'{names[i]}'" if i < len(names) else "them"
        raise ModelError(
            f"{model.description}: {failed} when {what} missing (NaN), as in the reference and so in LIME's "
            f"samples: use a model that handles NaN, or set [[features]] missing = \"fail\" for {fix_for} "
            "(a decision missing it then fails alone)"
        )
