"""Customer reports: content per customer, archival PDF/A-3, attachment, determinism, isolation, errors."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pandas as pd
import pikepdf
import pytest
from render_support import (
    decoded_pdf,
    demo_config,
    demo_run,
    embedded_files,
    flat,
    has_sentence,
    outline,
    pdf_text,
    structure_problems,
    synthetic_inputs,
)

from tasks.errors import ConfigError, InputError
from tasks.report.render import (
    RenderedReport,
    customer_documents,
    missing_catalog_entries,
    render_customer_reports,
    report_filename,
)
from tasks.report.text import fidelity_text

N = 6


@pytest.fixture(scope="module")
def english(tmp_path_factory: pytest.TempPathFactory):
    config = demo_config("en", decision_column=None)
    run = demo_run(config)
    rows, applicants = synthetic_inputs(N, config, seed=3, review_share=0.4)
    applicants["full_name"] = [f"Applicant{i} Uniquename{i}" for i in range(N)]
    # Make sure both statuses occur, whatever the seed drew.
    first, second = rows["customer_id"].unique()[:2]
    rows.loc[rows["customer_id"] == first, ["fidelity", "needs_review"]] = [0.12, True]
    rows.loc[rows["customer_id"] == second, ["fidelity", "needs_review"]] = [0.81, False]
    out = tmp_path_factory.mktemp("reports-en")
    reports = render_customer_reports(rows, applicants, config, run, out)
    return config, run, rows, applicants, reports


def _rows_of(rows: pd.DataFrame, decision_id: str) -> pd.DataFrame:
    return rows[rows["customer_id"] == decision_id].sort_values("rank")


def test_one_report_per_decision_in_input_order(english) -> None:
    _, _, rows, _, reports = english
    assert [r.decision_id for r in reports] == list(rows["customer_id"].unique())
    for report in reports:
        assert isinstance(report, RenderedReport)
        assert report.path.name == report_filename(report.decision_id)
        assert report.sha256 == hashlib.sha256(report.path.read_bytes()).hexdigest()
        assert report.needs_review == bool(_rows_of(rows, report.decision_id)["needs_review"].iloc[0])


def test_text_holds_the_right_reasons_values_and_status(english) -> None:
    config, _, rows, applicants, reports = english
    for report in reports:
        text = flat(pdf_text(report.path))
        mine = _rows_of(rows, report.decision_id)
        person = applicants[applicants["customer_id"] == report.decision_id].iloc[0]
        assert report.decision_id in text
        assert person["full_name"] in text
        assert person["decision_date"].strftime("%Y-%m-%d") in text
        assert f"{mine['model_pred'].iloc[0] * 100:.1f}%" in text
        assert f"Local fidelity (R²): {fidelity_text(mine['fidelity'].iloc[0], 0.3)}." in text
        attached = json.loads(embedded_files(report.path)["explanation.json"])
        assert attached["decision_id"] == report.decision_id
        assert [f["feature"] for f in attached["factors"]] == list(mine["feature"])
        for factor, (_, row) in zip(attached["factors"], mine.iterrows(), strict=True):
            assert has_sentence(text, factor["reason"])  # the catalog sentence, as printed
            assert factor["condition"] == row["condition"]
            assert factor["weight"] == pytest.approx(row["weight"])
            assert f"{row['weight']:+.6f}" in text  # the annex prints the exact weight
            assert f"{row['share']:.0f}%" in text
            effect = "Increased the likelihood of a decline" if row["weight"] > 0 else "Reduced the likelihood"
            assert effect in text
        first_page = flat(pdf_text(report.path, 1, 1))
        if report.needs_review:
            assert "Requires human review" in first_page
            assert "A member of staff will review your application" in first_page
        else:
            assert "Requires human review" not in first_page
            assert "Checked" in first_page
        assert "{" not in text and "}" not in text  # no placeholder left unfilled
        assert re.search(r"Page 1 of [12]", text)
        assert "Your rights" in text and "contest the decision" in text  # uk notice
        assert "Audit annex" in text and "20261122T093000Z-3f9c2a1b" in text
        assert hashlib.sha256(b"model").hexdigest() in text  # model SHA-256 from RunInfo
        assert "2026-11-22T09:30:00Z" in text and "20261122" in text  # generated at, seed


def test_sentences_use_the_catalog_and_plain_values(english) -> None:
    _, _, _, _, reports = english
    attached = [json.loads(embedded_files(r.path)["explanation.json"]) for r in reports]
    reasons = " ".join(f["reason"] for a in attached for f in a["factors"])
    assert "Your " in reasons or "You " in reasons or "The " in reasons
    assert "_" not in reasons  # no raw feature names (annual_income) in customer sentences
    assert "<=" not in reasons  # lime conditions are turned into words


def test_no_report_contains_another_customers_id_or_data(english) -> None:
    _, _, _, applicants, reports = english
    names = dict(zip(applicants["customer_id"], applicants["full_name"], strict=True))
    for report in reports:
        blob = decoded_pdf(report.path)
        text = pdf_text(report.path)
        for other in reports:
            if other.decision_id == report.decision_id:
                continue
            for needle in (other.decision_id, names[other.decision_id]):
                assert needle not in text
                assert needle.encode() not in blob
                assert needle.encode("utf-16-be") not in blob


def test_pdfa3_metadata_attachment_fonts_and_tags(english) -> None:
    _, run, _, _, reports = english
    for report in reports:
        with pikepdf.open(report.path) as pdf:
            root = pdf.Root
            with pdf.open_metadata(set_pikepdf_as_editor=False) as meta:
                assert meta.get("pdfaid:part") == "3"
                assert meta.get("pdfaid:conformance") == "B"
                assert report.decision_id in meta.get("dc:title")
                assert meta.get("xmp:CreateDate") == "2026-11-22T09:30:00Z"
            assert str(root.Lang) == "en"
            assert "/ID" in pdf.trailer
            intent = root.OutputIntents[0]
            assert intent.S == "/GTS_PDFA1" and "/DestOutputProfile" in intent
            assert "/StructTreeRoot" in root and root.MarkInfo.Marked  # tagged
            assert len(root.AF) == 1  # each associated file listed once
            spec = root.AF[0]
            assert spec.AFRelationship == "/Data"
            assert str(spec.F) == "explanation.json"
            assert spec.EF.F.Subtype == "/application/json"
            assert str(spec.EF.F.Params.CreationDate) == "D:20261122093000Z"
            assert list(pdf.attachments) == ["explanation.json"]
            for page in pdf.pages:
                for font in page.Resources.Font.values():
                    descriptor = (font.DescendantFonts[0] if "/DescendantFonts" in font else font).FontDescriptor
                    assert any(k in descriptor for k in ("/FontFile", "/FontFile2", "/FontFile3")), font.BaseFont
                assert "/Annots" not in page or not any(a.get("/Subtype") == "/FileAttachment" for a in page.Annots)
        assert run.model_sha256.encode() in embedded_files(report.path)["explanation.json"]


def test_rerendering_gives_identical_bytes_regardless_of_grouping(english, tmp_path: Path) -> None:
    config, run, rows, applicants, reports = english
    again = render_customer_reports(rows, applicants, config, run, tmp_path / "again")
    assert [r.sha256 for r in again] == [r.sha256 for r in reports]
    alone_id = reports[2].decision_id
    alone = render_customer_reports(_rows_of(rows, alone_id), applicants, config, run, tmp_path / "alone")
    assert alone[0].sha256 == reports[2].sha256


def test_chinese_report_embeds_a_cjk_font(tmp_path: Path) -> None:
    config = demo_config("zh-CN")
    run = demo_run(config)
    rows, applicants = synthetic_inputs(2, config, seed=5)
    reports = render_customer_reports(rows, applicants, config, run, tmp_path)
    for report in reports:
        text = flat(pdf_text(report.path))
        assert "信贷决定理由说明书" in text and "主要理由" in text and "您的权利" in text
        assert "个人信息保护法" in text  # the cn notice
        name = applicants.loc[applicants["customer_id"] == report.decision_id, "full_name"].iloc[0]
        assert name in text
        attached = json.loads(embedded_files(report.path)["explanation.json"])
        for factor in attached["factors"]:
            assert has_sentence(text, factor["reason"])
        with pikepdf.open(report.path) as pdf:
            assert str(pdf.Root.Lang) == "zh-CN"
            fonts = {str(f.BaseFont) for p in pdf.pages for f in p.Resources.Font.values()}
        assert any("WenQuanYi" in f for f in fonts), fonts


def test_decision_column_and_missing_applicant_fields(tmp_path: Path) -> None:
    config = demo_config("en", decision_column="outcome")
    run = demo_run(config)
    rows, applicants = synthetic_inputs(2, config, seed=9)
    applicants["outcome"] = ["approved", None]
    applicants.loc[1, "full_name"] = None
    reports = render_customer_reports(rows, applicants, config, run, tmp_path)
    first, second = (flat(pdf_text(r.path, 1, 1)) for r in reports)
    assert json.loads(embedded_files(reports[0].path)["explanation.json"])["decision"] == "Approved"
    assert "Approved" in first and "Declined" not in first
    assert "not recorded" in second
    assert "Name " not in second.split("Decision date")[0]  # no empty name line


def test_feature_without_catalog_entry_gets_a_specific_sentence(tmp_path: Path) -> None:
    catalog = tmp_path / "reasons.toml"
    catalog.write_text('[meta]\nexplained_class = "declined"\n\n[features.housing]\nraises = "Housing: {value}."\n')
    config = demo_config("en", reasons=str(catalog))
    gaps = missing_catalog_entries(config)
    assert any("debt_to_income" in g for g in gaps) and any("'lowers'" in g for g in gaps)
    assert not any("[features.housing] has no 'raises'" in g for g in gaps)
    run = demo_run(config)
    rows, applicants = synthetic_inputs(1, config, seed=1)
    rows.loc[0, ["feature", "label", "condition", "value", "weight", "direction"]] = [
        "debt_to_income", "Debt-to-income ratio", "debt_to_income > 0.41", "0.52", 0.15, "raises"]
    report = render_customer_reports(rows, applicants, config, run, tmp_path / "out")[0]
    text = flat(pdf_text(report.path))
    assert has_sentence(text, "Your debt-to-income ratio (0.52) is above 0.41; in our model this increased the "
                              "likelihood of a decline.")


def test_demo_catalogs_cover_every_feature_both_directions() -> None:
    assert missing_catalog_entries(demo_config("en")) == []
    assert missing_catalog_entries(demo_config("zh-CN")) == []


def test_bad_inputs_fail_with_one_line_errors(tmp_path: Path) -> None:
    config = demo_config("en")
    run = demo_run(config)
    rows, applicants = synthetic_inputs(2, config)
    with pytest.raises(InputError, match="missing column.*'fidelity'"):
        render_customer_reports(rows.drop(columns=["fidelity"]), applicants, config, run, tmp_path)
    broken = rows.copy()
    broken.loc[broken.index[0], "rank"] = 7
    with pytest.raises(InputError, match="ranks"):
        render_customer_reports(broken, applicants, config, run, tmp_path)
    broken = rows.copy()
    broken.loc[broken.index[0], "feature"] = "shoe_size"
    with pytest.raises(InputError, match="shoe_size"):
        render_customer_reports(broken, applicants, config, run, tmp_path)
    with pytest.raises(InputError, match="applicants: missing column.*full_name"):
        render_customer_reports(rows, applicants.drop(columns=["full_name"]), config, run, tmp_path)
    with pytest.raises(ConfigError, match="jurisdiction 'mars'"):
        render_customer_reports(rows, applicants, demo_config("en", jurisdiction="mars"), run, tmp_path)
    with pytest.raises(ConfigError, match="regulator"):  # the us notice names the supervising agency
        render_customer_reports(rows, applicants, demo_config("en", jurisdiction="us"), run, tmp_path)
    assert not list(tmp_path.glob("*.pdf"))  # nothing written for bad inputs
    assert render_customer_reports(rows.iloc[0:0], applicants, config, run, tmp_path) == []


def test_us_notice_with_regulator(tmp_path: Path) -> None:
    lender = {"name": "Example Bank", "address": ["1 Main St", "Springfield"], "contact": ["1-800-000-0000"],
              "regulator": ["Consumer Financial Protection Bureau, 1700 G Street NW, Washington, DC 20552"]}
    config = demo_config("en", jurisdiction="us", lender=lender)
    rows, applicants = synthetic_inputs(1, config)
    report = render_customer_reports(rows, applicants, config, demo_run(config), tmp_path)[0]
    text = flat(pdf_text(report.path))
    assert "Consumer Financial Protection Bureau, 1700 G Street NW" in text
    assert "Equal Credit Opportunity Act" in text


@pytest.mark.parametrize(
    ("decision_id", "expected_start"),
    [("CUST-1", "CUST-1-"), ("../../etc/passwd", "etc-passwd-"), ("", "decision-"), ("..", "decision-"),
     ("Zoë/ß 王", "Zoe-"), (".hidden", "hidden-"), ("a" * 300, "a" * 48 + "-")],
)
def test_report_filename_is_safe(decision_id: str, expected_start: str) -> None:
    name = report_filename(decision_id)
    assert name.startswith(expected_start) and name.endswith(".pdf")
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*-[0-9a-f]{16}\.pdf", name)
    assert "/" not in name and "\\" not in name and not name.startswith(".")


def test_report_filenames_do_not_collide() -> None:
    ids = ["abc", "ABC", "a/b/c", "a-b-c", "a b c", "a\x00b", "Zoë", "Zoe", "zoe", "王", "", " "]
    names = [report_filename(i) for i in ids]
    assert len(set(names)) == len(ids)
    assert len({n.lower() for n in names}) == len(ids)  # case-insensitive filesystems too


def test_missing_report_font_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks.errors import LimelightError
    from tasks.report import pdf as render_pdf

    monkeypatch.setitem(render_pdf.REQUIRED_FONTS, "xx-test", {"No Such Font Family": "fonts-nothing"})
    with pytest.raises(LimelightError, match="fonts-nothing"):
        render_pdf.require_fonts("xx-test")


def test_tagged_variant_pdfa_3a(tmp_path: Path) -> None:
    config = demo_config("en", pdf_variant="pdf/a-3a")
    rows, applicants = synthetic_inputs(1, config)
    report = render_customer_reports(rows, applicants, config, demo_run(config), tmp_path)[0]
    with pikepdf.open(report.path) as pdf:
        with pdf.open_metadata(set_pikepdf_as_editor=False) as meta:
            assert meta.get("pdfaid:conformance") == "A"
        assert "/StructTreeRoot" in pdf.Root and list(pdf.attachments) == ["explanation.json"]


def test_shared_pages_follow_with_structure_outline_and_page_numbers(english) -> None:
    """The rights notice and the audit annex are rendered once per run and appended: the PDF must read as one
    document (page numbers, tags, bookmarks), and those pages must carry no customer's data."""
    _, _, _, applicants, reports = english
    customers = [r.decision_id for r in reports] + list(applicants["full_name"])
    for report in reports:
        own, shared = flat(pdf_text(report.path, 1, 1)), flat(pdf_text(report.path, 2, 2))
        assert "Page 1 of 2" in own and report.decision_id in own and "Your rights" not in own
        assert "Page 2 of 2" in shared and "Your rights" in shared and "Audit annex" in shared
        assert not [c for c in customers if c in shared]
        assert structure_problems(report.path) == []
        entries = outline(report.path)
        assert (0, "Statement of reasons for your credit decision", 1) in entries
        assert (1, "Principal reasons", 1) in entries
        assert (1, "Your rights", 2) in entries and (1, "Audit annex", 2) in entries
        with pikepdf.open(report.path) as pdf:
            assert len(pdf.pages) == 2
            assert [int(p.obj.StructParents) for p in pdf.pages] == [0, 1]


