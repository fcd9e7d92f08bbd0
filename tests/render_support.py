"""Helpers shared by the report tests (tests/report/, tests/explain/test_aggregate.py): no tests here."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pikepdf

from tasks.report.samples import demo_config, demo_run, synthetic_inputs

__all__ = ["decoded_pdf", "demo_config", "demo_run", "embedded_files", "flat", "has_sentence", "outline",
           "pdf_text", "structure_problems", "synthetic_inputs"]


def pdf_text(path: Path, first: int | None = None, last: int | None = None) -> str:
    """Text of a PDF as pdftotext (poppler) extracts it."""
    args = ["pdftotext", "-enc", "UTF-8"]
    if first:
        args += ["-f", str(first)]
    if last:
        args += ["-l", str(last)]
    out = subprocess.run([*args, str(path), "-"], check=True, capture_output=True)
    return out.stdout.decode("utf-8")


def flat(text: str) -> str:
    """Whitespace collapsed (lines wrap anywhere in a PDF); bidi isolates removed."""
    return " ".join(text.replace("\u2068", "").replace("\u2069", "").split())


def has_sentence(text: str, sentence: str, slack: int = 4) -> bool:
    """``sentence`` appears in ``text`` word by word, allowing a few words of a neighbouring table cell in
    between (pdftotext reads a table row line by line across its cells)."""
    if any("\u4e00" <= ch <= "\u9fff" for ch in sentence):  # no spaces in Chinese: compare characters
        words, wanted, slack = list("".join(flat(text).split())), list("".join(flat(sentence).split())), 16
    else:
        words, wanted = flat(text).split(" "), flat(sentence).split(" ")
    for start, word in enumerate(words):
        if word != wanted[0]:
            continue
        position, extra = start + 1, 0
        for target in wanted[1:]:
            while position < len(words) and words[position] != target and extra <= slack:
                position, extra = position + 1, extra + 1
            if position >= len(words) or words[position] != target:
                break
            position += 1
        else:
            return True
    return False


def decoded_pdf(path: Path) -> bytes:
    """Every string and every decoded stream of a PDF, concatenated: what a byte-level leak check searches."""
    chunks: list[bytes] = []
    with pikepdf.open(path) as pdf:
        for obj in pdf.objects:
            if isinstance(obj, pikepdf.Stream):
                try:
                    chunks.append(obj.read_bytes())
                except pikepdf.PdfError:
                    chunks.append(obj.read_raw_bytes())
            chunks.append(repr(obj).encode("utf-8", "replace"))
    return b"\n".join(chunks)


def embedded_files(path: Path) -> dict[str, bytes]:
    """Name -> bytes of every embedded file (document-level and file-attachment annotations)."""
    files: dict[str, bytes] = {}
    with pikepdf.open(path) as pdf:
        for name, spec in pdf.attachments.items():
            files[name] = spec.get_file().read_bytes()
        for page in pdf.pages:
            for annot in page.get("/Annots", []):
                if annot.get("/Subtype") == "/FileAttachment":
                    files[f"annot:{annot.FS.get('/F')}"] = annot.FS.EF.F.read_bytes()
    return files


def structure_problems(path: Path) -> list[str]:
    """What is wrong with a tagged PDF's structure tree (empty when sound): every page's /StructParents has a
    parent-tree entry with one structure element per marked-content id of the page (null for an id no longer
    used), those elements name that page as /Pg and are listed by their /P (no content outside the tree), and
    every element's /P is the element that lists it."""
    problems: list[str] = []
    with pikepdf.open(path) as pdf:
        root = pdf.Root.StructTreeRoot
        nums = root.ParentTree.Nums
        tree = {int(nums[i]): nums[i + 1] for i in range(0, len(nums), 2)}
        for number, page in enumerate(pdf.pages, start=1):
            mcids = {int(m) for m in re.findall(rb"/MCID (\d+)", page.obj.Contents.read_bytes())}
            entry = tree.get(int(page.obj.get("/StructParents", -1)))
            if entry is None:
                problems.append(f"page {number}: no parent-tree entry")
                continue
            used = {mcid for mcid, element in enumerate(entry) if element is not None}  # null: now an artifact
            if mcids != used:
                problems.append(f"page {number}: {len(mcids)} marked contents, {len(used)} parent-tree elements")
            elements = [element for element in entry if element is not None]
            if any(element.Pg.objgen != page.obj.objgen for element in elements):
                problems.append(f"page {number}: a parent-tree element names another page")
            for element in elements:
                kids = element.P.get("/K")
                listed = list(kids) if isinstance(kids, pikepdf.Array) else [kids]
                if not any(isinstance(k, pikepdf.Dictionary) and k.objgen == element.objgen for k in listed):
                    problems.append(f"page {number}: {element.S} element of the parent tree is not in the tree")
        document = root.K[0]
        stack = [(document, root)]
        while stack:
            element, parent = stack.pop()
            if element.P.objgen != parent.objgen:
                problems.append(f"{element.S} element: /P is not its parent")
            kids = element.get("/K")
            if isinstance(kids, pikepdf.Array):
                stack.extend((kid, element) for kid in kids if isinstance(kid, pikepdf.Dictionary) and "/S" in kid)
    return problems


def outline(path: Path) -> list[tuple[int, str, int]]:
    """The PDF's outline (bookmarks) as (depth, title, page number), in order."""
    entries: list[tuple[int, str, int]] = []
    with pikepdf.open(path) as pdf:
        pages = {page.obj.objgen: number for number, page in enumerate(pdf.pages, start=1)}

        def walk(item: pikepdf.Dictionary | None, depth: int) -> None:
            while item is not None:
                entries.append((depth, str(item.Title), pages[item.Dest[0].objgen]))
                if "/First" in item:
                    walk(item.First, depth + 1)
                item = item.get("/Next")

        if "/Outlines" in pdf.Root and "/First" in pdf.Root.Outlines:
            walk(pdf.Root.Outlines.First, 0)
    return entries
