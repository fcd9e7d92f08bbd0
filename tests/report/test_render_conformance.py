"""The PDFs against an independent checker: customer letters and run summary, en and zh-CN.

Every customer letter and the run summary, in each of its sections, must pass PDF/A-3b and PDF/UA-1 (they claim
both), with the
`page-validation` checker (PyPI; Rust, PDF/A-1/2/3 and PDF/UA-1 rules), with no rule waived. A stream whose data
ends in a CR byte gets CR LF as its EOL marker before `endstream` (tasks/report/pdf_structure.py:
crlf_before_endstream), so no reading of the bytes makes its /Length wrong; checked here byte by byte too.
"""

from __future__ import annotations

import json
import re
import zlib
from collections import Counter
from pathlib import Path

import page
import pikepdf
import pytest
from render_support import demo_config, demo_run, embedded_files, structure_problems, synthetic_inputs

from tasks.report.pdf_structure import crlf_before_endstream, endstream_eol
from tasks.report.render import render_customer_reports, render_run_summary
from tasks.report.summary_lists import SUMMARY_LAYOUT

LANGUAGES = ("en", "zh-CN")
REPORTS_PER_LANGUAGE = 4
_STREAM = re.compile(rb"(?:^|[\r\n])(\d+) (\d+) obj\b((?:(?!endobj).)*?)stream(\r\n|\n)", re.DOTALL)
_DIRECT_LENGTH = re.compile(rb"/Length (\d+)(?! \d+ R)")


def streams(data: bytes) -> dict[tuple[int, int], tuple[bool, bool]]:
    """Every stream of a PDF file read byte by byte: (object, generation) -> (sound, ends in CR).

    Sound (ISO 19005-3 6.1.7.1): ``stream`` is followed by CR LF or LF, then exactly /Length bytes (a direct
    integer), then an EOL marker and ``endstream``; where the data's last byte is CR (ends in CR), the EOL marker
    is CR LF, so a reader scanning back from ``endstream`` finds the same /Length bytes as one reading /Length.
    """
    found: dict[tuple[int, int], tuple[bool, bool]] = {}
    for match in _STREAM.finditer(data):
        length = _DIRECT_LENGTH.search(match.group(3))
        if length is None:
            found[(int(match.group(1)), int(match.group(2)))] = (False, False)
            continue
        end = match.end() + int(length.group(1))
        ends_in_cr = data[end - 1:end] == b"\r"
        sound = data[end:end + 11] == b"\r\nendstream" or (data[end:end + 10] == b"\nendstream" and not ends_in_cr)
        found[(int(match.group(1)), int(match.group(2)))] = (sound, ends_in_cr)
    return found


def failures(path: Path, profile: str) -> list[str]:
    """The checker's failed rule ids for ``path`` (``rule (object n): message``): every rule, none waived."""
    found = []
    for failure in page.validate_pdf(path, profile=profile).failures:
        where = failure.object_id
        at = f" (object {where.object_number})" if where is not None else ""
        found.append(f"{failure.rule_id}{at}: {failure.message}")
    return found


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[list[Path], Path]]:
    """A few customer letters (both review states, a Chinese one with its CJK font) and the summary per language."""
    out: dict[str, tuple[list[Path], Path]] = {}
    for language in LANGUAGES:
        config = demo_config(language)
        run = demo_run(config)
        rows, applicants = synthetic_inputs(REPORTS_PER_LANGUAGE, config, seed=11, review_share=0.5)
        first = rows["customer_id"].iloc[0]
        rows.loc[rows["customer_id"] == first, ["fidelity", "needs_review"]] = [0.12, True]
        folder = tmp_path_factory.mktemp(f"conformance-{language}")
        reports = render_customer_reports(rows, applicants, config, run, folder)
        review = sorted(rows.loc[rows["needs_review"], "customer_id"].unique())
        counts = {"decisions_in": REPORTS_PER_LANGUAGE, "reports_made": len(reports), "needs_review": len(review),
                  "failed": 0}
        summary = render_run_summary(rows, counts, review, config, run, folder / "summary.pdf",
                                     layout=SUMMARY_LAYOUT)  # no failures.parquet: none failed
        out[language] = ([r.path for r in reports], summary)
    return out


@pytest.mark.parametrize("language", LANGUAGES)
def test_customer_letters_pass_pdfa_3b_and_pdfua_1(rendered, language: str) -> None:
    reports, summary = rendered[language]
    problems = {f"{path.name} {profile}": found for path in reports for profile in ("3b", "ua1")
                if (found := failures(path, profile))}
    assert not problems, problems
    for path in [*reports, summary]:
        _assert_streams_sound(path)