def test_a_long_statement_gets_its_own_second_page(tmp_path: Path) -> None:
    lender = {"name": "Example Bank", "address": [f"Address line {i}" for i in range(60)], "contact": ["0800"]}
    config = demo_config("en", lender=lender)
    rows, applicants = synthetic_inputs(1, config, seed=4)
    report = render_customer_reports(rows, applicants, config, demo_run(config), tmp_path)[0]
    pages = [flat(pdf_text(report.path, n, n)) for n in (1, 2, 3)]
    assert "Page 1 of 3" in pages[0] and "Page 2 of 3" in pages[1] and "Page 3 of 3" in pages[2]
    assert "Principal reasons" in pages[0] + pages[1] and "Your rights" in pages[2]
    assert structure_problems(report.path) == []
    assert (1, "Audit annex", 3) in outline(report.path)


def test_template_html_path_gives_the_same_bytes_as_weasyprints_own(tmp_path: Path) -> None:
    """render_pdf parses our templates with expat and a cut-down UA stylesheet (ua.css) for speed; the PDFs
    must not change. Fails when a template uses an element ua.css does not cover, or WeasyPrint's UA changes."""
    import dataclasses

    from tasks.report.letter import run_texts
    from tasks.report.pdf import document_kind, layout, write
    from tasks.report.render import PAGES_MARK, _pdf_settings, shared_html

    config = demo_config("en")
    run = demo_run(config)
    rows, applicants = synthetic_inputs(3, config, seed=8, review_share=0.5)
    applicants["full_name"] = ["Zoë O'Brien <b>&amp;", "שלום עולם", "王小明 \u202eevil"]
    docs = customer_documents(rows, applicants, config, run)
    kind = document_kind("customer_report")
    assert kind.ua is not None
    stock = dataclasses.replace(kind, ua=None)
    settings = _pdf_settings(config, run)
    htmls = [d.html.replace(PAGES_MARK, "2") for d in docs] + [shared_html(run_texts(config, run), 1)]
    htmls.append(htmls[-1].replace("<p>", "<p>not XML: <br> \x0b", 1))  # expat refuses: tinyhtml5 parses it
    for html, part in zip(htmls, [d.part for d in docs] + [None, None], strict=True):
        assert write(layout(kind, html, settings), part, settings, kind) == \
            write(layout(stock, html, settings), part, settings, stock)


