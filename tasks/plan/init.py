"""``limelight init``: a complete config and a reason-catalog skeleton from a bank's own files.

The features come from the model's own names where its format stores them (tasks/inputs/model_names.py:
XGBoost, LightGBM, scikit-learn through skops, ONNX metadata), in the model's order, else from the reference's
columns (the decisions' id and date columns aside). Kinds come from the model (XGBoost ``'c'``, LightGBM's
categorical features) and the reference's types (text and dictionary columns are categorical); categories from
the model where it stores them, else from the reference: a Parquet dictionary in its own order (pandas
``category`` columns keep their categories, hence the codes a model trained on them saw), text values sorted
(as pandas' ``astype("category")`` orders them), integer codes as ``"0" .. "max"`` (so a category's index is its
code). Labels are the names made readable (``debt_to_income`` -> "Debt to income"), for a person to edit.

The catalog skeleton has one ``[features.<name>]`` entry per feature marked ``todo = true``: a run uses the
generic sentences for it, and ``limelight validate`` lists the entries still to write (tasks/report/text.py).
Nothing is written over an existing file unless ``force``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from tasks.errors import InputError, LimelightError, ModelError
from tasks.inputs.model_formats import PICKLE_REFUSED, infer_format, is_pickle
from tasks.inputs.model_names import ModelFacts, read_model_facts
from tasks.inputs.protected import suggested_basis, suggested_mark
from tasks.inputs.sources import iter_tables, list_source_files, open_parquet, source_schema
from tasks.io import toml_value, write_text_atomic

CONFIG_NAME = "limelight.toml"
#: Integer columns with at most this many distinct values are offered as categorical only when the model says so.
MAX_CODE = 1000
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class FeatureDraft:
    """One ``[[features]]`` entry as init writes it."""

    name: str
    label: str
    kind: str
    categories: tuple[str, ...] | None = None
    decimals: int = 2
    note: str = ""  # a comment for the person who edits it


@dataclass
class InitResult:
    """What init wrote (or would write) and where its features came from."""

    config_path: Path
    catalog_path: Path
    config_text: str
    catalog_text: str
    features: list[FeatureDraft]
    names_from: str
    notes: list[str] = field(default_factory=list)


def humanise(name: str) -> str:
    """``debt_to_income`` -> "Debt to income", ``creditAmount`` -> "Credit amount": a first label to edit."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name)
    words = re.sub(r"[_\-.]+", " ", spaced).split()
    text = " ".join(w if w.isupper() and len(w) > 1 else w.lower() for w in words)
    return text[:1].upper() + text[1:] if text else name


