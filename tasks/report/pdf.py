"""WeasyPrint plumbing: one Jinja environment, one CSS and one FontConfiguration per process, safe options.

A new ``FontConfiguration`` per document grows memory by about 0.2 MB per PDF in WeasyPrint 70, and parsing
the stylesheet again costs time, so both live in a module-level cache (:func:`document_kind`). All
documents are laid out with the template folder's :class:`TemplateFolderFetcher`, presentational hints
off, and only the attachments this module is handed (bytes the renderer made; ``<link rel=attachment>``
metadata from the HTML is dropped).

:func:`write` hands WeasyPrint's PDF objects to tasks/report/pdf_structure.py for the PDF/A-3 and PDF/UA-1
finishing; tasks/report/shared_pages.py appends the pages every customer of a run shares.
"""

from __future__ import annotations

import functools
import logging
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import cssselect2
import jinja2
from weasyprint import CSS, HTML, Attachment
from weasyprint.document import Document
from weasyprint.html import UA_COUNTER_STYLE
from weasyprint.pdf import VARIANTS as PDF_VARIANTS
from weasyprint.pdf.metadata import DocumentMetadata
from weasyprint.text.fonts import FontConfiguration
from weasyprint.urls import URLFetcher

from tasks.errors import LimelightError
from tasks.report.fetcher import TemplateFolderFetcher
from tasks.report.paths import TEMPLATES_DIR
from tasks.report.pdf_structure import finish
from tasks.report.text import w3c_utc

LOGGER = logging.getLogger(__name__)

_LOCK = threading.Lock()
_ENV: jinja2.Environment | None = None
_FONT_CONFIG: FontConfiguration | None = None
_KINDS: dict[str, DocumentKind] = {}


def jinja_environment() -> jinja2.Environment:
    """The process's Jinja environment: autoescape on for every template name, undefined names fail."""
    global _ENV
    with _LOCK:
        if _ENV is None:
            _ENV = jinja2.Environment(
                loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
                autoescape=True,  # NOT select_autoescape(): it leaves *.j2 / *.jinja names unescaped
                undefined=jinja2.StrictUndefined,
                auto_reload=False,
                trim_blocks=False,
            )
        return _ENV


#: Font families the stylesheets name first, per language, and the Debian package that installs each.
REQUIRED_FONTS = {
    "en": {"Liberation Sans": "fonts-liberation2"},
    "zh-CN": {"Liberation Sans": "fonts-liberation2", "WenQuanYi Micro Hei": "fonts-wqy-microhei"},
}


