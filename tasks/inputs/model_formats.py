"""Model files as banks ship them: which format a file is, which library runs it, and the native loaders.

Formats (``[model] format``, inferred from the file where unambiguous): ``torchscript``, ``torch-export``,
``onnx`` (onnxruntime), ``xgboost`` (``.ubj``/``.json``), ``lightgbm`` (``.txt``) and ``skops`` (scikit-learn,
loaded with skops' trusted-type check). Pickle and joblib files are refused: loading one runs arbitrary code.

Every native model runs on its own library, unconverted: XGBoost's and LightGBM's own predictors, ONNX Runtime,
scikit-learn's ``predict_proba``. Nothing is translated to another runtime, so nothing can round a threshold:
the engine's rows are float32 (``BatchedLime._predict``) and each library is handed exactly those values
(LightGBM and scikit-learn widen them to float64 exactly), which is what the library's own ``predict_proba``
computes on the same values. tests/engine/test_model_formats.py checks each format against that native
``predict_proba`` (|Δp| <= 1e-5), LightGBM also on rows sitting exactly on every threshold of the model.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, get_args

import numpy as np
import torch

from tasks.errors import ModelError, one_line
from tasks.inputs.config import ModelFormat

#: The formats ``[model] format`` accepts (the config's own list).
FORMATS: tuple[str, ...] = get_args(ModelFormat)

#: The Python library that runs each format, the distributions that may provide it (first installed wins),
#: and the pip extra that installs it.
RUNTIMES: dict[str, tuple[str, tuple[str, ...], str | None]] = {
    "torchscript": ("torch", ("torch",), None),
    "torch-export": ("torch", ("torch",), None),
    "onnx": ("onnxruntime", ("onnxruntime", "onnxruntime-gpu"), "onnx"),
    "xgboost": ("xgboost", ("xgboost", "xgboost-cpu"), "xgboost"),
    "lightgbm": ("lightgbm", ("lightgbm",), "lightgbm"),
    "skops": ("skops", ("skops",), "skops"),
}

PICKLE_REFUSED = (
    "pickle and joblib files are refused: loading one runs arbitrary code. Save a scikit-learn model with "
    "skops.io.dump(model, \"model.skops\") (format = \"skops\") or export it to ONNX (skl2onnx); XGBoost and "
    "LightGBM models with their own save_model"
)

_PICKLE_SUFFIXES = {".pkl", ".pickle", ".joblib", ".jbl", ".sav", ".dill", ".cloudpickle"}
_ONNX_TREE_OPS = {"TreeEnsembleClassifier", "TreeEnsembleRegressor", "TreeEnsemble"}


@dataclass(frozen=True)
class Runtime:
    """The library that evaluates a model format, and its installed version (for the manifest)."""

    library: str
    version: str

    def to_dict(self) -> dict[str, str]:
        return {"library": self.library, "version": self.version}


def runtime_of(model_format: str | None) -> Runtime:
    """The runtime library of a format and its installed version, read from metadata (nothing is imported);
    an entrypoint (``None``) is the bank's own Python code."""
    if model_format is None or model_format == "entrypoint":
        return Runtime("python entrypoint", "")
    if model_format not in RUNTIMES:
        return Runtime("unknown", "")
    library, distributions, _ = RUNTIMES[model_format]
    for name in distributions:
        try:
            return Runtime(library, metadata.version(name))
        except metadata.PackageNotFoundError:
            continue
    return Runtime(library, "not installed")


def _head(path: Path, size: int = 64) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(size)
    except OSError as error:
        raise ModelError(f"{path}: cannot read model ({error.strerror})") from None


