"""WeasyPrint plumbing: one Jinja environment, one CSS and one FontConfiguration per process, safe options.

A new ``FontConfiguration`` per document grows memory by about 0.2 MB per PDF in WeasyPrint 70, and parsing
the stylesheet again costs time, so both live in a module-level cache (:func:`document_kind`). All
documents are laid out with the template folder's :class:`TemplateFolderFetcher`, presentational hints
off, and only the attachments this module is handed (bytes the renderer made; ``<link rel=attachment>``
metadata from the HTML is dropped).
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

import jinja2
from weasyprint import CSS, HTML, Attachment
from weasyprint.document import Document
from weasyprint.pdf.metadata import DocumentMetadata
from weasyprint.text.fonts import FontConfiguration

from tasks.errors import LimelightError
from tasks.render_fetcher import TemplateFolderFetcher
from tasks.render_text import w3c_utc

TEMPLATES_DIR = Path(__file__).resolve().parents[1] / "templates"
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
    """One document type (a folder under templates/): its template, stylesheet and fetcher."""

    name: str
    folder: Path
    fetcher: TemplateFolderFetcher
    template: jinja2.Template
    css: CSS
    image_cache: dict[str, Any]


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
    kind = DocumentKind(name, folder, fetcher, env.get_template(f"{name}/{template}"), css, {})
    with _LOCK:
        _KINDS.setdefault(key, kind)
        return _KINDS[key]


@dataclass(frozen=True)
class PdfSettings:
    variant: str
    tags: bool
    lang: str
    generated_at: str  # RunInfo.generated_at


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
    document = HTML(string=html, base_url=kind.fetcher.base_url, url_fetcher=kind.fetcher).render(
        stylesheets=[kind.css],
        font_config=font_configuration(),
        cache=kind.image_cache,
        **_options(settings),
    )
    document.metadata.attachments = []  # only bytes we made are ever attached
    return document


def write(document: Document, part: PdfPart, settings: PdfSettings, kind: DocumentKind,
          pages: Sequence[Any] | None = None) -> bytes:
    """One archival PDF of ``pages`` (default: all) with fixed metadata and the part's JSON attachment.

    The metadata is replaced, not edited: title, author, subject, language and dates (from the run, so
    re-rendering gives the same bytes); HTML ``<meta>`` and ``<link rel=attachment>`` never reach the PDF.
    """
    created, moment = w3c_utc(settings.generated_at)
    sub = document.copy(list(pages)) if pages is not None else document.copy()
    sub.metadata = DocumentMetadata(
        title=part.title,
        authors=[part.author],
        description=part.subject,
        generator="limelight",
        created=created,
        modified=created,
        lang=settings.lang,
    )
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
    return sub.write_pdf(attachments=[attachment], finisher=_dedupe_associated_files, **_options(settings))


def _dedupe_associated_files(document: Document, pdf: Any) -> None:
    """WeasyPrint 70 lists each PDF/A-3 attachment twice in the catalog's /AF array; keep each once."""
    files = pdf.catalog.get("AF")
    if files is not None:
        unique = list(dict.fromkeys(bytes(f) if isinstance(f, bytes | bytearray) else str(f) for f in files))
        if len(unique) != len(files):
            files.clear()
            files.extend(unique)