def test_annex_lists_the_quality_settings_of_the_run(tmp_path: Path) -> None:
    """The stability and review-gate settings come from the run's config (RunInfo does not carry them)."""
    config = demo_config("en")
    rows, applicants = synthetic_inputs(1, config, seed=4)
    report = render_customer_reports(rows, applicants, config, demo_run(config), tmp_path / "a")[0]
    annex = flat(pdf_text(report.path, 2, 2))
    for row in ("Sampling design Sobol sequence, shifted per decision and stream (randomised quasi-Monte Carlo)",
                "Independent sample streams (R) 2", "Adaptive sample size yes, doubling up to 16× S",
                "Confidence of a stable set of reasons 0.95", "Maximum prediction gap allowed 0.30",
                "Unstable reasons: human review yes", "Failed deletion check: human review no"):
        assert row in annex
    explain = config.explain.model_copy(update={"stability_runs": 4, "adaptive": False, "confidence": 0.99})
    review = config.review.model_copy(update={"max_prediction_gap": 0.125, "require_stable": False,
                                              "require_deletion": True})
    other = config.model_copy(update={"explain": explain, "review": review})
    report = render_customer_reports(rows, applicants, other, demo_run(other), tmp_path / "b")[0]
    annex = flat(pdf_text(report.path, 2, 2))
    for row in ("Independent sample streams (R) 4", "Adaptive sample size no", "Confidence of a stable set of reasons"
                " 0.99", "Maximum prediction gap allowed 0.125", "Unstable reasons: human review"
                " no", "Failed deletion check: human review yes"):
        assert row in annex