def _key(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else toml_value(name)


def _relative(path: Path, base: Path) -> str:
    """``path`` as the config writes it: relative to the config's folder (configs resolve paths that way)."""
    try:
        return Path(os.path.relpath(path.resolve(), base.resolve())).as_posix()
    except ValueError:  # another drive
        return path.resolve().as_posix()


# --- the reference's columns --------------------------------------------------------------------------------------


@dataclass
class _Column:
    name: str
    type: pa.DataType
    dictionary: list[str] = field(default_factory=list)  # dictionary values, first-seen order
    values: set[str] = field(default_factory=set)  # text values (a text or integer column)
    integral: bool = True  # every value a whole number (numeric columns)
    max_int: int = -1


def _is_text(kind: pa.DataType) -> bool:
    kind = kind.value_type if pa.types.is_dictionary(kind) else kind
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _scan_reference(path: Path, wanted: Sequence[str] | None, skip: list[str]) -> dict[str, _Column]:
    """The reference's columns (``wanted`` only, or all but ``skip`` and the ids, which are added to ``skip``),
    with what init needs to tell kinds and categories."""
    sources = list_source_files(path, "--reference")
    first = sources[0]
    schema = source_schema(first, open_parquet(first.path))
    if wanted is None:
        skip += [n for n in schema.names if re.search(r"(^|_)id$", n, re.IGNORECASE) and n not in skip]
    names = [n for n in schema.names if (n in wanted if wanted is not None else n not in skip)]
    columns = {n: _Column(n, schema.field(n).type) for n in names}
    for source in sources:
        for _, table in iter_tables(source, names):
            for name in names:
                _observe(columns[name], table.column(name))
    return columns


def _observe(column: _Column, data: pa.ChunkedArray) -> None:
    for chunk in data.chunks:
        if pa.types.is_dictionary(chunk.type):
            for value in chunk.dictionary.to_pylist():
                if value is not None and str(value) not in column.dictionary:
                    column.dictionary.append(str(value))
            chunk = chunk.cast(chunk.type.value_type)
        if _is_text(chunk.type):
            column.values.update(str(v) for v in pc.unique(chunk.drop_null()).to_pylist())
        elif pa.types.is_decimal(chunk.type):
            column.integral = False
        elif pa.types.is_integer(chunk.type) or pa.types.is_floating(chunk.type):
            values = pc.drop_null(chunk)
            if pa.types.is_floating(chunk.type):
                values = pc.filter(values, pc.is_finite(values))
                whole = len(values) == 0 or bool(pc.all(pc.equal(pc.floor(values), values)).as_py())
                column.integral = column.integral and whole
            if len(values) and column.integral:
                low, high = pc.min_max(values).values()
                if low.as_py() >= 0:
                    column.max_int = max(column.max_int, int(high.as_py()))
                else:
                    column.integral = False


def _categories(column: _Column) -> tuple[str, ...] | None:
    """A categorical column's categories in code order (None: too many or not codes)."""
    if column.dictionary:
        return tuple(column.dictionary)
    if _is_text(column.type):
        return tuple(sorted(column.values))
    if column.integral and 0 <= column.max_int < MAX_CODE:
        return tuple(str(i) for i in range(column.max_int + 1))
    return None


# --- features -----------------------------------------------------------------------------------------------------


def draft_features(facts: ModelFacts, columns: dict[str, _Column], reference: Path,
                   skip: Sequence[str] = ()) -> list[FeatureDraft]:
    """``[[features]]`` in the model's order (its own names) or the reference's (the columns not in ``skip``)."""
    if facts.features is not None:
        missing = [f.name for f in facts.features if f.name not in columns]
        if missing:
            raise InputError(f"{reference}: model feature '{missing[0]}' ({facts.where}) is not a column of the "
                             f"reference (columns: {', '.join(columns)})")
        wanted = [(f.name, f.categorical, f.categories) for f in facts.features]
    else:
        wanted = [(n, None, None) for n in columns if n not in skip]
        if facts.width is not None and facts.width != len(wanted):
            raise InputError(f"{reference}: the model takes {facts.width} features and stores no names; the "
                             f"reference has {len(wanted)} columns besides {', '.join(skip) or 'none'} "
                             f"({', '.join(n for n, _, _ in wanted)}): keep only the model's inputs, in its order")
    return [_draft(columns[name], categorical, categories) for name, categorical, categories in wanted]


def _draft(column: _Column, model_categorical: bool | None, model_categories: tuple[str, ...] | None
           ) -> FeatureDraft:
    label = humanise(column.name)
    text = _is_text(column.type) or bool(column.dictionary)
    if model_categorical or text:
        categories = model_categories or _categories(column)
        if categories is None:
            raise InputError(f"column '{column.name}': categorical in the model, but its reference values are not "
                             f"category codes 0..{MAX_CODE - 1} or texts")
        where = "the model" if model_categories else "the reference"
        note = f"categories from {where}; the model receives each one's index"
        if model_categorical is False and text:
            note = "text in the reference but numeric in the model: the model receives each category's index"
        return FeatureDraft(column.name, label, "categorical", categories, note=note)
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type) or pa.types.is_decimal(column.type)):
        raise InputError(f"column '{column.name}' has type {column.type}: a feature must be a number or a category")
    return FeatureDraft(column.name, label, "numeric", decimals=0 if column.integral else 2)


# --- the decisions ------------------------------------------------------------------------------------------------


def _decision_columns(path: Path) -> tuple[list[str], pa.Schema]:
    sources = list_source_files(path, "--decisions")
    schema = source_schema(sources[0], open_parquet(sources[0].path))
    return schema.names, schema


def pick_id_column(path: Path, schema: pa.Schema, features: Sequence[str], given: str | None) -> str:
    """``--id-column``, else the decisions' one column that looks like an id (``id``, ``*_id``, ``*id``)."""
    if given is not None:
        if given not in schema.names:
            raise InputError(f"{path}: --id-column '{given}' not found (columns: {', '.join(schema.names)})")
        return given
    candidates = [n for n in schema.names if n not in features and re.search(r"(^|_|\b)id$", n, re.IGNORECASE)]
    if len(candidates) != 1:
        others = [n for n in schema.names if n not in features]
        raise InputError(f"{path}: cannot tell the id column; give --id-column (columns besides the features: "
                         f"{', '.join(others) or 'none'})")
    return candidates[0]


def _date_column(schema: pa.Schema, features: Sequence[str]) -> str | None:
    dates = [f.name for f in schema if f.name not in features
             and (pa.types.is_date(f.type) or pa.types.is_timestamp(f.type))]
    return dates[0] if len(dates) == 1 else None


# --- the files ----------------------------------------------------------------------------------------------------


