"""What a model file says about its own inputs: feature names, which are categorical, their categories, classes.

XGBoost, LightGBM and scikit-learn models store the names of the columns they were trained on; limelight feeds
the model its columns in ``[[features]]`` order, so a block written in another order would explain a different
model from the one that decided, without a single error. :func:`check_feature_names` compares the two and
refuses the first mismatch in one line, e.g. ``model.ubj: feature 3 is 'age' in the model but 'income' in
config.toml [[features]]``. ``limelight init`` (tasks/plan/init.py) builds ``[[features]]`` from the same facts.

Where each format keeps them (:func:`read_model_facts`):

- XGBoost: ``Booster.feature_names`` and ``feature_types`` (``'c'``: categorical), and the categories a model
  trained on pandas ``category`` columns stores (XGBoost 3.1+, ``Booster.get_categories()``);
- LightGBM: the model file's ``feature_names=`` and ``feature_infos=`` header lines (a categorical feature's info
  lists its values, a numeric one's is ``[min:max]``) and its ``pandas_categorical:`` line;
- scikit-learn through skops: ``feature_names_in_`` (set when the estimator was fitted on a DataFrame) and
  ``classes_``; the file is loaded with the same trusted-type check as the model itself;
- ONNX: the model's metadata property ``feature_names`` (a JSON list or comma-separated names), where the
  exporter set it (``onnx.helper.set_model_props``); ONNX has no per-column names of its own for an ``[n, d]``
  input;
- TorchScript and torch.export: nothing (the reference's columns are the only names).

Names a library makes up when trained on a bare array (LightGBM's ``Column_0``, XGBoost's ``f0``) are not the
model's names: they are treated as absent.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.errors import ModelError, one_line
from tasks.inputs.config import FeatureConfig
from tasks.inputs.model_formats import lightgbm_header, require

_GENERIC = (re.compile(r"Column_(\d+)"), re.compile(r"f(\d+)"))


@dataclass(frozen=True)
class ModelFeature:
    """One input column as the model file describes it."""

    name: str
    categorical: bool | None = None  # None: the format does not say
    categories: tuple[str, ...] | None = None  # the model's own category values, in code order (code = index)


@dataclass(frozen=True)
class ModelFacts:
    """What a model file says about its inputs and outputs (None: the format or the file does not say)."""

    where: str  # where the names come from, e.g. "XGBoost feature_names"
    features: tuple[ModelFeature, ...] | None = None
    width: int | None = None  # number of inputs
    num_classes: int | None = None
    classes: tuple[str, ...] | None = None  # class labels (scikit-learn classes_)

    @property
    def names(self) -> list[str] | None:
        return None if self.features is None else [f.name for f in self.features]


def _generic(names: Sequence[str]) -> bool:
    """Names made up by a library for a bare array: Column_0, Column_1, ... or f0, f1, ..."""
    return any(all((m := p.fullmatch(n)) is not None and int(m.group(1)) == i for i, n in enumerate(names))
               for p in _GENERIC)


def _named(features: list[ModelFeature]) -> tuple[ModelFeature, ...] | None:
    return None if not features or _generic([f.name for f in features]) else tuple(features)


# --- the formats --------------------------------------------------------------------------------------------------


def _xgboost_categories(booster: Any, names: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """The categories an XGBoost 3.1+ model stores for its pandas ``category`` inputs (feature name -> values in
    code order); empty for older versions or models trained on codes."""
    getter = getattr(booster, "get_categories", None)
    if getter is None:
        return {}
    try:
        arrays = getter(export_to_arrow=True).to_arrow()
    except Exception:  # an older model or library: no stored categories
        return {}
    found: dict[str, tuple[str, ...]] = {}
    for item in arrays or []:
        if isinstance(item, tuple) and len(item) == 2 and item[1] is not None:
            found[str(item[0])] = tuple(str(v) for v in item[1].to_pylist())
    return {n: v for n, v in found.items() if n in names}


def _xgboost_facts(path: Path) -> ModelFacts:
    xgb = require("xgboost", path)
    try:
        booster = xgb.Booster(model_file=str(path))
        learner = json.loads(booster.save_config())["learner"]
    except Exception as error:
        raise ModelError(f"{path}: not a loadable XGBoost model ({one_line(error)})") from None
    names = list(booster.feature_names or [])
    types = list(booster.feature_types or [None] * len(names))
    categories = _xgboost_categories(booster, names)
    features = [ModelFeature(n, None if t is None else t == "c", categories.get(n)) for n, t in zip(names, types,
                                                                                                    strict=False)]
    objective = learner["objective"]["name"]
    num_class = int(learner.get("learner_model_param", {}).get("num_class", "0") or 0)
    classes = num_class if objective.startswith("multi:") and num_class > 1 else 2
    return ModelFacts("XGBoost feature_names", _named(features), booster.num_features(), classes)


def _lightgbm_tail(path: Path, size: int = 1 << 20) -> str:
    """The end of a LightGBM model file, where its ``pandas_categorical:`` line is."""
    with open(path, "rb") as handle:
        handle.seek(0, 2)
        handle.seek(max(0, handle.tell() - size))
        return handle.read().decode("utf-8", errors="replace")


def _lightgbm_facts(path: Path) -> ModelFacts:
    try:
        header = lightgbm_header(path)
        tail = _lightgbm_tail(path)
    except OSError as error:
        raise ModelError(f"{path}: cannot read model ({error.strerror})") from None
    names = header.get("feature_names", "").split()
    infos = header.get("feature_infos", "").split()
    categorical = [not info.startswith("[") and info != "none" for info in infos]
    if len(categorical) != len(names):
        categorical = [False] * len(names)
    pandas_categorical: list[list[Any]] = []
    for line in tail.splitlines():
        if line.startswith("pandas_categorical:"):
            try:
                pandas_categorical = json.loads(line.partition(":")[2]) or []
            except json.JSONDecodeError:
                pandas_categorical = []
    # pandas_categorical lists the categories of the DataFrame's category columns, in column order: the model's
    # categorical features when LightGBM found them itself (the default). Otherwise, the lists cannot be matched.
    matched = pandas_categorical if len(pandas_categorical) == sum(categorical) else []
    lists = iter(matched)
    features = [ModelFeature(n, c, tuple(str(v) for v in next(lists)) if c and matched else None)
                for n, c in zip(names, categorical, strict=True)]
    num_class = int(header.get("num_class", "1") or 1)
    return ModelFacts("LightGBM feature_names", _named(features), len(names) or None, max(2, num_class))


def _skops_facts(path: Path, trusted: Sequence[str]) -> ModelFacts:
    require("skops", path)
    from skops.io import get_untrusted_types, load

    try:
        unlisted = [t for t in get_untrusted_types(file=path) if t not in trusted]
        if unlisted:
            raise ModelError(f"{path}: the skops file holds types skops does not trust by default: "
                             f"{', '.join(unlisted)}; review them and list them in [model] trusted")
        estimator = load(path, trusted=list(trusted))
    except ModelError:
        raise
    except Exception as error:
        raise ModelError(f"{path}: not a loadable skops file ({one_line(error)})") from None
    stored = getattr(estimator, "feature_names_in_", None)
    names = [str(n) for n in stored] if stored is not None else []
    classes = getattr(estimator, "classes_", None)
    labels = tuple(str(c) for c in classes) if classes is not None else None
    width = getattr(estimator, "n_features_in_", None)
    return ModelFacts("scikit-learn feature_names_in_", _named([ModelFeature(n) for n in names]),
                      width if isinstance(width, int) else None, len(labels) if labels else None, labels)


def _onnx_facts(path: Path) -> ModelFacts:
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
    except ImportError:
        return ModelFacts("ONNX metadata")
    except Exception as error:
        raise ModelError(f"{path}: not a loadable ONNX model ({one_line(error)})") from None
    props = {p.key: p.value for p in model.metadata_props}
    text = props.get("feature_names", "").strip()
    names: list[str] = []
    if text.startswith("["):
        try:
            names = [str(n) for n in json.loads(text)]
        except json.JSONDecodeError:
            raise ModelError(f"{path}: ONNX metadata 'feature_names' is not a JSON list") from None
    elif text:
        names = [n.strip() for n in text.split(",")]
    width = None
    inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if len(inputs) == 1:
        dims = inputs[0].type.tensor_type.shape.dim
        width = dims[-1].dim_value or None if dims else None
    return ModelFacts("ONNX metadata feature_names", _named([ModelFeature(n) for n in names]), width)


def read_model_facts(path: Path, model_format: str, trusted: Sequence[str] = ()) -> ModelFacts:
    """What the model file at ``path`` says about its inputs (its own feature names, kinds, categories) and
    classes; TorchScript and torch.export say nothing."""
    if model_format == "xgboost":
        return _xgboost_facts(path)
    if model_format == "lightgbm":
        return _lightgbm_facts(path)
    if model_format == "skops":
        return _skops_facts(path, trusted)
    if model_format == "onnx":
        return _onnx_facts(path)
    return ModelFacts("(none stored)")


# --- the check ----------------------------------------------------------------------------------------------------


def names_mismatch(model: Sequence[str], config: Sequence[str]) -> str | None:
    """The first difference between the model's names and the config's, in words, or None when they agree."""
    for i in range(max(len(model), len(config))):
        if i >= len(config):
            return (f"feature {i + 1} is '{model[i]}' in the model, which takes {len(model)} features, but "
                    f"[[features]] lists only {len(config)}")
        if i >= len(model):
            return (f"feature {i + 1} '{config[i]}' of [[features]] is not a model input (the model takes "
                    f"{len(model)} features)")
        if model[i] != config[i]:
            if config[i] not in model:
                why = f"; the model has no feature '{config[i]}'"
            elif model[i] not in config:
                why = f"; '{model[i]}' is missing from [[features]]"
            else:
                why = ": list [[features]] in the model's order"
            return f"feature {i + 1} is '{model[i]}' in the model but '{config[i]}' in [[features]]{why}"
    return None


def check_feature_names(path: Path, facts: ModelFacts, features: Sequence[FeatureConfig],
                        config_source: Path | str | None = None) -> None:
    """Refuse, in one line naming the first mismatch, a ``[[features]]`` list whose names (order, a missing or an
    extra name) differ from the model's own, a feature the model treats as categorical that the config makes
    numeric, and categories that differ from those the model stores (a category's code is its index)."""
    if facts.features is None:
        return
    where = f"{config_source} [[features]]" if config_source else "[[features]]"
    problem = names_mismatch(facts.names or [], [f.name for f in features])
    if problem is not None:
        raise ModelError(f"{path}: {problem.replace('[[features]]', where, 1)}")
    for number, (ours, theirs) in enumerate(zip(features, facts.features, strict=True), start=1):
        if theirs.categorical and ours.kind != "categorical":
            raise ModelError(f"{path}: feature {number} '{ours.name}' is categorical in the model but kind = "
                             f"'{ours.kind}' in {where}")
        if theirs.categories is None or ours.kind != "categorical":
            continue
        mine = tuple(ours.categories or ())
        if mine != theirs.categories:
            first = next(i for i in range(max(len(mine), len(theirs.categories)))
                         if i >= len(mine) or i >= len(theirs.categories) or mine[i] != theirs.categories[i])
            model_value = repr(theirs.categories[first]) if first < len(theirs.categories) else "(none)"
            config_value = repr(mine[first]) if first < len(mine) else "(none)"
            raise ModelError(f"{path}: feature {number} '{ours.name}': category {first + 1} (code {first}) is "
                             f"{model_value} in the model but {config_value} in {where} categories")
