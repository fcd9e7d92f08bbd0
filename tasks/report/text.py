"""Texts of the reports: translation catalogs, rights notices, the reason catalog, value formatting.

Catalog texts are config; values are data. Placeholders such as ``{value}`` are filled by :func:`fill`, a
single-pass substitution of known names (never ``str.format``: a catalog text cannot reach attributes, and
a value that itself contains ``{range}`` is inserted literally). Everything returned here is plain text;
the templates autoescape it.
"""

from __future__ import annotations

import math
import re
import tomllib
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path
from typing import Any

from tasks.errors import ConfigError
from tasks.inputs.config import MATCHED_METHODS, Config, FeatureConfig
from tasks.report.paths import REASONS_DIR, TEMPLATES_DIR, TEXTS_DIR
from tasks.run.info import RunInfo

PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
REASON_PLACEHOLDERS = frozenset({"value", "range", "label"})
NOTICE_PLACEHOLDERS = frozenset({"lender_name", "lender_address", "lender_contact", "regulator"})
# C0/C1 controls (except tab/newline), lone surrogates and non-characters break XML (XMP) and layout.
_UNSAFE_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
CURRENCY_SYMBOLS = {"GBP": "£", "USD": "$", "EUR": "€", "CNY": "¥", "JPY": "¥"}


def clean_text(value: object, limit: int | None = None) -> str:
    """Untrusted text made safe to lay out: no control characters, no lone surrogates, at most ``limit``."""
    text = _UNSAFE_CHARS.sub("\ufffd", str(value))
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def placeholders(template: str) -> set[str]:
    return set(PLACEHOLDER.findall(template))