def _zip_names(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return []


def is_pickle(path: Path) -> bool:
    """A pickle or joblib file, by name or by its first bytes (pickle protocol 2+ starts with 0x80)."""
    return path.suffix.lower() in _PICKLE_SUFFIXES or _head(path, 1) == b"\x80"


def infer_format(path: Path) -> str:
    """The format of a model file from its name and first bytes; one line asking for ``[model] format`` when
    it cannot be told."""
    if is_pickle(path):
        raise ModelError(f"{path}: {PICKLE_REFUSED}")
    suffix = path.suffix.lower()
    head = _head(path)
    if suffix == ".onnx":
        return "onnx"
    if suffix == ".ubj" or (head[:1] == b"{" and b"learner" in head[:32]):
        return "xgboost"  # XGBoost's JSON and UBJSON both open with the "learner" object
    if head.startswith(b"tree\n") or head.startswith(b"tree\r\n"):
        return "lightgbm"
    if suffix == ".skops":
        return "skops"
    if suffix == ".pt2":
        return "torch-export"
    if zipfile.is_zipfile(path):
        names = _zip_names(path)
        if "schema.json" in names:
            return "skops"
        if any(name.endswith("archive_format") for name in names):
            return "torch-export"
        if any(name.endswith("data.pkl") or name.endswith("constants.pkl") for name in names):
            return "torchscript"
    if suffix in (".pt", ".pth", ".ts", ".jit", ".torchscript"):
        return "torchscript"
    raise ModelError(
        f"{path}: cannot tell the model's format from the file; set [model] format to one of {', '.join(FORMATS)}"
    )


def require(model_format: str, path: Path) -> Any:
    """Import a format's library, or one line naming the pip extra that installs it."""
    library, _, extra = RUNTIMES[model_format]
    try:
        return __import__(library)
    except ImportError as error:
        hint = f"pip install 'limelight[{extra}]'" if extra else f"install {library}"
        raise ModelError(f"{path}: format {model_format!r} needs the {library} library ({error.msg}): {hint}") from None


# --- the native forwards: float32 [n, d] tensor on the worker's device -> float32 [n, C] probabilities -------------


def worker_threads() -> int:
    """The worker's threads: what the worker set for torch (tasks/explain/worker.py sets [run] torch_threads first)."""
    return max(1, torch.get_num_threads())


def _host_rows(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())


def chunked_forward(predict: Callable[[np.ndarray], np.ndarray],
                    chunk_rows: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """A forward that runs ``predict`` on the host in calls of at most ``chunk_rows`` rows."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        rows = _host_rows(x)
        parts = [predict(rows[i : i + chunk_rows]) for i in range(0, len(rows), chunk_rows)]
        out = np.concatenate(parts, axis=0) if parts else np.zeros((0, 0), np.float32)
        return torch.as_tensor(out, dtype=torch.float32).to(x.device)

    return forward


def _two_columns(p: np.ndarray) -> np.ndarray:
    """A binary model's P(class 1) [n] as [n, 2], as the libraries' own predict_proba builds it."""
    return np.vstack((1.0 - p, p)).T if p.ndim == 1 else p


def _check_width(path: Path, found: int, expected: int) -> None:
    if found != expected:
        raise ModelError(f"{path}: the model takes {found} features, the config lists {expected} ([[features]])")


# XGBoost ---------------------------------------------------------------------------------------------------------

_XGB_PROBABILITY = {"binary:logistic", "multi:softprob"}
_XGB_MARGIN = {"binary:logitraw", "multi:softmax"}  # probabilities from the margin, as XGBClassifier does


def xgboost_forward(path: Path, num_features: int, device: torch.device, chunk_rows: int
                    ) -> Callable[[torch.Tensor], torch.Tensor]:
    """XGBoost's own predictor (``inplace_predict``) on the worker's threads, or with ``device="cuda"`` on the
    worker's CUDA tensors (zero copy, through cupy). XGBoost evaluates float32 rows itself, so the engine's rows
    are its native input."""
    xgb = require("xgboost", path)
    try:
        booster = xgb.Booster(model_file=str(path))
        objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
    except Exception as error:  # the library's own message, in one line
        raise ModelError(f"{path}: not a loadable XGBoost model ({one_line(error)})") from None
    if objective not in _XGB_PROBABILITY | _XGB_MARGIN:
        raise ModelError(f"{path}: XGBoost objective {objective!r} is not a classifier's (binary:logistic, "
                         "multi:softprob, binary:logitraw or multi:softmax)")
    _check_width(path, booster.num_features(), num_features)
    margin = objective in _XGB_MARGIN
    predict_type = "margin" if margin else "value"

    def probabilities(out: Any, xp: Any) -> Any:
        if not margin:
            return out
        if out.ndim == 1:
            return 1.0 / (1.0 + xp.exp(-out))
        shifted = xp.exp(out - out.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)

    if device.type == "cuda":
        try:
            import cupy  # noqa: F401  (XGBoost takes and returns CUDA arrays through cupy)
        except ImportError:
            raise ModelError(f"{path}: XGBoost on {device} needs cupy for zero-copy prediction (pip install "
                             "cupy-cuda12x), or run this worker on the CPU") from None
        booster.set_param({"device": f"cuda:{device.index or 0}"})

        def forward_cuda(x: torch.Tensor) -> torch.Tensor:
            import cupy as cp

            rows = x.detach().to(torch.float32).contiguous()
            with cp.cuda.Device(device.index or 0):
                out = probabilities(booster.inplace_predict(rows, predict_type=predict_type), cp)
                out = cp.vstack((1.0 - out, out)).T if out.ndim == 1 else out
                # a copy: XGBoost's output buffer is reused by its next prediction
                return torch.as_tensor(cp.ascontiguousarray(out), device=device).to(torch.float32).clone()

        return forward_cuda

    threads = [0]

    def predict(rows: np.ndarray) -> np.ndarray:
        wanted = worker_threads()
        if threads[0] != wanted:
            booster.set_param({"nthread": wanted})
            threads[0] = wanted
        return _two_columns(probabilities(booster.inplace_predict(rows, predict_type=predict_type), np))

    return chunked_forward(predict, chunk_rows)


# LightGBM --------------------------------------------------------------------------------------------------------


def lightgbm_header(path: Path) -> dict[str, str]:
    """The ``key=value`` lines before the first tree of a LightGBM model file."""
    header: dict[str, str] = {}
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.startswith("Tree="):
                break
            key, sep, value = line.strip().partition("=")
            if sep:
                header[key] = value
    return header


def lightgbm_forward(path: Path, num_features: int, device: torch.device, chunk_rows: int
                     ) -> Callable[[torch.Tensor], torch.Tensor]:
    """LightGBM's own predictor on the worker's threads (it has no GPU predictor: CUDA rows are copied to the host).

    Thresholds stay the float64 values of the model file: the float32 rows are widened exactly and compared
    by LightGBM itself, so a row sitting on a threshold goes the way native prediction sends it. (Converting
    the trees to float32 thresholds, as ONNX and some GPU runtimes do, flips those rows; we never convert.)
    """
    lgb = require("lightgbm", path)
    header = lightgbm_header(path)
    objective = header.get("objective", "").split(" ")[0]
    if objective not in ("binary", "multiclass", "cross_entropy", "xentropy"):
        raise ModelError(f"{path}: LightGBM objective {objective or '(none)'!r} is not a classifier's "
                         "(binary, multiclass or cross_entropy)")
    try:
        booster = lgb.Booster(model_file=str(path))
    except Exception as error:
        raise ModelError(f"{path}: not a loadable LightGBM model ({one_line(error)})") from None
    _check_width(path, booster.num_feature(), num_features)

    def predict(rows: np.ndarray) -> np.ndarray:
        out = booster.predict(rows.astype(np.float64), num_threads=worker_threads())
        return _two_columns(np.asarray(out, dtype=np.float64))

    return chunked_forward(predict, chunk_rows)


# ONNX ------------------------------------------------------------------------------------------------------------


def onnx_forward(path: Path, num_features: int, device: torch.device, chunk_rows: int
                 ) -> Callable[[torch.Tensor], torch.Tensor]:
    """An ONNX Runtime session on the worker's threads. Tree ensembles run on the CPU provider (ORT's CUDA
    provider has no tree kernels: they would fall back to the CPU op by op); neural models on a CUDA worker use
    the CUDA provider when onnxruntime-gpu provides it."""
    ort = require("onnx", path)
    try:
        options = ort.SessionOptions()
        options.intra_op_num_threads = worker_threads()
        options.inter_op_num_threads = 1
        probe = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:
        raise ModelError(f"{path}: not a loadable ONNX model ({one_line(error)})") from None
    session = probe
    if device.type == "cuda" and not _has_tree_ops(path) and "CUDAExecutionProvider" in ort.get_available_providers():
        provider = ("CUDAExecutionProvider", {"device_id": device.index or 0})
        session = ort.InferenceSession(str(path), options, providers=[provider, "CPUExecutionProvider"])
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelError(f"{path}: the ONNX model has {len(inputs)} inputs; limelight feeds one [n, d] tensor")
    name, dtype = inputs[0].name, np.float64 if inputs[0].type == "tensor(double)" else np.float32
    width = inputs[0].shape[-1] if inputs[0].shape else None
    if isinstance(width, int):
        _check_width(path, width, num_features)
    output = _probability_output(path, session)

    def predict(rows: np.ndarray) -> np.ndarray:
        return np.asarray(session.run([output], {name: rows.astype(dtype, copy=False)})[0])

    return chunked_forward(predict, chunk_rows)


def _has_tree_ops(path: Path) -> bool:
    """Whether the ONNX graph holds a tree-ensemble op; when it cannot be read (or onnx is missing): assume so,
    and stay on the CPU provider."""
    try:
        import onnx

        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:
        return True
    return any(node.op_type in _ONNX_TREE_OPS for node in graph.node)


def _probability_output(path: Path, session: Any) -> str:
    """The output holding the class probabilities: a float tensor [n, C] (skl2onnx: 'probabilities')."""
    outputs = session.get_outputs()
    tensors = [o for o in outputs if o.type in ("tensor(float)", "tensor(double)") and len(o.shape or []) == 2]
    named = [o for o in tensors if o.name in ("probabilities", "output_probability", "probability")]
    if named or len(tensors) == 1:
        return (named or tensors)[0].name
    if any(o.type.startswith("seq(map") for o in outputs):
        raise ModelError(f"{path}: the ONNX model returns probabilities as a ZipMap (a list of dicts); export it "
                         "with skl2onnx options={'zipmap': False}")
    raise ModelError(f"{path}: cannot tell which ONNX output holds the probabilities "
                     f"({', '.join(o.name for o in outputs)}); export one float output [n, C]")


# scikit-learn (skops) --------------------------------------------------------------------------------------------


def skops_forward(path: Path, num_features: int, device: torch.device, chunk_rows: int, trusted: list[str]
                  ) -> Callable[[torch.Tensor], torch.Tensor]:
    """A scikit-learn estimator from a skops file, checked against skops' trusted types before anything is
    constructed: types skops does not trust by default must be listed in ``[model] trusted``. Its own
    ``predict_proba`` runs on the host with OpenMP/BLAS held to the worker's threads."""
    require("skops", path)
    from skops.io import get_untrusted_types, load
    from threadpoolctl import ThreadpoolController

    try:
        untrusted = get_untrusted_types(file=path)
    except Exception as error:
        raise ModelError(f"{path}: not a loadable skops file ({one_line(error)})") from None
    unlisted = [name for name in untrusted if name not in trusted]
    if unlisted:
        raise ModelError(f"{path}: the skops file holds types skops does not trust by default: {', '.join(unlisted)};"
                         " review them and list them in [model] trusted")
    try:
        estimator = load(path, trusted=list(trusted))
    except Exception as error:
        raise ModelError(f"{path}: not a loadable skops file ({one_line(error)})") from None
    if not callable(getattr(estimator, "predict_proba", None)):
        raise ModelError(f"{path}: {type(estimator).__name__} has no predict_proba")
    width = getattr(estimator, "n_features_in_", None)
    if isinstance(width, int):
        _check_width(path, width, num_features)
    controller = ThreadpoolController()

    def predict(rows: np.ndarray) -> np.ndarray:
        with controller.limit(limits=worker_threads()):
            return np.asarray(estimator.predict_proba(rows.astype(np.float64)))

    return chunked_forward(predict, chunk_rows)
