"""Loading the bank's model behind one contract: float32 [n, d] in, class probabilities [n, C] out.

Supported: a TorchScript file (``torch.jit.save``), a torch.export archive (``.pt2``, ``torch.export.save``),
or a Python entrypoint ``package.module:function`` returning a callable that takes a float32 numpy array and
returns probabilities (e.g. a scikit-learn ``predict_proba``), evaluated on the CPU in large chunks.
Inputs are in the configured feature order with categorical features as integer codes.
"""

from __future__ import annotations

import hashlib
import importlib
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tasks.config import ModelConfig
from tasks.errors import ModelError


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def model_sha256(model: ModelConfig) -> str:
    """SHA-256 of the model file, or of the entrypoint's name and its module's source file."""
    if model.path is not None:
        try:
            return file_sha256(model.path)
        except OSError as error:
            raise ModelError(f"{model.path}: cannot read model ({error.strerror})") from None
    module_name, _, _ = (model.entrypoint or "").partition(":")
    digest = hashlib.sha256((model.entrypoint or "").encode())
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin and Path(spec.origin).is_file():
        digest.update(Path(spec.origin).read_bytes())
    return digest.hexdigest()


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
    ) -> None:
        self._forward = forward
        self.device = device
        self.num_features = num_features
        self.output = output
        self.sha256 = sha256
        self.description = description

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


def _is_export_archive(path: Path) -> bool:
    if path.suffix == ".pt2":
        return True
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("archive_format") for name in archive.namelist())
    except zipfile.BadZipFile:
        return False


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

    def forward(x: torch.Tensor) -> torch.Tensor:
        rows = x.detach().to("cpu", torch.float32).numpy()
        parts = [np.asarray(predict(rows[i : i + chunk_rows])) for i in range(0, len(rows), chunk_rows)]
        out = np.concatenate(parts, axis=0) if parts else np.zeros((0, 0))
        return torch.as_tensor(out, dtype=torch.float32, device=x.device)

    return forward


def load_model(model: ModelConfig, num_features: int, device: torch.device | str = "cpu") -> LoadedModel:
    """Load the configured model onto ``device`` and check it on one row of zeros."""
    device = torch.device(device)
    if model.path is not None:
        path = model.path
        if not path.is_file():
            raise ModelError(f"{path}: model file not found")
        try:
            forward = _load_exported(path, device) if _is_export_archive(path) else _load_torchscript(path, device)
        except Exception as error:
            kind = type(error).__name__
            raise ModelError(f"{path}: not a loadable TorchScript or torch.export model ({kind})") from None
        description = str(path)
    else:
        forward = _entrypoint_forward(model.entrypoint or "", model.cpu_chunk_rows)
        description = f"entrypoint {model.entrypoint!r}"
    loaded = LoadedModel(
        forward,
        device=device,
        num_features=num_features,
        output=model.output,
        sha256=model_sha256(model),
        description=description,
    )
    check_model_contract(loaded, len(model.classes))
    return loaded


def is_probabilities(out: torch.Tensor) -> bool:
    """Whether every row of a model's ``[N, C]`` output is a probability vector: values in [0, 1] (within
    1e-6) summing to 1 (within 1e-3, float32 models). The load-time contract and the per-decision check
    (tasks/shard.py, CheckedModel) both ask this."""
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
