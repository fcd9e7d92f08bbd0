"""Translation catalogs, reason catalogs, notices and value formatting (no PDF rendering)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from render_support import demo_config

from tasks.errors import ConfigError
from tasks.inputs.config import FeatureConfig
from tasks.report.paths import REASONS_DIR, TEXTS_DIR
from tasks.report.text import (
    clean_text,
    describe_band,
    display_value,
    fidelity_text,
    fill,
    load_notice,
    load_reason_catalog,
    load_texts,
    parse_band,
    placeholders,
    threshold_text,
)


def _keys(table: dict[str, Any], prefix: str = "") -> dict[str, set[str]]:
    """Dotted key -> placeholders used, for every text in a catalog."""
    out: dict[str, set[str]] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_keys(value, name + "."))
        elif isinstance(value, list):
            out[name] = set().union(*(placeholders(v) for v in value)) if value else set()
        elif isinstance(value, str):
            out[name] = placeholders(value)
    return out


def test_translations_have_the_same_keys_and_placeholders() -> None:
    en = _keys(tomllib.loads((TEXTS_DIR / "en.toml").read_text(encoding="utf-8")))
    zh = _keys(tomllib.loads((TEXTS_DIR / "zh-CN.toml").read_text(encoding="utf-8")))
    en.pop("meta.name"), zh.pop("meta.name")
    assert set(en) == set(zh)
    different = {k for k in en if en[k] != zh[k]}
    assert not different


def test_reason_catalogs_match_and_cover_both_directions() -> None:
    en = tomllib.loads((REASONS_DIR / "en.toml").read_text(encoding="utf-8"))["features"]
    zh = tomllib.loads((REASONS_DIR / "zh-CN.toml").read_text(encoding="utf-8"))["features"]
    assert set(en) == set(zh) == {f.name for f in demo_config().features}
    for name in en:
        for direction in ("raises", "lowers"):
            assert "{value}" in en[name][direction] and "{value}" in zh[name][direction]
        assert set(en[name].get("categories", {})) == set(zh[name].get("categories", {}))
        assert {k for k in en[name] if k.endswith("_missing")} == {k for k in zh[name] if k.endswith("_missing")}
    for feature in demo_config().features:
        if feature.kind == "categorical":
            assert set(en[feature.name]["categories"]) == set(feature.categories or [])


def test_fill_is_single_pass_and_strict() -> None:
    assert fill("a {value} b", value="{range}") == "a {range} b"
    assert fill("{value}{value}", value="x") == "xx"
    with pytest.raises(KeyError):
        fill("{missing}", value="x")
    assert fill("not placeholders: {0} {a.b} {Value}", value="x") == "not placeholders: {0} {a.b} {Value}"
    with pytest.raises(KeyError):  # never an attribute lookup
        fill("{__class__}", value="x")


def test_numbers_never_hide_which_side_of_the_threshold_they_are_on() -> None:
    assert fidelity_text(0.2996, 0.3) == "0.2996"
    assert fidelity_text(0.3004, 0.3) == "0.30"
    assert fidelity_text(0.81234, 0.3) == "0.81"
    assert fidelity_text(0.299999999, 0.3) == "0.299999"
    assert threshold_text(0.3) == "0.30" and threshold_text(0.305) == "0.305"


def test_clean_text_removes_control_characters() -> None:
    assert clean_text("a\x00b\x1bc\x7fd\te\nf") == "a\ufffdb\ufffdc\ufffdd\te\nf"
    assert clean_text("x" * 10, limit=5) == "xxxx…"


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("debt_to_income <= 0.12", "0.12 or below"),
        ("debt_to_income > 0.41", "above 0.41"),
        ("0.12 < debt_to_income <= 0.24", "above 0.12 and up to 0.24"),
        ("Debt-to-income ratio > 0.41", "above 0.41"),
        ("debt_to_income >= 1e-3", "0.001 or above"),
    ],
)
def test_bands_in_words(condition: str, expected: str) -> None:
    feature = FeatureConfig(name="debt_to_income", label="Debt-to-income ratio", kind="numeric", decimals=2)
    band = parse_band(condition, (feature.name, feature.label))
    assert band is not None
    assert describe_band(band, feature, load_texts("en")["ranges"]) == expected


def test_money_and_category_values() -> None:
    income = FeatureConfig(name="annual_income", label="Annual income", kind="numeric", unit="GBP", decimals=0)
    assert display_value("41515.4", income, None) == "£41,515"
    assert display_value("-1200", income, None) == "-£1,200"
    band = parse_band("annual_income > 52000.00", ("annual_income",))
    assert band is not None
    assert describe_band(band, income, load_texts("en")["ranges"]) == "above £52,000"
    band = parse_band("annual_income <= 24000.50", ("annual_income",))
    assert band is not None
    assert describe_band(band, income, load_texts("en")["ranges"]) == "£24,000.50 or below"  # no false rounding
    util = FeatureConfig(name="u", label="U", kind="numeric", unit="%", decimals=1)
    assert display_value("85", util, None) == "85.0%"
    assert display_value("n/a", util, None) == "n/a"
    catalog = load_reason_catalog(demo_config("zh-CN"))
    housing = next(f for f in demo_config().features if f.name == "housing")
    assert display_value("rent", housing, catalog.features["housing"]) == "租房"
    assert display_value("boat", housing, catalog.features["housing"]) == "boat"
    assert parse_band("housing=rent", ("debt_to_income",)) is None


def test_catalog_problems_are_one_line_config_errors(tmp_path: Path) -> None:
    cases = {
        "placeholder": '[features.housing]\nraises = "x {lender_name}"\n',
        "key": '[features.housing]\nraise = "typo"\n',
        "table": '[feature.housing]\nraises = "x"\n',
        "class": '[meta]\nexplained_class = "approved"\n',
    }
    for name, body in cases.items():
        path = tmp_path / f"{name}.toml"
        path.write_text(body)
        with pytest.raises(ConfigError) as error:
            load_reason_catalog(demo_config("en", reasons=str(path)))
        assert str(path) in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="not found"):
        load_reason_catalog(demo_config("en", reasons=str(tmp_path / "nope-{language}.toml")))


def test_language_placeholder_in_catalog_path(tmp_path: Path) -> None:
    (tmp_path / "reasons-zh-CN.toml").write_text('[features.housing]\nlabel = "住房"\n', encoding="utf-8")
    catalog = load_reason_catalog(demo_config("zh-CN", reasons=str(tmp_path / "reasons-{language}.toml")))
    assert catalog.features["housing"].label == "住房"


def test_notices_fill_lender_details_for_every_jurisdiction() -> None:
    lender = {"name": "Acme Credit", "address": ["1 Road"], "contact": ["0800 1"], "regulator": ["Agency, DC"]}
    for language in ("en", "zh-CN"):
        for jurisdiction in ("uk", "eu", "us", "cn"):
            notice = load_notice(demo_config(language, jurisdiction=jurisdiction, lender=lender))
            body = " ".join(notice.paragraphs)
            assert notice.heading and "{" not in body
            assert "0800 1" in body or jurisdiction == "us" and "Agency, DC" in body
    texts = load_texts("en")["notices"]
    for jurisdiction, notice in texts.items():  # right to reasons, human review and to contest, everywhere
        body = " ".join(notice["paragraphs"]).lower()
        assert "reason" in body and "staff" in body and "contest" in body, jurisdiction


@pytest.mark.parametrize(
    ("language", "own", "fallback", "not_provided"),
    [
        ("en", "You did not declare your annual income. Without it we could not assess how much you can afford to "
               "repay, which increased the likelihood of a decline.",
         "Your purpose of the loan was not provided; in our model its absence reduced the likelihood of a decline.",
         "not provided"),
        ("zh-CN", "您未申报年收入。缺少这一信息，我们无法评估您能负担的还款额，这提高了申请被拒绝的可能性。",
         "您未提供借款用途；在我们的模型中，该信息的缺失降低了被拒绝的可能性。", "未提供"),
    ],
    ids=["en", "zh-CN"],
)
def test_a_missing_value_is_not_provided_with_its_own_sentence(language, own, fallback, not_provided) -> None:
    """The catalog's raises_missing sentence (annual_income), else the general one (loan_purpose has none);
    "not provided" in the value cell; null in the embedded JSON."""
    from tasks.report.letter import group_rows, report_context, run_texts
    from tasks.report.samples import demo_run, synthetic_inputs

    config = demo_config(language)
    rows, _ = synthetic_inputs(1, config, seed=3)
    for rank, (name, direction) in enumerate([("annual_income", "raises"), ("loan_purpose", "lowers")]):
        feature = next(f for f in config.features if f.name == name)
        rows.loc[rank, ["feature", "label", "condition", "value", "direction"]] = [
            name, feature.label, f"{name} is missing", None, direction]
        rows.loc[rank, "weight"] = abs(rows.loc[rank, "weight"]) * (1 if direction == "raises" else -1)
    (decision_id, records), = group_rows(rows, "customer_id").items()
    context, attachment = report_context(decision_id, records, None, run_texts(config, demo_run(config)))
    factors = context["factors"]
    assert [f["value"] for f in factors[:2]] == [not_provided, not_provided]
    assert [f["sentence"] for f in factors[:2]] == [own, fallback]
    assert [f["value"] for f in attachment["factors"][:2]] == [None, None]
    assert [f["condition"] for f in attachment["factors"][:2]] == ["annual_income is missing",
                                                                    "loan_purpose is missing"]
    assert attachment["factors"][2]["value"] is not None


def test_missing_sentences_cannot_use_the_range(tmp_path: Path) -> None:
    path = tmp_path / "reasons.toml"
    path.write_text('[features.housing]\nraises_missing = "not given, {range}"\n')
    with pytest.raises(ConfigError, match=r"raises_missing: unknown placeholder \{range\} \(known: label, value\)"):
        load_reason_catalog(demo_config("en", reasons=str(path)))