def _assert_streams_sound(path: Path) -> None:
    """Two more readers: qpdf parses every object and stream (by /Length) without a complaint, and the byte-level
    scan finds every stream qpdf knows, each with a right /Length under either reading of its EOL marker."""
    found = streams(path.read_bytes())
    with pikepdf.open(path) as pdf:
        assert pdf.check_pdf_syntax() == [] and pdf.get_warnings() == [], path.name
        assert len(found) == sum(isinstance(o, pikepdf.Stream) for o in pdf.objects), path.name
    assert all(sound for sound, _ in found.values()), path.name


@pytest.mark.parametrize("language", LANGUAGES)
def test_run_summary_passes_pdfa_3b_and_pdfua_1(rendered, language: str) -> None:
    _, summary = rendered[language]
    assert failures(summary, "3b") == [] and failures(summary, "ua1") == []


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_summary_with_every_section_passes_pdfa_3b_and_pdfua_1(tmp_path: Path, language: str) -> None:
    """Layout 2's top-N review and failure tables, the prohibited bases (housing protected) and the comparison
    with a baseline: every rule of both profiles, on every page, with the claims in the XMP."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tasks.inputs.drift_config import DriftConfig
    from tasks.run.drift import baseline_record, compare, run_profile

    config = demo_config(language)
    config.features[:] = [f.model_copy(update={"protected": True}) if f.name == "housing" else f
                          for f in config.features]
    rows, _ = synthetic_inputs(60, config, seed=5, review_share=0.4)
    rows["role"], rows["withheld"] = "reason", rows["feature"] == "housing"
    rows["needs_review"] |= rows.groupby("customer_id")["withheld"].transform("any")
    rows["review_reasons"] = rows["needs_review"].map({True: "low-fidelity", False: ""})
    rows.to_parquet(tmp_path / "now.parquet")
    rows.assign(feature=rows["feature"].where(rows["rank"] != 1, "annual_income")).to_parquet(tmp_path / "base.parquet")
    drift = {"baseline": baseline_record({"run_id": "night-1", "trigger": {"run_date": "2026-11-20"}},
                                         tmp_path / "manifest.json", "previous run"),
             **compare(run_profile(tmp_path / "base.parquet"), run_profile(tmp_path / "now.parquet"),
                       DriftConfig(min_decisions=10))}
    lost = tmp_path / "failures.parquet"
    pq.write_table(pa.table({"customer_id": [f"LOST-{i}" for i in range(12)], "stage": ["explain"] * 12,
                             "error": ["model raised ValueError"] * 12}), lost)
    review = sorted(rows.loc[rows["needs_review"], "customer_id"].unique())
    counts = {"decisions_in": 72, "reports_made": 60, "needs_review": len(review), "failed": 12}
    path = render_run_summary(rows, counts, review, config, demo_run(config), tmp_path / "summary.pdf",
                              layout=SUMMARY_LAYOUT, failures=lost, drift=drift)
    attached = json.loads(embedded_files(path)["run-summary.json"])
    assert attached["layout"] == 3 and attached["protected"]["features"][0]["reason_decisions"] > 0
    assert attached["drift"] == drift and attached["failures"]["count"] == 12
    assert failures(path, "3b") == [] and failures(path, "ua1") == []
    with pikepdf.open(path) as pdf, pdf.open_metadata(set_pikepdf_as_editor=False) as meta:
        assert meta.get("pdfuaid:part") == "1" and pdf.Root.MarkInfo.Marked is True
    _assert_streams_sound(path)


@pytest.mark.parametrize("language", LANGUAGES)
def test_letters_claim_what_they_meet(rendered, language: str) -> None:
    """The claims a reader or an archive sees: PDF/A-3B and PDF/UA-1 in plain (uncompressed) XMP, the title
    shown, tags, language; footers are pagination artifacts; table headers carry their scope."""
    reports, summary = rendered[language]
    for path in reports:
        raw = path.read_bytes()
        assert b'pdfaid:part="3"' in raw and b'pdfuaid:part="1"' in raw  # an XMP packet scanner finds them
        with pikepdf.open(path) as pdf:
            root = pdf.Root
            assert "/Filter" not in root.Metadata.stream_dict
            with pdf.open_metadata(set_pikepdf_as_editor=False) as meta:
                assert meta.get("pdfaid:part") == "3" and meta.get("pdfaid:conformance") == "B"
                assert meta.get("pdfuaid:part") == "1"
                assert meta.get("dc:title")
            assert root.ViewerPreferences.DisplayDocTitle is True and root.MarkInfo.Marked is True
            assert str(root.Lang) == language
            for number, page_ in enumerate(pdf.pages, start=1):
                content = page_.Contents.read_bytes()
                footer = re.findall(rb"/Artifact\s*<<\s*/Type /Pagination\s*>>\s*BDC", content)
                assert footer, f"{path.name} page {number}: no pagination artifact (the footer)"
            elements = list(_elements(root.StructTreeRoot))
            tables = sum(e.S == "/Table" for e in elements)
            scopes = Counter(str(e.A.get("/Scope")) for e in elements if e.S == "/TH")
            assert scopes == Counter({"/Column": 5 * tables}), scopes
            # the data tables: the reasons, and the factors in the applicant's favour where an adverse letter
            # shows them, each with header cells; the layout grids (role=presentation) are /Div groups
            assert tables in (1, 2) and sum(e.S == "/TD" for e in elements) >= 5
            assert all(any(d.S == "/TH" for d in _elements(t)) for t in elements if t.S == "/Table")
            assert all(e.P.S in ("/Table", "/THead", "/TBody", "/TFoot") for e in elements if e.S == "/TR")
            figures = [e for e in _elements(root.StructTreeRoot) if e.S == "/Figure"]
            assert len(figures) == 1 and len(str(figures[0].Alt)) > 20
        assert structure_problems(path) == []
    with pikepdf.open(summary) as pdf:
        assert "/Filter" not in pdf.Root.Metadata.stream_dict
        assert b'pdfuaid:part="1"' in pdf.Root.Metadata.read_bytes()  # the summary claims PDF/UA-1 too


@pytest.mark.parametrize(("case", "report", "profile", "claims_ua"), [
    ("pdf/a-3a", {"pdf_variant": "pdf/a-3a"}, "3a", True),
    ("untagged", {"pdf_tags": False}, "3b", False),
    ("three pages, us notice", {"jurisdiction": "us", "lender": {
        "name": "Example Bank", "address": [f"Address line {i}" for i in range(60)], "contact": ["0800"],
        "regulator": ["Consumer Financial Protection Bureau, 1700 G Street NW, Washington, DC 20552"]}}, "3b", True),
])
def test_other_settings_keep_their_claims(tmp_path: Path, case: str, report: dict, profile: str,
                                          claims_ua: bool) -> None:
    """Level A, an untagged run (which must not claim PDF/UA), a statement that runs to a second page, hostile
    names (markup, right-to-left, a bidi override)."""
    config = demo_config("en", **report)
    rows, applicants = synthetic_inputs(1, config, seed=4)
    applicants["full_name"] = ["Zoë O'Brien <b>&amp; שלום \u202eevil"]
    path = render_customer_reports(rows, applicants, config, demo_run(config), tmp_path)[0].path
    with pikepdf.open(path) as pdf:
        assert (b"pdfuaid" in pdf.Root.Metadata.read_bytes()) == claims_ua, case
    assert failures(path, profile) == [], case
    if claims_ua:
        assert failures(path, "ua1") == [], case
        assert structure_problems(path) == []


def _elements(tree: pikepdf.Dictionary):
    """The structure elements below ``tree`` (the StructTreeRoot or an element), depth first."""
    stack = [tree.K] if isinstance(tree.K, pikepdf.Dictionary) else list(tree.K)
    while stack:
        element = stack.pop()
        if not isinstance(element, pikepdf.Dictionary):
            continue
        yield element
        kids = element.get("/K")
        if isinstance(kids, pikepdf.Array):
            stack.extend(kids)
        elif isinstance(kids, pikepdf.Dictionary):
            stack.append(kids)


def _pdf_with_stream(data: bytes, tmp_path: Path, declared: int | None = None) -> tuple[Path, int]:
    """A one-page PDF whose page content stream holds ``data`` (raw), optionally with a wrong /Length."""
    pdf = pikepdf.new()
    pdf.add_blank_page()
    stream = pikepdf.Stream(pdf, data)
    pdf.pages[0].obj.Contents = pdf.make_indirect(stream)
    path = tmp_path / "probe.pdf"
    pdf.save(path, compress_streams=False, object_stream_mode=pikepdf.ObjectStreamMode.disable)
    with pikepdf.open(path) as saved:
        number = saved.pages[0].obj.Contents.objgen[0]  # saving renumbers the objects
    if declared is not None:
        raw = path.read_bytes()
        raw = re.sub(rb"/Length %d\b" % len(data), b"/Length %d" % declared, raw, count=1)
        path.write_bytes(raw)
    return path, number


def test_a_stream_ending_in_cr_gets_crlf_before_endstream(tmp_path: Path) -> None:
    """Data ending in CR before `LF endstream` is flagged by the checker (0.11.0); crlf_before_endstream writes CR LF
    there, and then nothing is flagged, qpdf reads the same data, and a file without such a stream keeps its bytes.
    A /Length that is really wrong (two bytes short, one long) stays a failure: the fix hides nothing."""
    ends_in_cr = b"0 0 m 10 10 l S\n%\r"  # a comment line that ends in CR: data whose last byte is CR
    path, number = _pdf_with_stream(ends_in_cr, tmp_path)
    assert streams(path.read_bytes())[(number, 0)] == (False, True) and _length_flagged(path, number)
    fixed = tmp_path / "fixed.pdf"
    fixed.write_bytes(crlf_before_endstream(path.read_bytes()))
    with pikepdf.open(fixed) as pdf:
        number = pdf.pages[0].obj.Contents.objgen[0]
        assert pdf.pages[0].Contents.read_bytes() == ends_in_cr  # read by /Length: the CR is data
        assert pdf.check_pdf_syntax() == [] and pdf.get_warnings() == []
    assert all(sound for sound, _ in streams(fixed.read_bytes()).values()) and not _length_flagged(fixed, number)
    plain = b"0 0 m 10 10 l S\n"
    path, number = _pdf_with_stream(plain, tmp_path)
    assert crlf_before_endstream(path.read_bytes()) == path.read_bytes() and not _length_flagged(path, number)
    for wrong in (len(ends_in_cr) - 2, len(ends_in_cr) + 1):
        path, number = _pdf_with_stream(ends_in_cr, tmp_path, declared=wrong)
        assert _length_flagged(path, number) and failures(path, "3b")


def test_a_run_published_before_the_fix_is_finished_as_it_was(tmp_path: Path) -> None:
    """rerender writes the PDFs of a run whose manifest has no `pdf_finishing` inside endstream_eol(False): the bytes
    qpdf and pydyf wrote, as that run published them (so it still re-renders byte for byte)."""
    path, _ = _pdf_with_stream(b"0 0 m 10 10 l S\n%\r", tmp_path)
    raw = path.read_bytes()
    with endstream_eol(False):
        assert crlf_before_endstream(raw) == raw
        with endstream_eol(True):
            assert crlf_before_endstream(raw) != raw
        assert crlf_before_endstream(raw) == raw
    assert crlf_before_endstream(raw) != raw  # the default: the fix


def test_a_letter_whose_compressed_stream_ends_in_cr_passes(tmp_path: Path) -> None:
    """A real letter (tasks/report/shared_pages.py writes it with object streams) given one more page whose
    compressed content ends in CR (its Adler-32): after the fix every stream is sound and no rule fails."""
    config = demo_config("en")
    rows, applicants = synthetic_inputs(1, config, seed=3)
    [report] = render_customer_reports(rows, applicants, demo_config("en"), demo_run(config), tmp_path / "letters")
    content = next(c for i in range(256) if zlib.compress(c := b"q Q\n%" + b"a" * i + b"\n")[-1:] == b"\r")
    with pikepdf.open(report.path) as pdf:
        stream = pdf.make_stream(zlib.compress(content))
        stream.Filter = pikepdf.Name.FlateDecode
        pdf.pages[-1].obj.Contents = pikepdf.Array([pdf.pages[-1].obj.Contents, stream])
        raw = tmp_path / "raw.pdf"
        pdf.save(raw, deterministic_id=True, object_stream_mode=pikepdf.ObjectStreamMode.generate)
    assert b"\r\nendstream" in raw.read_bytes()
    path = tmp_path / "fixed.pdf"
    path.write_bytes(crlf_before_endstream(raw.read_bytes()))
    assert failures(path, "3b") == [] and failures(path, "ua1") == []
    _assert_streams_sound(path)
    assert any(cr for _, cr in streams(path.read_bytes()).values())


def _length_flagged(path: Path, number: int) -> bool:
    return any(f.rule_id == "PDFA3B-STREAM-LENGTH-001" and f.object_id is not None
               and f.object_id.object_number == number for f in page.validate_pdf(path, profile="3b").failures)


def test_zlib_streams_end_in_their_checksum() -> None:
    """Why about 1 in 256 compressed streams ends in CR: a zlib stream's last byte is the low byte of the
    Adler-32 of the uncompressed data, so some content makes it 0x0D, whatever the compression level."""
    content = next(b"BT /F1 9 Tf (%d) Tj ET\n" % i for i in range(10_000)
                   if zlib.compress(b"BT /F1 9 Tf (%d) Tj ET\n" % i)[-1:] == b"\r")
    assert all(zlib.compress(content, level)[-1:] == b"\r" for level in range(1, 10))