def fill(template: str, **values: object) -> str:
    """Replace ``{name}`` by ``values[name]`` in one pass; a placeholder without a value is an error."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise KeyError(f"no value for placeholder {{{name}}} in {template[:80]!r}")
        return str(values[name])

    return PLACEHOLDER.sub(replace, template)


def _read_toml(path: Path, what: str) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"{path}: cannot read {what} ({error})") from None


def _source(configured: str | None, bundled_dir: Path, language: str) -> Path:
    """The configured file (``{language}`` filled in), else the bundled one for the language."""
    if configured:
        return Path(configured.replace("{language}", language))
    return bundled_dir / f"{language}.toml"


def report_sources(config: Config) -> dict[str, str]:
    """SHA-256 of what decides a report's bytes besides the run's data: the templates (their sample images
    aside), the fixed texts of the language, the rights notice and the reason catalog. The manifest records
    them, so a re-render can tell a changed template or text from a changed input."""
    import hashlib

    from tasks.io import file_sha256

    digest = hashlib.sha256()
    for file in sorted(p for p in TEMPLATES_DIR.rglob("*") if p.is_file() and "sample" not in p.parts):
        digest.update(f"{file.relative_to(TEMPLATES_DIR).as_posix()}\0{file_sha256(file)}\n".encode())
    return {
        "templates": digest.hexdigest(),
        "texts": file_sha256(TEXTS_DIR / f"{config.report.language}.toml"),
        "notices": file_sha256(notice_source(config)),
        "reasons": file_sha256(reasons_source(config)),
    }


# ---------------------------------------------------------------------------------------------- texts


@lru_cache(maxsize=8)
def load_texts(language: str) -> dict[str, Any]:
    """The fixed texts of one language (config/texts/<language>.toml), as nested dicts."""
    path = TEXTS_DIR / f"{language}.toml"
    return _read_toml(path, "translation catalog")


@dataclass(frozen=True)
class Notice:
    heading: str
    paragraphs: tuple[str, ...]


def notice_source(config: Config) -> Path:
    return _source(config.report.notices, TEXTS_DIR, config.report.language)


@lru_cache(maxsize=16)
def _load_notices(path: Path, bundled: bool) -> dict[str, Any]:
    raw = _read_toml(path, "notice catalog")
    return raw.get("notices", {}) if bundled else raw


def load_notice(config: Config) -> Notice:
    """The rights notice of ``[report] jurisdiction``, its placeholders filled from ``[report.lender]``."""
    report = config.report
    path = notice_source(config)
    notices = _load_notices(path, report.notices is None)
    entry = notices.get(report.jurisdiction)
    where = f"{path}: [notices.{report.jurisdiction}]" if report.notices is None else f"{path}: [{report.jurisdiction}]"
    if not isinstance(entry, dict):
        known = ", ".join(sorted(k for k, v in notices.items() if isinstance(v, dict))) or "none"
        raise ConfigError(f"{where}: no notice for jurisdiction {report.jurisdiction!r} (known: {known})")
    heading, paragraphs = entry.get("heading"), entry.get("paragraphs")
    if not isinstance(heading, str) or not isinstance(paragraphs, list) or not paragraphs:
        raise ConfigError(f"{where}: needs 'heading' (text) and 'paragraphs' (a non-empty list of texts)")
    if not all(isinstance(p, str) for p in paragraphs):
        raise ConfigError(f"{where}: 'paragraphs' must all be texts")
    lender = report.lender
    values = {
        "lender_name": lender.name,
        "lender_address": ", ".join(lender.address),
        "lender_contact": ", ".join(lender.contact),
        "regulator": ", ".join(lender.regulator),
    }
    for text in [heading, *paragraphs]:
        unknown = placeholders(text) - NOTICE_PLACEHOLDERS
        if unknown:
            raise ConfigError(f"{where}: unknown placeholder {{{sorted(unknown)[0]}}} (known: "
                              f"{', '.join(sorted(NOTICE_PLACEHOLDERS))})")
        for name in placeholders(text):
            if not values[name]:
                key = {"lender_contact": "contact", "lender_address": "address"}.get(name, name)
                raise ConfigError(f"{where}: uses {{{name}}} but [report.lender] {key} is empty")
    return Notice(
        heading=clean_text(fill(heading, **values)),
        paragraphs=tuple(clean_text(fill(p, **values)) for p in paragraphs),
    )


# ---------------------------------------------------------------------------------------------- reasons


@dataclass(frozen=True)
class ReasonEntry:
    label: str | None = None
    raises: str | None = None
    lowers: str | None = None
    categories: Mapping[str, str] = field(default_factory=dict)
    raises_missing: str | None = None  # the sentences for a value the customer did not provide
    lowers_missing: str | None = None
    todo: bool = False  # `todo = true`: still to write (limelight init's skeleton); validate lists it


#: Reason catalog sentence keys -> the placeholders they may use (a missing value has no band: no {range}).
SENTENCE_KEYS = {"label": frozenset(), "raises": REASON_PLACEHOLDERS, "lowers": REASON_PLACEHOLDERS,
                 "raises_missing": frozenset({"value", "label"}), "lowers_missing": frozenset({"value", "label"})}


@dataclass(frozen=True)
class ReasonCatalog:
    path: Path
    explained_class: str | None
    features: Mapping[str, ReasonEntry]


def reasons_source(config: Config) -> Path:
    return _source(config.report.reasons, REASONS_DIR, config.report.language)


@lru_cache(maxsize=16)
def _load_catalog(path: Path) -> ReasonCatalog:
    raw = _read_toml(path, "reason catalog")
    unknown_top = set(raw) - {"meta", "features"}
    if unknown_top:
        raise ConfigError(f"{path}: unknown table [{sorted(unknown_top)[0]}] (expected [meta] and [features.*])")
    meta = raw.get("meta", {})
    features: dict[str, ReasonEntry] = {}
    for name, entry in raw.get("features", {}).items():
        where = f"{path}: [features.{name}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: must be a table")
        unknown = set(entry) - set(SENTENCE_KEYS) - {"categories", "todo"}
        if unknown:
            raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r} "
                              f"(known: {', '.join(SENTENCE_KEYS)}, categories, todo)")
        if not isinstance(entry.get("todo", False), bool):
            raise ConfigError(f"{where} todo: must be true or false")
        for key, allowed in SENTENCE_KEYS.items():
            text = entry.get(key)
            if text is None:
                continue
            if not isinstance(text, str) or not text.strip():
                raise ConfigError(f"{where} {key}: must be a non-empty text")
            bad = placeholders(text) - allowed
            if bad:
                raise ConfigError(f"{where} {key}: unknown placeholder {{{sorted(bad)[0]}}} "
                                  f"(known: {', '.join(sorted(allowed)) or 'none'})")
        categories = entry.get("categories", {})
        if not isinstance(categories, dict) or not all(isinstance(v, str) for v in categories.values()):
            raise ConfigError(f"{where}.categories: must map category values to display texts")
        features[name] = ReasonEntry(entry.get("label"), entry.get("raises"), entry.get("lowers"), categories,
                                     entry.get("raises_missing"), entry.get("lowers_missing"),
                                     entry.get("todo", False))
    return ReasonCatalog(path=path, explained_class=meta.get("explained_class"), features=features)


def load_reason_catalog(config: Config) -> ReasonCatalog:
    catalog = _load_catalog(reasons_source(config))
    if catalog.explained_class is not None and catalog.explained_class != config.model.explain:
        raise ConfigError(
            f"{catalog.path}: [meta] explained_class = {catalog.explained_class!r} but [model] explain = "
            f"{config.model.explain!r}: the sentences would state the opposite direction"
        )
    return catalog


def missing_catalog_entries(config: Config) -> list[str]:
    """One line per gap in the reason catalog for the configured features (for ``limelight validate``).

    A feature (or direction, or category) listed here still gets a specific sentence built from its label,
    the band LIME compared and the customer's value, but not the catalog's plain-language wording.
    """
    catalog = load_reason_catalog(config)
    problems: list[str] = []
    todo = [f.name for f in config.features if (e := catalog.features.get(f.name)) is not None and e.todo]
    if todo:
        problems.append(f"{catalog.path}: {len(todo)} entr{'ies' if len(todo) > 1 else 'y'} still to write "
                        f"(todo = true; generic sentences until then): {', '.join(todo)}")
    for feature in config.features:
        entry = catalog.features.get(feature.name)
        if entry is None:
            problems.append(f"{catalog.path}: no [features.{feature.name}] entry (a generic sentence is used)")
            continue
        if entry.todo:
            continue
        for direction in ("raises", "lowers"):
            if getattr(entry, direction) is None:
                problems.append(f"{catalog.path}: [features.{feature.name}] has no '{direction}' sentence")
        if entry.label is None and config.report.language != "en":
            problems.append(f"{catalog.path}: [features.{feature.name}] has no 'label' (the config's is used)")
        if feature.kind == "categorical":
            missing = [c for c in feature.categories or [] if c not in entry.categories]
            if missing and config.report.language != "en":
                problems.append(f"{catalog.path}: [features.{feature.name}.categories] lacks {', '.join(missing)}")
    return problems


# ---------------------------------------------------------------------------------------------- values

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_OPS = r"<=|>=|<|>|≤|≥"


@dataclass(frozen=True)
class Band:
    """A LIME condition on a numeric feature, e.g. ``0.20 < x <= 0.41``."""

    low: float | None
    low_inclusive: bool
    high: float | None
    high_inclusive: bool
    low_text: str = ""
    high_text: str = ""


def _decimals_of(text: str) -> int:
    """Decimal places a number was written with ('0.405' -> 3, '1e-3' -> 3, '52000' -> 0)."""
    try:
        exponent = Decimal(text).as_tuple().exponent
    except InvalidOperation:
        return 0
    return max(0, -exponent) if isinstance(exponent, int) else 0


def parse_band(condition: str, names: tuple[str, ...]) -> Band | None:
    """Parse lime's ``name <= a``, ``a < name <= b`` and ``name > b`` (with the feature's name or label)."""
    alternatives = "|".join(re.escape(n) for n in names if n)
    if not alternatives:
        return None
    two = re.fullmatch(rf"\s*({_NUMBER})\s*({_OPS})\s*(?:{alternatives})\s*({_OPS})\s*({_NUMBER})\s*", condition)
    if two:
        low, op1, op2, high = two.groups()
        if op1 in ("<", "<=", "≤") and op2 in ("<", "<=", "≤"):
            return Band(float(low), op1 != "<", float(high), op2 != "<", low, high)
        return None
    one = re.fullmatch(rf"\s*(?:{alternatives})\s*({_OPS})\s*({_NUMBER})\s*", condition)
    if one:
        op, bound = one.groups()
        if op in (">", ">=", "≥"):
            return Band(float(bound), op != ">", None, False, bound, "")
        return Band(None, False, float(bound), op != "<", "", bound)
    return None


def threshold_text(value: float) -> str:
    """A configured threshold with 2 decimals, or as many as it really has (0.305 stays 0.305)."""
    for decimals in range(2, 7):
        text = f"{value:.{decimals}f}"
        if float(text) == value:
            return text
    return f"{value:.6f}"


def fidelity_text(fidelity: float, minimum: float) -> str:
    """Fidelity with 2 decimals, or more when 2 would hide which side of the review threshold it is on
    (0.2996 is shown as 0.2996, not as 0.30, next to "below our minimum of 0.30")."""
    for decimals in range(2, 7):
        text = f"{fidelity:.{decimals}f}"
        if (float(text) < minimum) == (fidelity < minimum):
            return text
    return f"{math.floor(fidelity * 1e6) / 1e6:.6f}"  # just below the threshold: round down, never up


def format_number(value: float, decimals: int) -> str:
    if not math.isfinite(value):
        return str(value)
    text = f"{value:,.{decimals}f}"
    return "0" if decimals == 0 and text in ("-0",) else text


def with_unit(number: str, unit: str | None) -> str:
    if not unit:
        return number
    symbol = CURRENCY_SYMBOLS.get(unit.upper())
    if symbol:
        return f"-{symbol}{number[1:]}" if number.startswith("-") else f"{symbol}{number}"
    if unit == "%":
        return f"{number}%"
    return f"{number} {unit}"


def _bound_text(bound: float, source: str, feature: FeatureConfig) -> str:
    """A band limit with the feature's decimals, or the condition's own if rounding would change it."""
    text = format_number(bound, feature.decimals)
    if float(text.replace(",", "")) != bound:
        text = format_number(bound, max(feature.decimals, _decimals_of(source)))
    return with_unit(text, feature.unit)


def display_value(raw: object, feature: FeatureConfig, entry: ReasonEntry | None) -> str:
    """The customer's value as shown: thousands separators, unit, translated category."""
    text = clean_text(raw, limit=200)
    if feature.kind == "categorical":
        if entry is not None and text in entry.categories:
            return clean_text(entry.categories[text], limit=200)
        return text
    try:
        number = float(text.replace(",", ""))
    except ValueError:
        return text
    if not math.isfinite(number):
        return text
    decimals = max(feature.decimals, 0)
    return with_unit(format_number(number, decimals), feature.unit)


