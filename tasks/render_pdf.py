"""WeasyPrint plumbing: one Jinja environment, one CSS and one FontConfiguration per process, safe options.

A new ``FontConfiguration`` per document grows memory by about 0.2 MB per PDF in WeasyPrint 70, and parsing
the stylesheet again costs time, so both live in a module-level cache (:func:`document_kind`). All
documents are laid out with the template folder's :class:`TemplateFolderFetcher`, presentational hints
off, and only the attachments this module is handed (bytes the renderer made; ``<link rel=attachment>``
metadata from the HTML is dropped).

Pages that are the same for every customer of a run (rights notice, audit annex) are laid out and written once
per process (:func:`shared_pages`) and appended to each customer's own pages at PDF level
(:func:`append_shared`): WeasyPrint costs about 1 ms per line of text, and those pages are half the lines.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import subprocess
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import cssselect2
import jinja2
import pikepdf
from weasyprint import CSS, HTML, Attachment
from weasyprint.document import Document
from weasyprint.html import UA_COUNTER_STYLE
from weasyprint.pdf.metadata import DocumentMetadata
from weasyprint.text.fonts import FontConfiguration
from weasyprint.urls import URLFetcher

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
    ``part=None`` writes pages meant to be appended to another PDF (:func:`shared_pages`): no attachment.
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
    if part is None:
        return sub.write_pdf(finisher=_dedupe_associated_files, **_options(settings))
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


# ---------------------------------------------------------------------------------------------- shared pages


@dataclass
class SharedPages:
    """Pages every customer of a run shares, written once: appended to each customer's PDF by :func:`append_shared`.

    They are made from config and run data only (never customer data), so appending them cannot leak one
    customer's data into another's file. ``pdf`` is read under ``lock`` (QPDF objects are not thread-safe).
    """

    pdf: pikepdf.Pdf
    count: int
    lock: threading.Lock


_SHARED: OrderedDict[str, SharedPages] = OrderedDict()
_SHARED_MAX = 8


def shared_pages(kind: DocumentKind, html: str, settings: PdfSettings, lead: int) -> SharedPages:
    """The pages of ``html`` after its first ``lead`` pages, laid out and written once per process.

    ``html`` starts with ``lead`` blank pages so that WeasyPrint's page counters already count the customer's
    own pages ("Page 2 of 2"); the blank pages are dropped before writing. The result is cached on the HTML,
    the settings and ``lead`` (a run has one or two variants: customers with one page, rarely two).
    """
    key = hashlib.sha256(repr((kind.name, html, settings, lead)).encode("utf-8", "surrogatepass")).hexdigest()
    with _LOCK:
        cached = _SHARED.get(key)
        if cached is not None:
            _SHARED.move_to_end(key)
            return cached
    document = layout(kind, html, settings)
    if len(document.pages) <= lead:
        raise LimelightError(f"templates/{kind.name}: the shared pages are empty")
    pdf = pikepdf.open(io.BytesIO(write(document, None, settings, kind, pages=document.pages[lead:])))
    _prefix_structure_ids(pdf)
    shared = SharedPages(pdf, len(pdf.pages), threading.Lock())
    with _LOCK:
        shared = _SHARED.setdefault(key, shared)  # a thread that lost the race uses the winner's copy
        while len(_SHARED) > _SHARED_MAX:
            _SHARED.popitem(last=False)  # not closed: a thread may still be appending it; GC closes it
        return shared


def _prefix_structure_ids(pdf: pikepdf.Pdf) -> None:
    """Table header IDs (``/ID``, ``/A /Headers``) are ``<object number>-<row>-<col>``, unique in one PDF only:
    prefix the shared pages' IDs so that they cannot collide with the customer's after :func:`append_shared`."""
    root = pdf.Root.get("/StructTreeRoot")
    if root is None:
        return
    stack = list(root.K) if isinstance(root.K, pikepdf.Array) else [root.K]
    while stack:
        element = stack.pop()
        if not isinstance(element, pikepdf.Dictionary):
            continue
        if "/ID" in element:
            element.ID = pikepdf.String("s-" + str(element.ID))
        attributes = element.get("/A")
        if isinstance(attributes, pikepdf.Dictionary) and "/Headers" in attributes:
            attributes.Headers = pikepdf.Array([pikepdf.String("s-" + str(h)) for h in attributes.Headers])
        kids = element.get("/K")
        if isinstance(kids, pikepdf.Array):
            stack.extend(kids)
        elif isinstance(kids, pikepdf.Dictionary):
            stack.append(kids)


def append_shared(base: bytes, shared: SharedPages) -> bytes:
    """``base`` (one customer's archival PDF from :func:`write`) with the shared pages appended.

    Everything document-level stays the base's: PDF/A XMP metadata, OutputIntent, the JSON attachment and
    /AF, /Lang, title, ViewerPreferences. The shared pages bring their own content streams and font subsets
    (embedded, made from run text only). When the PDF is tagged, the shared pages' structure elements join
    the base's /Document element and the parent tree (renumbered); their outline entries join the base's
    outline after its last entry. The file ID is derived from the content, so the result is deterministic.
    """
    pdf = pikepdf.open(io.BytesIO(base))
    with shared.lock:
        source = shared.pdf
        first_new = len(pdf.pages)
        pdf.pages.extend(source.pages)  # copies the pages; later copies from `source` reuse these objects
        tree = pdf.Root.get("/StructTreeRoot")
        source_tree = source.Root.get("/StructTreeRoot")
        if (tree is None) != (source_tree is None):
            raise LimelightError("shared pages and customer pages disagree on tagging (pdf_tags)")
        if tree is not None:
            _graft_structure(pdf, tree, source, source_tree, first_new)
        if "/Outlines" in source.Root and "/First" in source.Root.Outlines:
            _graft_outline(pdf, source)
    out = io.BytesIO()
    pdf.save(out, deterministic_id=True, object_stream_mode=pikepdf.ObjectStreamMode.generate)
    pdf.close()
    return out.getvalue()


def _graft_structure(pdf: pikepdf.Pdf, tree: pikepdf.Dictionary, source: pikepdf.Pdf,
                     source_tree: pikepdf.Dictionary, first_new: int) -> None:
    document = tree.K[0] if isinstance(tree.K, pikepdf.Array) else tree.K
    nums = tree.ParentTree.Nums
    offset = max((int(nums[i]) for i in range(0, len(nums), 2)), default=-1) + 1
    source_document = source_tree.K[0] if isinstance(source_tree.K, pikepdf.Array) else source_tree.K
    for element in source_document.K:
        copied = pdf.copy_foreign(element)
        copied.P = document
        document.K.append(copied)
    source_nums = source_tree.ParentTree.Nums
    for i in range(0, len(source_nums), 2):
        value = source_nums[i + 1]
        nums.append(int(source_nums[i]) + offset)
        nums.append(pdf.copy_foreign(value) if value.is_indirect
                    else pikepdf.Array([pdf.copy_foreign(v) for v in value]))
    for page in pdf.pages[first_new:]:
        if "/StructParents" in page.obj:
            page.obj.StructParents = int(page.obj.StructParents) + offset
        for annotation in page.obj.get("/Annots", []):
            if "/StructParent" in annotation:
                annotation.StructParent = int(annotation.StructParent) + offset


def _graft_outline(pdf: pikepdf.Pdf, source: pikepdf.Pdf) -> None:
    """Append the shared pages' outline: under the base's last top-level entry (the report title), as
    WeasyPrint nests the h2 entries that follow an h1, or at the top level when the base has none."""
    source_outlines = source.Root.Outlines
    first = pdf.copy_foreign(source_outlines.First)
    last = pdf.copy_foreign(source_outlines.Last)
    added = int(source_outlines.get("/Count", 0))
    if "/Outlines" not in pdf.Root:
        pdf.Root.Outlines = pdf.make_indirect(pikepdf.Dictionary(Type=pikepdf.Name.Outlines, Count=0))
    root = pdf.Root.Outlines
    parent = root.Last if "/Last" in root else root
    item = first
    while True:
        item.Parent = parent
        if item.objgen == last.objgen:
            break
        item = item.Next
    if "/Last" in parent:
        parent.Last.Next = first
        first.Prev = parent.Last
    else:
        parent.First = first
    parent.Last = last
    node = parent
    while True:  # open entries count their visible descendants (WeasyPrint writes them open)
        node.Count = int(node.get("/Count", 0)) + added
        if "/Parent" not in node:
            break
        node = node.Parent
