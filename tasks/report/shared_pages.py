"""Pages every customer of a run shares (rights notice, audit annex), laid out once and appended with pikepdf.

They are laid out and written once per process (:func:`shared_pages`) and appended to each customer's own pages
at PDF level (:func:`append_shared`): WeasyPrint costs about 1 ms per line of text, and those pages are half the
lines. The customer's PDF keeps everything document-level; the shared pages' structure elements, parent-tree
entries and outline entries are grafted onto it.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections import OrderedDict
from dataclasses import dataclass

import pikepdf

from tasks.errors import LimelightError
from tasks.report.pdf import DocumentKind, PdfSettings, layout, write
from tasks.report.pdf_structure import crlf_before_endstream

_LOCK = threading.Lock()  # guards _SHARED, the cache of written shared pages


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
    return crlf_before_endstream(out.getvalue())


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
        nums.append(pdf.copy_foreign(value) if value.is_indirect  # null: an MCID that became an artifact
                    else pikepdf.Array([None if v is None else pdf.copy_foreign(v) for v in value]))
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
