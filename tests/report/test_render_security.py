"""Untrusted text in every path that reaches a template: no fetch, no leaked bytes, rendered as text."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from render_support import (
    decoded_pdf,
    demo_config,
    demo_run,
    embedded_files,
    flat,
    pdf_text,
    synthetic_inputs,
)
from weasyprint.urls import path2url

from tasks.report.fetcher import TemplateFolderFetcher
from tasks.report.pdf import document_kind
from tasks.report.render import render_customer_reports, render_run_summary

SECRET = b"root:x:0:0"  # first bytes of /etc/passwd


class _Counter(BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        type(self).hits.append(self.path)
        body = b"LEAKED-BY-HTTP"
        self.send_response(200)
        self.send_header("Content-Type", "text/css")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[int, list[str]]]:
    _Counter.hits = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Counter)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1], _Counter.hits
    httpd.shutdown()


def payloads(port: int) -> list[str]:
    url = f"http://127.0.0.1:{port}"
    return [
        '<img src="file:///etc/passwd">',
        '<link rel=attachment href="file:///etc/passwd">',
        f'<a rel="attachment" href="{url}/a">x</a>',
        f"<style>@import url({url}/import.css);</style>",
        f'<p style="background:url({url}/style)">s</p>',
        f"url({url}/raw-css)",
        f'<svg><image href="{url}/svg-image"/><image xlink:href="file:///etc/passwd"/></svg>',
        f'<object data="{url}/object"></object><embed src="{url}/embed">',
        f'<link rel="stylesheet" href="{url}/link.css">',
        "<script>document.write('x')</script>",
        '"><img src=x onerror=alert(1)>',
        "{value} {range} {label} {lender_name} {{7*7}} {% raw %}",
        "שלום עולם مرحبا بالعالم",
        "王小明 李华",
        "\u202eevil\u202c \x00\x1b[31m \x7f",
    ]


def _hostile_inputs(port: int, tmp_path: Path):
    """A config, run and rows whose every text path carries a payload."""
    bad = payloads(port)
    joined = " | ".join(bad)
    # Config texts may only use their own placeholders (anything else is a ConfigError, tested elsewhere).
    cfg_bad = [p for p in bad if "{" not in p]
    catalog = tmp_path / "reasons.toml"
    features_toml = "".join(
        f'[features.{name}]\nlabel = {json.dumps(cfg_bad[i % len(cfg_bad)])}\n'
        f'raises = {json.dumps(cfg_bad[(i + 1) % len(cfg_bad)] + " {value} {range}")}\n'
        f'lowers = {json.dumps(cfg_bad[(i + 2) % len(cfg_bad)] + " {value}")}\n'
        for i, name in enumerate(["annual_income", "debt_to_income", "housing", "loan_purpose"])
    )
    categories = "[features.housing.categories]\n" + "".join(
        f"{c} = {json.dumps(bad[j])}\n" for j, c in enumerate(["own", "mortgage", "rent", "other"]))
    catalog.write_text(f'[meta]\nexplained_class = "declined"\n\n{features_toml}{categories}', encoding="utf-8")
    notices = tmp_path / "notices.toml"
    notices.write_text(f"[uk]\nheading = {json.dumps(cfg_bad[0])}\nparagraphs = {json.dumps(cfg_bad)}\n",
                       encoding="utf-8")
    lender = {"name": joined[:300], "address": bad[:4], "contact": bad[4:8]}
    config = demo_config("en", reasons=str(catalog), notices=str(notices), lender=lender, title=bad[1],
                         applicant_fields=["full_name", "note"])
    features = [f.model_copy(update={"label": bad[i % len(bad)]}) for i, f in enumerate(config.features)]
    config = config.model_copy(update={"features": features})
    run = demo_run(config)
    run = type(run)(**{**run.to_dict(), "run_id": bad[3], "versions": {bad[6]: bad[7], "weasyprint": "70.0"}})
    rows, applicants = synthetic_inputs(4, config, seed=2)
    ids = [bad[0], bad[2] + "-" + "x" * 3000, bad[12], bad[14]]
    mapping = dict(zip(rows["customer_id"].unique(), ids, strict=True))
    rows["customer_id"] = rows["customer_id"].map(mapping)
    applicants["customer_id"] = applicants["customer_id"].map(mapping)
    applicants["full_name"] = [bad[1], bad[5] + "A" * 5000, bad[13], bad[6]]
    applicants["note"] = [bad[4], bad[8], bad[9], bad[10]]
    rows["label"] = [bad[i % len(bad)] for i in range(len(rows))]
    categorical = rows["feature"].isin(["housing", "loan_purpose", "employment_type"])
    rows.loc[categorical, "condition"] = [f"housing={bad[i % len(bad)]}" for i in range(int(categorical.sum()))]
    rows.loc[categorical, "value"] = [bad[(i + 3) % len(bad)] for i in range(int(categorical.sum()))]
    rows.loc[~categorical, "condition"] = [f"{bad[i % len(bad)]} > 0.5" for i in range(int((~categorical).sum()))]
    return config, run, rows, applicants


def _assert_clean(pdf: Path, allowed_attachment: str) -> None:
    blob = decoded_pdf(pdf)
    assert SECRET not in blob
    assert b"LEAKED-BY-HTTP" not in blob
    assert list(embedded_files(pdf)) == [allowed_attachment]


def test_hostile_text_everywhere_fetches_nothing_and_leaks_nothing(server, tmp_path: Path) -> None:
    port, hits = server
    config, run, rows, applicants = _hostile_inputs(port, tmp_path)
    fetcher = document_kind("customer_report").fetcher
    attempts_before = len(fetcher.attempts)
    reports = render_customer_reports(rows, applicants, config, run, tmp_path / "out")
    assert len(reports) == 4
    for report in reports:
        assert report.path.parent == tmp_path / "out"  # ids never steer the path
        _assert_clean(report.path, "explanation.json")
        text = flat(pdf_text(report.path))
        assert '<img src="file:///etc/passwd">' in text  # shown as text, not obeyed
        assert "<script>" in text or "document.write" in text
        attached = json.loads(embedded_files(report.path)["explanation.json"])
        assert attached["decision_id"] == report.decision_id
    review = [r.decision_id for r in reports]
    counts = {"decisions_in": 4, "reports_made": 4, "needs_review": 4, "failed": 0}
    summary = render_run_summary(rows, counts, review, config, run, tmp_path / "summary.pdf")
    _assert_clean(summary, "run-summary.json")
    assert hits == []
    assert fetcher.attempts[attempts_before:] == []
    assert document_kind("run_summary", "summary.html").fetcher.attempts == []


def test_fetcher_serves_only_regular_files_inside_its_folder(server, tmp_path: Path) -> None:
    port, hits = server
    folder = tmp_path / "tpl"
    (folder / "img").mkdir(parents=True)
    (folder / "img" / "logo.png").write_bytes(b"\x89PNG fake")
    (folder / "link").symlink_to("/etc/passwd")
    (folder / "dirlink").symlink_to("/etc")
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    fetcher = TemplateFolderFetcher(folder)
    good = fetcher.fetch(fetcher.base_url + "img/logo.png")
    assert good.read() == b"\x89PNG fake" and good.content_type == "image/png"
    refused = [
        fetcher.base_url + "../outside.txt",
        fetcher.base_url + "%2e%2e/outside.txt",
        fetcher.base_url + "link",
        fetcher.base_url + "dirlink/passwd",
        fetcher.base_url + "img",
        path2url(str(outside)),
        "file:///etc/passwd",
        "file://localhost/etc/passwd",
        "file://remotehost" + str(folder / "img" / "logo.png"),
        "FILE:///etc/passwd",
        "file:///dev/zero",
        f"http://127.0.0.1:{port}/x",
        f"https://127.0.0.1:{port}/x",
        "ftp://127.0.0.1/x",
        "data:text/plain,hello",
        "javascript:alert(1)",
    ]
    for url in refused:
        with pytest.raises((ValueError, OSError)):
            fetcher.fetch(url)
    assert hits == []
    assert len(fetcher.served) == 1


def test_templates_autoescape_and_fail_on_undefined() -> None:
    env = document_kind("customer_report").template.environment
    assert env.autoescape is True
    assert env.undefined.__name__ == "StrictUndefined"
    assert os.path.basename(document_kind("customer_report").fetcher.root) == "customer_report"