def describe_band(band: Band, feature: FeatureConfig, ranges: Mapping[str, str]) -> str:
    """'above £52,000', '0.20 or below', 'above 0.20 and up to 0.41' (texts from the catalog)."""
    low = _bound_text(band.low, band.low_text, feature) if band.low is not None else None
    high = _bound_text(band.high, band.high_text, feature) if band.high is not None else None
    if low is not None and high is not None:
        key = ("ge" if band.low_inclusive else "gt") + "_" + ("le" if band.high_inclusive else "lt")
        return fill(ranges[key], low=low, high=high)
    if low is not None:
        return fill(ranges["ge" if band.low_inclusive else "gt"], low=low)
    assert high is not None
    return fill(ranges["le" if band.high_inclusive else "lt"], high=high)


def strip_accents_ascii(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")


def w3c_utc(timestamp: str) -> tuple[str, datetime]:
    """``RunInfo.generated_at`` as a W3C UTC date string and a naive UTC datetime (for attachments)."""
    try:
        moment = datetime.fromisoformat(timestamp)
    except ValueError:
        raise ValueError(f"generated_at {timestamp!r} is not an ISO 8601 timestamp") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC).replace(microsecond=0)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ"), moment.replace(tzinfo=None)


def versions_line(run: RunInfo) -> str:
    """The package versions of a run in one line (``limelight 0.1.0 · torch 2.5.1 · ...``), for letters and summary."""
    return " · ".join(f"{clean_text(k, limit=60)} {clean_text(v, limit=120)}" for k, v in sorted(run.versions.items()))