@functools.lru_cache(maxsize=8)
def require_fonts(language: str) -> None:
    """Fail clearly when a report font is missing: fontconfig would silently substitute another font, so the
    reports would look different from the samples and could lose glyphs (Chinese text as boxes)."""
    try:
        listed = subprocess.run(["fc-list", ":", "family"], check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        raise LimelightError(f"cannot list the installed fonts with fc-list ({error})") from None
    families = {name.strip() for line in listed.splitlines() for name in line.split(",")}
    for family, package in REQUIRED_FONTS.get(language, REQUIRED_FONTS["en"]).items():
        if family not in families:
            raise LimelightError(f"font {family!r} is not installed: install the Debian package {package} "
                                 "(system-packages.txt; `make setup` does it)")


def font_configuration() -> FontConfiguration:
    global _FONT_CONFIG
    with _LOCK:
        if _FONT_CONFIG is None:
            _FONT_CONFIG = FontConfiguration()
        return _FONT_CONFIG


@dataclass
class DocumentKind:
    """One document type (a folder under templates/): its template, stylesheet and fetcher.

    ``ua`` is the folder's own cut-down user-agent stylesheet (``ua.css``), if it has one: its documents are
    then parsed as XML and matched against that sheet only (:class:`_TemplateHTML`).
    """

    name: str
    folder: Path
    fetcher: TemplateFolderFetcher
    template: jinja2.Template
    css: CSS
    image_cache: dict[str, Any]
    ua: CSS | None = None


class _TemplateHTML(HTML):
    """HTML from our own well-formed templates, parsed by expat and styled with a cut-down UA stylesheet.

    WeasyPrint parses HTML with tinyhtml5 (pure Python, about 10 ms per report) and matches every element
    against its whole HTML5 user-agent sheet (about 6% of a render). The templates are XHTML-clean (closed
    void elements, explicit ``<tbody>``, the SVG namespace declared), so expat builds the same tree, and
    ``ua.css`` keeps the UA rules that can match their elements; tests check the PDFs are byte-identical to
    WeasyPrint's own path. Text that expat rejects (none is known: controls are replaced before templating)
    falls back to tinyhtml5. Autoescaped text cannot declare entities, so expat fetches and expands nothing.
    """

    def __init__(self, string: str, base_url: str, url_fetcher: URLFetcher, ua: CSS) -> None:
        self._ua = ua
        try:
            root = ElementTree.fromstring(string)
        except ElementTree.ParseError:
            super().__init__(string=string, base_url=base_url, url_fetcher=url_fetcher)
            return
        self.base_url = base_url  # the templates have no <base>, and data cannot add one
        self.url_fetcher = url_fetcher
        self.media_type = "print"
        self.wrapper_element = cssselect2.ElementWrapper.from_html_root(root, content_language=None)
        self.etree_element = self.wrapper_element.etree_element

    def _ua_stylesheets(self, forms: bool = False) -> list[CSS]:
        return super()._ua_stylesheets(forms) if forms else [self._ua]


def document_kind(name: str, template: str = "report.html") -> DocumentKind:
    """The cached :class:`DocumentKind` for ``templates/<name>/`` (built once per process)."""
    key = f"{name}/{template}"
    kind = _KINDS.get(key)
    if kind is not None:
        return kind
    folder = TEMPLATES_DIR / name
    fetcher = TemplateFolderFetcher(folder)
    env = jinja_environment()
    fonts = font_configuration()
    # Read the stylesheet ourselves (a filename would bypass the fetcher, though it is our own file).
    css = CSS(
        string=(folder / "style.css").read_text(encoding="utf-8"),
        base_url=fetcher.base_url,
        url_fetcher=fetcher,
        font_config=fonts,
    )
    ua_path = folder / "ua.css"
    ua = (CSS(string=ua_path.read_text(encoding="utf-8"), counter_style=UA_COUNTER_STYLE)
          if ua_path.is_file() else None)
    kind = DocumentKind(name, folder, fetcher, env.get_template(f"{name}/{template}"), css, {}, ua)
    with _LOCK:
        _KINDS.setdefault(key, kind)
        return _KINDS[key]


@dataclass(frozen=True)
class PdfSettings:
    """How a PDF is written. ``accessible``: the template is built to PDF/UA-1 (tests/report/test_render_conformance.py
    validates it), so a tagged PDF claims PDF/UA-1 besides PDF/A-3 (:func:`claims_pdf_ua`)."""

    variant: str
    tags: bool
    lang: str
    generated_at: str  # RunInfo.generated_at
    accessible: bool = False


def is_tagged(settings: PdfSettings) -> bool:
    """Whether the PDF gets a structure tree: ``pdf_tags``, unless the variant forces tagging (pdf/a-3a)."""
    return bool(PDF_VARIANTS[settings.variant][1].get("pdf_tags", settings.tags))


def claims_pdf_ua(settings: PdfSettings) -> bool:
    """PDF/UA-1 is claimed (``pdfuaid:part`` 1 in the XMP) for accessible templates, and only when tagged: an
    untagged PDF cannot meet it."""
    return settings.accessible and is_tagged(settings)


@dataclass(frozen=True)
class PdfPart:
    """What makes one output PDF: its metadata and its one attachment."""

    title: str
    author: str
    subject: str
    attachment: bytes
    attachment_name: str
    attachment_description: str


def _options(settings: PdfSettings) -> dict[str, Any]:
    return {
        "pdf_variant": settings.variant,
        "pdf_tags": settings.tags,
        "presentational_hints": False,
        "custom_metadata": False,
        "pdf_forms": False,
    }


def layout(kind: DocumentKind, html: str, settings: PdfSettings) -> Document:
    """Parse and lay out one HTML document with the kind's stylesheet, fonts and fetcher."""
    source = (HTML(string=html, base_url=kind.fetcher.base_url, url_fetcher=kind.fetcher) if kind.ua is None
              else _TemplateHTML(html, kind.fetcher.base_url, kind.fetcher, kind.ua))
    document = source.render(
        stylesheets=[kind.css],
        font_config=font_configuration(),
        cache=kind.image_cache,
        **_options(settings),
    )
    document.metadata.attachments = []  # only bytes we made are ever attached
    return document


def write(document: Document, part: PdfPart | None, settings: PdfSettings, kind: DocumentKind,
          pages: Sequence[Any] | None = None) -> bytes:
    """One archival PDF of ``pages`` (default: all) with fixed metadata and the part's JSON attachment.

    The metadata is replaced, not edited: title, author, subject, language and dates (from the run, so
    re-rendering gives the same bytes); HTML ``<meta>`` and ``<link rel=attachment>`` never reach the PDF.
    ``part=None`` writes pages meant to be appended to another PDF (:func:`tasks.report.shared_pages.shared_pages`):
    no attachment.
    """
    created, moment = w3c_utc(settings.generated_at)
    sub = document.copy(list(pages)) if pages is not None else document.copy()
    sub.metadata = DocumentMetadata(
        title=part.title if part else None,
        authors=[part.author] if part else None,
        description=part.subject if part else None,
        generator="limelight",
        created=created,
        modified=created,
        lang=settings.lang,
    )
    finisher = functools.partial(finish, tagged=is_tagged(settings), claim_ua=claims_pdf_ua(settings))
    if part is None:
        return sub.write_pdf(finisher=finisher, **_options(settings))
    attachment = Attachment(
        string=part.attachment,
        base_url=kind.fetcher.base_url,
        url_fetcher=kind.fetcher,
        name=part.attachment_name,
        description=part.attachment_description,
        created=moment,
        modified=moment,
        relationship="Data",
    )
    return sub.write_pdf(attachments=[attachment], finisher=finisher, **_options(settings))
