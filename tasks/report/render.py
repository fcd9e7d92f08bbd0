"""Customer reports and the run summary as archival PDFs (PDF/A-3 with the explanation as JSON attachment).

Public API: :func:`render_customer_reports`, :func:`render_run_summary`, :func:`report_filename`,
:func:`missing_catalog_entries`, :class:`RenderedReport`. What a run publishes is the output contract in
docs/output-contract.md (the table of outputs and the column meanings); the rows read here follow
``tasks/explain/aggregate.py:explanation_schema``.

Each letter's content (template context and JSON attachment) comes from tasks/report/letter.py; here it becomes
HTML (templates/customer_report/), laid out and written by tasks/report/pdf.py, with the run's shared pages
(rights notice, audit annex) appended by tasks/report/shared_pages.py. Everything that reaches a template is
plain text (autoescaped) or a number; every fixed text comes from config/texts/<language>.toml, every reason
sentence from the reason catalog. The same run re-rendered gives byte-identical PDFs: all dates come from
``RunInfo.generated_at`` and WeasyPrint's document identifier is a hash of the content.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.errors import LimelightError
from tasks.inputs.config import Config
from tasks.report.letter import (
    RunTexts,
    applicant_index,
    check_columns,
    group_rows,
    lender_fields,
    report_context,
    run_texts,
)
from tasks.report.pdf import (
    DocumentKind,
    PdfPart,
    PdfSettings,
    document_kind,
    jinja_environment,
    layout,
    require_fonts,
    write,
)
from tasks.report.review import Resolution
from tasks.report.reviewed import revise
from tasks.report.shared_pages import SharedPages, append_shared, shared_pages
from tasks.report.summary import quality_settings_rows, summary_document
from tasks.report.text import (
    audit_rows,
    clean_text,
    missing_catalog_entries,
    strip_accents_ascii,
    versions_line,
)
from tasks.run.info import RunInfo

__all__ = [
    "ROW_COLUMNS",
    "RenderedReport",
    "missing_catalog_entries",
    "render_customer_reports",
    "render_run_summary",
    "report_filename",
]

ROW_COLUMNS = (
    "rank", "feature", "label", "condition", "value", "weight", "share", "direction",
    "fidelity", "local_pred", "model_pred", "intercept", "needs_review",
)
ATTACHMENT_NAME = "explanation.json"
#: A reviewed decision: the reviewer's resolution and the decision's own feature values (name -> raw value).
Reviewed = tuple[Resolution, Mapping[str, Any]]
_SLUG_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_BETWEEN_TAGS = re.compile(r">\n\s*<")  # template indentation only: text never starts a line there
# In report.html, where the page total goes: a comment, which autoescaped customer text can never produce.
PAGES_MARK = "<!--limelight:pages-->"


@dataclass(frozen=True)
class RenderedReport:
    decision_id: str
    path: Path
    sha256: str
    needs_review: bool


def report_filename(decision_id: str) -> str:
    """``<slug>-<16 hex of sha256(id)>.pdf``: safe on every filesystem, distinct ids never collide in practice.

    The slug (ASCII letters, digits, ``.``, ``_``, ``-``; at most 48 characters; no leading dot) is only
    for humans; the hash of the exact id (UTF-8) makes the name unique, so ids that differ only in case,
    accents or odd characters still get different files, and no id can name a path outside the folder.
    """
    digest = hashlib.sha256(str(decision_id).encode("utf-8", "surrogatepass")).hexdigest()[:16]
    slug = _SLUG_UNSAFE.sub("-", strip_accents_ascii(str(decision_id))).strip("-._")[:48].strip("-._")
    return f"{slug or 'decision'}-{digest}.pdf"


def _pdf_settings(config: Config, run: RunInfo) -> PdfSettings:
    return PdfSettings(variant=config.report.pdf_variant, tags=config.report.pdf_tags,
                       lang=config.report.language, generated_at=run.generated_at, accessible=True)


def _attachment_bytes(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, ensure_ascii=False, indent=1, allow_nan=False).encode("utf-8")


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------- customer


@dataclass(frozen=True)
class CustomerDocument:
    """One report ready for WeasyPrint: its HTML, PDF metadata and attachment, and where it goes."""

    decision_id: str
    filename: str
    html: str
    part: PdfPart
    needs_review: bool


def customer_documents(rows: pd.DataFrame, applicants: pd.DataFrame, config: Config,
                       run: RunInfo, reviews: Mapping[str, Reviewed] | None = None) -> list[CustomerDocument]:
    """Validate the inputs and build each decision's HTML and attachment (no layout yet). ``reviews``: decision id
    -> its reviewer's resolution and its own feature values (tasks/report/reviewed.py revises those letters).

    Raises :class:`InputError` for rows or applicants that break the contract and :class:`ConfigError` for
    catalog or notice problems, so nothing is written when an input is bad.
    """
    id_column = config.data.id_column
    check_columns(rows, [id_column, *ROW_COLUMNS], "explanations")
    if rows.empty:
        return []
    require_fonts(config.report.language)
    shared = run_texts(config, run)
    groups = group_rows(rows, id_column)
    people = applicant_index(applicants, config)
    filenames = {decision_id: report_filename(decision_id) for decision_id in groups}
    if len(set(filenames.values())) != len(filenames):
        raise LimelightError("two decision ids map to the same report file name (sha256 prefix collision)")
    template = document_kind("customer_report").template
    common = {"lang": config.report.language, "t": shared.texts, "lender": lender_fields(config),
              "doc_title": shared.title}
    documents = []
    for decision_id, records in groups.items():
        context, attachment = report_context(decision_id, records, people.get(decision_id), shared)
        if reviews and decision_id in reviews:
            resolution, values = reviews[decision_id]
            revise(context, attachment, resolution, values, shared)
        part = PdfPart(
            title=f"{shared.title} – {context['footer_id']}",
            author=common["lender"]["name"],
            subject=shared.title,
            attachment=_attachment_bytes(attachment),
            attachment_name=ATTACHMENT_NAME,
            attachment_description="Explanation of this decision (limelight, JSON)",
        )
        html = _BETWEEN_TAGS.sub("><", template.render(r=context, **common))
        documents.append(CustomerDocument(decision_id, filenames[decision_id], html, part,
                                          bool(context["needs_review"])))
    return documents


def _customer_pdf(doc: CustomerDocument, kind: DocumentKind, settings: PdfSettings,
                  shared_after: Callable[[int], SharedPages]) -> bytes:
    """The customer's own page(s), then the run's shared pages (rights notice, audit annex) appended.

    ``shared_after(n)`` gives the shared pages numbered from page n + 1. The footer's page total is written
    into the HTML: this customer's pages (one, unless the statement runs long: then laid out again with the
    right total) plus the shared pages.
    """
    count = shared_after(1).count
    own = 1
    while True:
        document = layout(kind, doc.html.replace(PAGES_MARK, str(own + count)), settings)
        if len(document.pages) == own or own > 8:
            break
        own = len(document.pages)
    return append_shared(write(document, doc.part, settings, kind), shared_after(own))


def _shared_after(kind: DocumentKind, settings: PdfSettings, shared: RunTexts) -> Callable[[int], SharedPages]:
    @functools.lru_cache(maxsize=4)
    def after(own: int) -> SharedPages:
        return shared_pages(kind, shared_html(shared, own), settings, own)

    return after


def customer_pdfs(rows: pd.DataFrame, applicants: pd.DataFrame, config: Config, run: RunInfo,
                  reviews: Mapping[str, Reviewed] | None = None) -> Iterator[tuple[CustomerDocument, bytes]]:
    """Each decision's document and PDF bytes, in the order the decisions first appear in ``rows`` (nothing
    written); bad inputs raise before the first PDF is made."""
    documents = customer_documents(rows, applicants, config, run, reviews)  # checked now, not when iterated
    if not documents:
        return iter(())
    kind = document_kind("customer_report")
    settings = _pdf_settings(config, run)
    shared_after = _shared_after(kind, settings, run_texts(config, run))
    return ((doc, _customer_pdf(doc, kind, settings, shared_after)) for doc in documents)


def render_customer_reports(rows: pd.DataFrame, applicants: pd.DataFrame, config: Config, run: RunInfo,
                            out_dir: Path, subfolders: Mapping[str, str] | None = None,
                            reviews: Mapping[str, Reviewed] | None = None) -> list[RenderedReport]:
    """One PDF per decision in ``rows`` (explanations.parquet rows), written to ``out_dir/report_filename(id)``,
    or to ``out_dir/<subfolder>/report_filename(id)`` with ``subfolders`` (decision id -> its subfolder under the
    run's ``[report] layout``: tasks/report/index.py, :func:`report_subfolders`).

    Returns the reports in the order the decisions first appear in ``rows``. Bad inputs raise before any
    file is written (see :func:`customer_documents`); each file is written atomically. ``reviews``: the letters a
    reviewer resolved (:func:`customer_pdfs`).
    """
    pdfs = customer_pdfs(rows, applicants, config, run, reviews)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for doc, pdf in pdfs:
        folder = out_dir / (subfolders or {}).get(doc.decision_id, "")
        folder.mkdir(exist_ok=True)
        path = folder / doc.filename
        _write_atomic(path, pdf)
        results.append(RenderedReport(doc.decision_id, path, hashlib.sha256(pdf).hexdigest(), doc.needs_review))
    return results


def shared_html(shared: RunTexts, lead: int) -> str:
    """The HTML of the pages every customer of the run shares (rights notice, audit annex), after ``lead``
    blank pages that stand for the customer's own. Made from config and run data only: no customer data."""
    config, run = shared.config, shared.run
    template = jinja_environment().get_template("customer_report/shared.html")
    html = template.render(
        lang=config.report.language,
        t=shared.texts,
        lender=lender_fields(config),
        notice=shared.notice,
        versions=versions_line(run),
        audit=[*audit_rows(run, shared.texts["customer"]),
               *quality_settings_rows(config, shared.texts["customer"], run.method)],
        doc_title=shared.title,
        run_id=clean_text(run.run_id, limit=80),
        lead=lead,
    )
    return _BETWEEN_TAGS.sub("><", html)


# ---------------------------------------------------------------------------------------------- summary


def render_run_summary(explanations: pd.DataFrame, counts: dict[str, int], review_ids: list[str],
                       config: Config, run: RunInfo, out_path: Path, quality: Mapping[str, Any] | None = None,
                       layout: int = 1, failures: Path | None = None,
                       protected: Mapping[str, Any] | None = None, drift: Mapping[str, Any] | None = None) -> Path:
    """The run summary PDF (counts, fidelity histogram, reason frequencies, review list, parameters); ``quality``:
    the table's ``quality_summary`` when the caller has it (computed otherwise); ``layout`` and ``failures``: see
    :func:`tasks.report.summary.summary_document`; ``protected`` likewise, the protected-feature figures of a run
    that has such features; ``drift``: the comparison with the run's baseline (a drift section; none without)."""
    return summary_document(explanations, counts, review_ids, config, run, Path(out_path), quality, layout, failures,
                            protected, drift)