def audit_rows(run: RunInfo, tc: Mapping[str, str]) -> list[dict[str, str]]:
    """The run's audit record as (label, value) rows, for the customer annex and the run summary. The
    kernel-matched and per-bin methods choose the width per decision (the grid is in the quality settings' rows)
    and fit every feature, so lime's single width and feature selection are shown for lime's method only."""
    matched = run.method in MATCHED_METHODS
    method_key = {"kernel-matched": "method_value_matched", "per-bin": "method_value_perbin"}.get(run.method,
                                                                                                 "method_value")
    lime_rows = [] if matched else [
        {"label": tc["kernel_width"], "value": f"{run.kernel_width:.6g}", "css": ""},
        {"label": tc["feature_selection"], "value": clean_text(run.feature_selection, limit=60), "css": ""},
    ]
    return [
        {"label": tc["run_id"], "value": clean_text(run.run_id, limit=200), "css": "code"},
        {"label": tc["generated_at"], "value": w3c_utc(run.generated_at)[0], "css": ""},
        {"label": tc["model_sha256"], "value": clean_text(run.model_sha256, limit=128), "css": "code"},
        {"label": tc["config_sha256"], "value": clean_text(run.config_sha256, limit=128), "css": "code"},
        {"label": tc["decisions_sha256"], "value": clean_text(run.decisions_sha256, limit=128), "css": "code"},
        {"label": tc["reference_sha256"], "value": clean_text(run.reference_sha256, limit=128), "css": "code"},
        {"label": tc["method"], "value": fill(tc[method_key], engine=clean_text(run.engine, limit=40)), "css": ""},
        {"label": tc["num_samples"], "value": f"{run.num_samples:,}", "css": ""},
        *lime_rows,
        {"label": tc["seed"], "value": str(run.seed), "css": ""},
        {"label": tc["top_k"], "value": str(run.top_k), "css": ""},
        {"label": tc["explained_class"], "value": clean_text(run.explained_class, limit=80), "css": ""},
        {"label": tc["min_fidelity"], "value": threshold_text(run.min_fidelity), "css": ""},
    ]