def _classes(facts: ModelFacts, classes: Sequence[str] | None, explain: str | None) -> tuple[list[str], str]:
    if classes:
        names = list(classes)
        if facts.num_classes is not None and len(names) != facts.num_classes:
            raise LimelightError(f"--classes: {len(names)} given, the model has {facts.num_classes} classes")
    elif facts.classes:
        names = list(facts.classes)
    elif facts.num_classes in (None, 2):
        names = ["approved", "declined"]
    else:
        names = [f"class_{i}" for i in range(facts.num_classes or 0)]
    chosen = explain or names[-1]
    if chosen not in names:
        raise LimelightError(f"--explain '{chosen}' is not one of the classes ({', '.join(names)})")
    return names, chosen


def config_text(*, folder: Path, model: Path, model_format: str, reference: Path, decisions: Path, id_column: str,
                date_column: str | None, classes: list[str], explain: str, features: list[FeatureDraft],
                names_from: str, catalog: Path, trusted: list[str] | None = None) -> str:
    """The config TOML, laid out as config/demo.toml, with comments for the person who completes it."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    lines = [
        f"# Written by `limelight init` on {stamp}: {model.name} ({model_format}), features from {names_from}.",
        "# Relative paths resolve against this folder. Check the classes, the lender and the labels; then",
        "# `limelight validate` this file. [[features]] is in the model's column order: keep it so.",
        "",
        "[data]",
        f"decisions = {toml_value(_relative(decisions, folder))}",
        f"reference = {toml_value(_relative(reference, folder))}",
        f"id_column = {toml_value(id_column)}",
        "",
        "[model]",
        f"path = {toml_value(_relative(model, folder))}",
        f"format = {toml_value(model_format)}",
        *([f"trusted = {toml_value(trusted)}   # skops types you reviewed (limelight init --trusted)"]
          if trusted else []),
        f"classes = {toml_value(classes)}   # in the order of the model's outputs: check the names",
        f"explain = {toml_value(explain)}   # the class whose probability is explained (an adverse decision's)",
        'output = "probabilities"',
        "",
        "[explain]",
        'engine = "batched"',
        "num_samples = 5000",
        "top_k = 3",
        "seed = 20261122",
        'compile = "never"   # "auto": torch.compile, for large runs (its first use costs ~20 s per worker)',
        "",
        "[review]",
        "min_fidelity = 0.3",
        "",
        "[run]",
        'devices = "auto"',
        "shard_size = 256",
        "torch_threads = 1",
        "",
        "[report]",
        'language = "en"',
        'jurisdiction = "uk"      # which rights notice: uk, eu, us, cn (config/texts)',
        "applicant_fields = []    # decision columns shown in the letter's header, e.g. [\"full_name\"]",
    ]
    if date_column:
        lines.append(f"date_column = {toml_value(date_column)}")
    lines += [
        "decision_threshold = 0.5 # the explained class's probability at which it is decided: your cut-off",
        f"reasons = {toml_value(_relative(catalog, folder))}",
        "",
        "[report.lender]          # TODO: your name, address and contact as customers read them",
        'name = "Example Bank plc"',
        'address = ["1 Example Street", "London EC1A 1AA"]',
        'contact = ["Telephone 0800 000 0000", "credit.review@example.co.uk"]',
        "",
        "# One entry per model input, in the model's column order. Edit labels, units (unit = \"GBP\") and decimals.",
    ]
    for feature in features:
        lines += ["", "[[features]]"]
        if feature.note:
            lines.append(f"# {feature.note}")
        lines += [f"name = {toml_value(feature.name)}", f"label = {toml_value(feature.label)}",
                  f"kind = {toml_value(feature.kind)}"]
        if feature.categories is not None:
            lines.append(f"categories = {toml_value(list(feature.categories))}")
        else:
            lines.append(f"decimals = {feature.decimals}")
        lines += protected_lines(feature)
    return "\n".join(lines) + "\n"


def protected_lines(feature: FeatureDraft) -> list[str]:
    """A feature whose name or label suggests a prohibited basis is written marked (a false mark sends letters to
    review; a missing one lets a letter state a prohibited basis), with a comment saying how to undo it."""
    basis = suggested_basis(feature.name, feature.label)
    if basis is None:
        return []
    mark = suggested_mark(basis) if feature.kind == "numeric" else "protected = true"
    return [f"{mark}   # the name suggests a prohibited basis ({basis}): never stated as a reason; "
            "protected = false if it is not one"]


def protected_notes(features: Sequence[FeatureDraft], config_path: Path) -> list[str]:
    """One line per feature init marked protected, for the person who runs it."""
    return [f"{config_path}: feature '{f.name}' marked {line.split('   #')[0]}: its name suggests a prohibited "
            f"basis ({suggested_basis(f.name, f.label)}); check it" for f in features for line in protected_lines(f)]


def catalog_text(features: list[FeatureDraft], explain: str, language: str = "en") -> str:
    """The reason catalog skeleton: one ``todo = true`` entry per feature, laid out as config/reasons/en.toml."""
    lines = [
        "# Reason catalog skeleton written by `limelight init`: one entry per feature, each marked todo = true.",
        "# For each: write the two sentences (what the customer's value was and why it mattered), then delete its",
        "# `todo = true` line. Until then a run uses generic sentences for it, and `limelight validate` lists it.",
        "# Placeholders: {value} the customer's value, {range} the band LIME compared it with, {label}.",
        "# Have your compliance team approve the wording before use. Keys: see config/reasons/en.toml.",
        "",
        "[meta]",
        f"language = {toml_value(language)}",
        f"explained_class = {toml_value(explain)}",
    ]
    for feature in features:
        lines += ["", f"[features.{_key(feature.name)}]", "todo = true", f"label = {toml_value(feature.label)}"]
        if feature.kind == "numeric":
            lines += [f"# raises = \"Your {feature.label.lower()} ({{value}}) is {{range}}. ...\"",
                      f"# lowers = \"Your {feature.label.lower()} ({{value}}) is {{range}}. ...\""]
        else:
            lines += [f"# raises = \"Your {feature.label.lower()} is {{value}}. ...\"",
                      f"# lowers = \"Your {feature.label.lower()} is {{value}}. ...\"",
                      f"[features.{_key(feature.name)}.categories]   # how each value reads in a letter"]
            lines += [f"{toml_value(c)} = {toml_value(c.replace('_', ' '))}" for c in feature.categories or ()]
    return "\n".join(lines) + "\n"


def plan_init(*, reference: Path, model: Path, out: Path, decisions: Path | None = None, id_column: str | None = None,
              classes: Sequence[str] | None = None, explain: str | None = None,
              trusted: Sequence[str] = ()) -> InitResult:
    """Read the model's metadata and the reference (and the decisions' columns), and build the config and the
    catalog skeleton; nothing is written (:func:`write_init`)."""
    if not model.is_file():
        raise LimelightError(f"{model}: model file not found")
    if is_pickle(model):
        raise LimelightError(f"{model}: {PICKLE_REFUSED}")
    model_format = infer_format(model)
    try:
        facts = read_model_facts(model, model_format, trusted)
    except ModelError as error:
        if "skops does not trust" not in str(error):
            raise
        raise ModelError(f"{error} (limelight init: --trusted A,B after your review)") from None
    decisions = decisions or reference
    names, schema = _decision_columns(decisions)
    model_names = facts.names or []
    id_name = pick_id_column(decisions, schema, model_names, id_column) if decisions != reference or id_column \
        else None
    date_name = _date_column(schema, model_names) if decisions != reference else None
    skip = [n for n in (id_name, date_name) if n]
    columns = _scan_reference(reference, facts.names, skip)
    features = draft_features(facts, columns, reference, skip)
    absent = [f.name for f in features if f.name not in names]
    if absent:
        raise InputError(f"{decisions}: feature column '{absent[0]}' not found (columns: {', '.join(names)})")
    class_names, explained = _classes(facts, classes, explain)
    out = out.resolve()
    config_path, catalog_path = out / CONFIG_NAME, out / "reasons" / "en.toml"
    notes = []
    if id_name is None:
        id_name = "customer_id"
        notes.append(f"no --decisions given: [data] decisions is the reference; set it and id_column "
                     f"(now '{id_name}') in {config_path}")
    notes += protected_notes(features, config_path)
    text = config_text(folder=out, model=model, model_format=model_format, reference=reference, decisions=decisions,
                       id_column=id_name, date_column=date_name, classes=class_names, explain=explained,
                       features=features, names_from=facts.where if facts.features else "the reference's columns",
                       catalog=catalog_path, trusted=list(trusted))
    return InitResult(config_path, catalog_path, text, catalog_text(features, explained), features,
                      facts.where if facts.features else "the reference's columns", notes)


def write_init(result: InitResult, force: bool = False) -> None:
    """Write the config and the catalog skeleton; an existing file is refused in one line unless ``force``."""
    if not force:
        for path in (result.config_path, result.catalog_path):
            if path.exists():
                raise LimelightError(f"{path}: already exists; use --force to overwrite it")
    result.catalog_path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(result.catalog_path, result.catalog_text)
    write_text_atomic(result.config_path, result.config_text)
