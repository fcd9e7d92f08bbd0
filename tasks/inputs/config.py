"""The run configuration: a TOML file validated with pydantic.

Every problem becomes a one-line :class:`ConfigError` naming the file and the key, e.g.
``config/demo.toml: [explain] num_sample: unknown key (did you mean 'num_samples'?)``.
Relative paths resolve against the config file's folder.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tasks.errors import ConfigError
from tasks.inputs.drift_config import DriftConfig
from tasks.inputs.report_config import ReportConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


MIN_REFERENCE_ROWS = 10
"""The reference population needs at least this many rows: fewer give no meaningful quartiles or frequencies
(a bank's reference sample has thousands)."""


def default_kernel_width(num_features: int) -> float:
    """lime's default kernel width: 0.75 * sqrt(number of columns, categorical ones included)."""
    return 0.75 * math.sqrt(num_features)


class DataConfig(_Strict):
    """Where the decisions to explain and the reference population are."""

    decisions: Path = Field(description="decisions Parquet file or (hive-partitioned) dataset directory")
    reference: Path = Field(description="population Parquet that LIME draws its feature statistics from")
    id_column: str = Field(
        default="customer_id", description="the decisions' id column: one report and one explanation per id"
    )
    date_column: str | None = Field(
        default=None,
        description="column or hive partition key holding each decision's date; a nightly run (run_date) "
        "explains the decisions of one day; default: [report] date_column",
    )


ModelFormat = Literal["torchscript", "torch-export", "onnx", "xgboost", "lightgbm", "skops"]


class ModelConfig(_Strict):
    """The credit model: a model file (``path``) or a Python entrypoint, and the classes it scores."""

    path: Path | None = Field(
        default=None, description="the model file: TorchScript, torch.export (.pt2), ONNX, XGBoost (.ubj/.json), "
        "LightGBM (.txt) or skops (scikit-learn)",
    )
    format: ModelFormat | None = Field(default=None, description="the file's format; default: inferred from the file")
    entrypoint: str | None = Field(default=None, description="'package.module:function' returning a callable")
    files: list[Path] = Field(
        default_factory=list, description="artifacts an entrypoint loads; their SHA-256 join the model's",
    )
    trusted: list[str] = Field(
        default_factory=list, description="skops: types to trust beyond skops' defaults (reviewed by you)",
    )
    classes: list[str] = Field(min_length=1, description="the model's output classes, in the order of its columns")
    explain: str = Field(description="the class whose probability is explained")
    output: Literal["probabilities", "logits"] = Field(
        default="probabilities", description="what the model returns: class probabilities, or logits (softmaxed)"
    )
    cpu_chunk_rows: int = Field(
        default=200_000, gt=0, description="rows per call of an entrypoint or native (non-torch) model"
    )

    @field_validator("format", mode="before")
    @classmethod
    def _no_pickle(cls, value: Any) -> Any:
        if isinstance(value, str) and value.lower() in ("pickle", "joblib", "pkl"):
            raise ValueError("pickle and joblib are refused: loading one runs arbitrary code; save a scikit-learn "
                             "model with skops.io.dump (format = \"skops\") or export it to ONNX")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if (self.path is None) == (self.entrypoint is None):
            raise ValueError("set exactly one of 'path' and 'entrypoint'")
        if self.entrypoint is not None and self.format is not None:
            raise ValueError("'format' is for a model file ('path'), not an entrypoint")
        if self.path is not None and self.files:
            raise ValueError("'files' lists what an entrypoint loads; a model file ('path') is hashed itself")
        if self.explain not in self.classes:
            raise ValueError(f"explain={self.explain!r} is not one of classes {self.classes}")
        if self.entrypoint is not None and ":" not in self.entrypoint:
            raise ValueError(f"entrypoint={self.entrypoint!r} must look like 'package.module:function'")
        return self

    @property
    def explain_index(self) -> int:
        return self.classes.index(self.explain)


WIDTH_GRID = (0.75, 0.35, 0.2, 0.12, 0.08)

MAX_COLUMNS = 384
"""Per-bin design columns per decision before a wide model's features share them (tasks/engine/columns.py)."""
"""The kernel-matched method's pre-registered kernel widths, in units of √d, widest (lime's default) first."""


MATCHED_METHODS = ("per-bin", "kernel-matched")
"""The methods that sample kernel-matched with a per-decision width (``width_grid``, held-out fidelity)."""


class ExplainConfig(_Strict):
    """How each decision is explained: the engine, the method and its sampling (docs/method.md)."""

    engine: Literal["batched", "lime"] = Field(
        default="batched", description="'batched': limelight's torch engine; 'lime': the original lime package, one "
        "decision at a time (slow; the auditors' canonical implementation)",
    )
    method: Literal["per-bin", "kernel-matched", "lime"] = Field(
        default="per-bin",
        description="'per-bin' (default; a LIME-family representation, not lime's): kernel-matched sampling with "
        "one indicator per bin a feature can move to, each feature's weight its contrast (docs/method.md); "
        "'kernel-matched': samples drawn from the kernel-weighted distribution, the applicant's own values kept, a "
        "per-decision kernel width from width_grid, held-out fidelity, reasons from lime's binary surrogate on "
        "every feature; 'lime': lime 0.2.0.1's algorithm, bit for bit",
    )
    target: Literal["log-odds", "probability"] = Field(
        default="log-odds",
        description="per-bin: what the surrogate fits, the explained class's log-odds or its probability; weights "
        "and local_pred are reported in probability either way",
    )
    max_columns: int = Field(
        default=MAX_COLUMNS, ge=16, le=4096,
        description="per-bin: the most indicator columns a decision's surrogate gets; a model with more (one per "
        "bin of every feature: about 4 d) gives them to the features with the largest effect in a pilot of samples, "
        "one 'moved' column to each other feature (docs/method.md, 'Wide models'). Memory and time grow with its "
        "square",
    )
    width_grid: tuple[float, ...] = Field(
        default=WIDTH_GRID, min_length=1,
        description="kernel-matched: kernel widths tried per decision, in units of sqrt(d), widest first",
    )
    target_fidelity: float = Field(
        default=0.5, ge=0.0, le=1.0,
        description="kernel-matched: a width is taken when its held-out fidelity reaches this",
    )
    min_effective_share: float = Field(
        default=0.2, ge=0.0, lt=1.0,
        description="kernel-matched: a width is taken only when at least this share of its samples leave the "
        "applicant's point (narrower kernels degenerate)",
    )
    min_contrasts: int = Field(
        default=50, ge=1,
        description="kernel-matched: a feature is named as a factor only when at least this many samples left the "
        "applicant's bin of it (its effect was measured)",
    )
    num_samples: int = Field(default=5000, ge=10, le=1_000_000, description="perturbation samples per decision (S)")
    top_k: int = Field(default=3, ge=1, le=4, description="factors per decision (regulators: at most four)")
    seed: int = Field(
        default=20261122, ge=0, lt=2**63, description="with the decision id, keys each decision's random stream"
    )
    kernel_width: float | None = Field(default=None, gt=0, description="default 0.75*sqrt(d), as lime")
    feature_selection: Literal["auto", "forward_selection", "highest_weights"] = Field(
        default="auto", description="method = 'lime': lime's feature selection; 'auto' is forward selection for "
        "top_k <= 6, else highest weights",
    )
    memory_budget_mb: int | None = Field(
        default=None, ge=16, description="memory one chunk may use; default 1024 on CPU, 1/4 of free GPU memory"
    )
    compile: Literal["auto", "always", "never"] = Field(
        default="auto",
        description="fuse the sampler with torch.compile: 'auto' where a compiler is available (first use costs"
        " ~20 s per worker process, cached on disk after)",
    )
    design: Literal["sobol", "random"] = Field(
        default="sobol",
        description="where the samples' uniforms come from: 'sobol', a digitally shifted Sobol sequence per decision"
        " and stream (same distribution as lime's, less sampling noise), or 'random', independent draws as lime",
    )
    stability_runs: int = Field(
        default=2, ge=1, le=16,
        description="independent sample streams per decision (R), num_samples / R samples each; the reported fit"
        " pools them. 1: the plain engine, no stability check and no adaptation",
    )
    adaptive: bool = Field(default=True, description="double the samples of decisions whose top-k is not stable")
    max_samples_factor: int = Field(
        default=16, ge=1, le=64,
        description="adaptation stops at this multiple of num_samples per decision (a power of 2)",
    )
    confidence: float = Field(
        default=0.95, gt=0.5, lt=1.0,
        description="one-sided confidence that the top-k set's selection margin is positive (see docs/method.md)",
    )

    @field_validator("max_samples_factor")
    @classmethod
    def _power_of_two(cls, factor: int) -> int:
        if factor & (factor - 1):
            raise ValueError("must be a power of 2 (samples double each adaptation round)")
        return factor

    @property
    def effective_method(self) -> str:
        """The method the run explains with: ``method`` for the batched engine; the lime package (``engine =
        "lime"``) is always lime's."""
        return self.method if self.engine == "batched" else "lime"

    @field_validator("width_grid")
    @classmethod
    def _widest_first(cls, grid: tuple[float, ...]) -> tuple[float, ...]:
        if any(w <= 0 for w in grid) or any(a <= b for a, b in zip(grid, grid[1:], strict=False)):
            raise ValueError("must hold positive widths, strictly decreasing (widest first)")
        return grid

    @model_validator(mode="after")
    def _method_fits(self) -> ExplainConfig:
        method = self.effective_method
        if method in MATCHED_METHODS:
            if self.stability_runs < 2:
                raise ValueError(f"method = '{method}' needs stability_runs >= 2: the streams give the "
                                 "held-out fidelity (or set method = 'lime' for the plain engine)")
            if self.kernel_width is not None:
                raise ValueError(f"kernel_width is lime's single width; method = '{method}' takes width_grid "
                                 "(e.g. width_grid = [0.5]), or set method = 'lime'")
        return self

    @model_validator(mode="after")
    def _streams_hold_their_blocks(self) -> ExplainConfig:
        if self.stability_runs > 1 and self.num_samples // self.stability_runs < MIN_STREAM_SAMPLES:
            raise ValueError(
                f"num_samples = {self.num_samples} over stability_runs = {self.stability_runs} streams leaves fewer"
                f" than {MIN_STREAM_SAMPLES} samples per stream (8 jackknife blocks of 8)"
            )
        return self


MIN_STREAM_SAMPLES = 64


def stream_samples(num_samples: int, stability_runs: int) -> int:
    """Samples per stream in the first round: S split over the R streams, rounded up."""
    return -(-num_samples // stability_runs)


class ReviewConfig(_Strict):
    """The review gate: a decision failing any check is marked "requires human review" (needs_review)."""

    min_fidelity: float = Field(default=0.3, ge=0.0, le=1.0, description="below this: human review")
    max_prediction_gap: float = Field(
        default=0.3, gt=0.0, le=1.0, description="above this |local_pred - model_pred|: human review"
    )
    require_width: bool = Field(
        default=True, description="kernel-matched method: no width of the grid reached the target fidelity (the "
        "widest was kept): human review",
    )
    require_stable: bool = Field(default=True, description="a top-k not stable at the sample cap: human review")
    require_deletion: bool = Field(
        default=False, description="a failed deletion check (removing the factors does not move the output as"
        " stated): human review",
    )


class RunConfig(_Strict):
    """Workers and shards (the command line's --devices and --render-workers override them)."""

    devices: str = Field(default="auto", description="'auto', 'cpu:N' or 'cuda:0,1,...'")
    shard_size: int = Field(default=256, gt=0, description="decisions per shard")
    torch_threads: int = Field(default=1, ge=1, description="torch threads per CPU worker")
    render_workers: int | None = Field(
        default=None, ge=0,
        description="CPU workers that render PDFs beside the device workers; default: the cores they leave "
        "(at least 1); 0: the device workers render",
    )


DEFAULT_AGE_THRESHOLD = 62.0
"""Regulation B's elderly applicant (12 CFR 1002.2(o)): 62 years or older."""


class FeatureConfig(_Strict):
    """One block per model input, in the model's column order."""

    name: str = Field(min_length=1, description="the column in the decisions and the reference")
    label: str = Field(min_length=1, description="the feature's name in reports, e.g. 'Debt-to-income ratio'")
    kind: Literal["numeric", "categorical"] = Field(
        description="'numeric': quartile bins; 'categorical': the model receives the value's index in categories"
    )
    categories: list[str] | None = Field(
        default=None, description="categorical only: the values the column holds, in the order of their codes"
    )
    unit: str | None = Field(default=None, description="shown after values in reports, e.g. '%' or 'GBP'")
    decimals: int = Field(default=2, ge=0, le=6, description="decimal places of the feature's values in reports")
    missing: Literal["explain", "fail"] = Field(
        default="explain",
        description="a missing value (null or NaN): 'explain' treats it as a value of its own (the reference's gaps"
        " are sampled at their frequency and the model receives NaN); 'fail' sends a decision missing it to"
        " failures.parquet, and the model never receives NaN in this feature",
    )

    protected: bool | Literal["age"] | None = Field(
        default=None,
        description="a prohibited basis (ECOA / Regulation B: marital status, sex, race, colour, religion, national "
        "origin, public assistance): true: never stated on a letter, and a decision where it would rank among the "
        "principal reasons goes to review (gate 'protected-basis'); 'age': the same only where it raises the "
        "decline of an applicant aged age_threshold or more; false: checked, not protected (validate stops "
        "flagging the name); unset: validate flags a name or label that suggests a prohibited basis",
    )
    age_threshold: float | None = Field(
        default=None, gt=0,
        description="protected = 'age': the age from which the feature may not count against an applicant "
        "(Regulation B's elderly applicant: 62, the default)",
    )

    @field_validator("protected", mode="before")
    @classmethod
    def _true_false_or_age(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, bool) and value != "age":
            raise ValueError('must be true, false or "age"')
        return value

    @property
    def age_limit(self) -> float:
        """The age from which a ``protected = "age"`` feature may not raise a decline (default 62)."""
        return DEFAULT_AGE_THRESHOLD if self.age_threshold is None else self.age_threshold

    @model_validator(mode="after")
    def _age_rule(self) -> FeatureConfig:
        if self.protected == "age" and self.kind != "numeric":
            raise ValueError(f"feature {self.name!r}: protected = 'age' needs kind = 'numeric' (the age in years)")
        if self.age_threshold is not None and self.protected != "age":
            raise ValueError(f"feature {self.name!r}: age_threshold is for protected = 'age'")
        return self

    @model_validator(mode="after")
    def _categories_match_kind(self) -> FeatureConfig:
        if self.kind == "categorical":
            if not self.categories:
                raise ValueError(f"feature {self.name!r}: categorical features need 'categories'")
            if len(set(self.categories)) != len(self.categories):
                raise ValueError(f"feature {self.name!r}: 'categories' has duplicates")
        elif self.categories is not None:
            raise ValueError(f"feature {self.name!r}: 'categories' is only for kind = 'categorical'")
        return self


class Config(_Strict):
    """A run's config file: one table per section and one [[features]] block per model input."""

    data: DataConfig = Field(description="the decisions and the reference population")
    model: ModelConfig = Field(description="the credit model and its classes")
    explain: ExplainConfig = Field(default_factory=ExplainConfig, description="the explanation engine and method")
    review: ReviewConfig = Field(default_factory=ReviewConfig, description="when a decision goes to human review")
    run: RunConfig = Field(default_factory=RunConfig, description="devices, shards and the render pool")
    report: ReportConfig = Field(default_factory=ReportConfig, description="the PDF reports and the run summary")
    drift: DriftConfig = Field(default_factory=DriftConfig, description="the comparison with the previous night")
    features: list[FeatureConfig] = Field(min_length=1, description="the model's inputs, in its column order")

    # Not from the TOML: where it came from, for hashing and error messages.
    source: Path | None = Field(default=None, exclude=True)
    source_sha256: str | None = Field(default=None, exclude=True)

    @field_validator("features")
    @classmethod
    def _unique_names(cls, features: list[FeatureConfig]) -> list[FeatureConfig]:
        names = [f.name for f in features]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate feature names {duplicates}")
        return features

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def categorical_indices(self) -> list[int]:
        return [i for i, f in enumerate(self.features) if f.kind == "categorical"]


_SECTION_MODELS: dict[str, type[BaseModel]] = {
    "data": DataConfig,
    "model": ModelConfig,
    "explain": ExplainConfig,
    "review": ReviewConfig,
    "run": RunConfig,
    "report": ReportConfig,
    "drift": DriftConfig,
    "features": FeatureConfig,
}


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    """The valid keys at the place an unknown key was found, for a 'did you mean' hint."""
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        inner = _SECTION_MODELS.get(str(part))
        if inner is None:
            annotation = field.annotation
            inner = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        if inner is None:
            return []
        model = inner
    return [name for name in model.model_fields if name not in ("source", "source_sha256")]


def _format_location(loc: tuple[Any, ...]) -> str:
    """('explain', 'num_samples') -> "[explain] num_samples"; ('features', 2, 'kind') -> "[[features]] #3 kind"."""
    if not loc:
        return "(top level)"
    head, *rest = loc
    if head == "features" and rest and isinstance(rest[0], int):
        prefix = f"[[features]] #{rest[0] + 1}"
        rest = rest[1:]
    elif head in _SECTION_MODELS:
        prefix = f"[{head}]"
    else:
        return ".".join(str(p) for p in loc)
    return " ".join([prefix, ".".join(str(p) for p in rest)]).strip()


def _one_line(path: Path, error: ValidationError) -> str:
    first = error.errors()[0]
    loc = tuple(first["loc"])
    where = _format_location(loc)
    if first["type"] == "extra_forbidden":
        known = _known_keys(loc)
        guess = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f" (did you mean '{guess[0]}'?)" if guess else f" (known keys: {', '.join(known)})"
        message = f"unknown key{hint}"
    elif first["type"] == "missing":
        message = "missing required key"
    else:
        message = str(first["msg"]).removeprefix("Value error, ")
        if "input" in first and first["type"] not in ("model_type",) and not isinstance(first["input"], dict):
            message += f" (got {first['input']!r})"
    more = error.error_count() - 1
    suffix = f" [+{more} more problem{'s' if more > 1 else ''}]" if more else ""
    return f"{path}: {where}: {message}{suffix}"


def _resolve(base: Path, value: Path | None) -> Path | None:
    if value is None:
        return None
    value = Path(value).expanduser()
    return value if value.is_absolute() else (base / value).resolve()


def parse_config(raw: dict[str, Any], path: Path, sha256: str | None = None) -> Config:
    """Validate an already-parsed TOML document; relative paths resolve against ``path``'s folder."""
    try:
        config = Config.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_one_line(path, error)) from None
    base = path.resolve().parent
    data = config.data.model_copy(
        update={"decisions": _resolve(base, config.data.decisions), "reference": _resolve(base, config.data.reference)}
    )
    model = config.model.model_copy(update={"path": _resolve(base, config.model.path),
                                            "files": [_resolve(base, f) for f in config.model.files]})
    report = config.report.model_copy(
        update={
            "reasons": str(_resolve(base, Path(config.report.reasons))) if config.report.reasons else None,
            "notices": str(_resolve(base, Path(config.report.notices))) if config.report.notices else None,
        }
    )
    return config.model_copy(
        update={"data": data, "model": model, "report": report, "source": path, "source_sha256": sha256}
    )


def load_config(path: str | Path) -> Config:
    """Read and validate a config file, raising a one-line :class:`ConfigError` on any problem."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config ({error.strerror})") from None
    try:
        raw = tomllib.loads(blob.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"{path}: not valid TOML ({error})") from None
    return parse_config(raw, path, hashlib.sha256(blob).hexdigest())
