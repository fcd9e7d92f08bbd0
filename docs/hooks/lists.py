"""mkdocs hook: lists written as GitHub renders them (CommonMark), rendered the same by mkdocs.

The guide's pages (and docs/method.md) are written for GitHub: nested lists indented by 2 or 3 spaces, and lists
that start right under a paragraph line. Python-Markdown, which mkdocs uses, wants 4 spaces per level and a blank
line before a list, and otherwise runs the items into the paragraph. This hook rewrites a page's Markdown before
it is rendered: each list level indented by 4 spaces (continuation lines, nested tables and code fences moved with
their item), and a blank line between a paragraph and the list that follows it. The files are not changed.
"""

from __future__ import annotations

import re

_MARKER = re.compile(r"^( *)([-*+]|\d{1,9}[.)])( +)(?=\S)")
_FENCE = re.compile(r"^( *)(```+|~~~+)")


def normalise_lists(markdown: str) -> str:
    """The page with CommonMark list indentation rewritten to Python-Markdown's (4 spaces per level)."""
    out: list[str] = []
    stack: list[int] = []  # source content column of each open list item, outermost first
    fence: tuple[str, int, int] | None = None  # inside a code fence: (its marker, source indent, output indent)
    last = "blank"  # what the previous line was: "blank", "item" (a list marker line) or "text"
    text_depth = 0  # how many list items held the previous text line
    item_paragraph = False  # whether the paragraph of the previous text line began at a list marker
    for line in markdown.split("\n"):
        if fence is not None:
            marker, strip, target = fence
            body = line[strip:] if not line[:strip].strip() else line.lstrip()
            out.append(" " * target + body if line.strip() else "")
            if body.strip() and not body.strip().strip(marker[0]) and body.strip().startswith(marker):
                fence = None
                out.append("")  # the text after a fence is a paragraph of its own
                last = "blank"
            continue
        if not line.strip():
            out.append("")
            last = "blank"
            continue
        indent = len(line) - len(line.lstrip(" "))
        item = _MARKER.match(line)
        opened = _FENCE.match(line)
        if item and last == "text" and not stack and item.group(2)[0] not in "-*+" and item.group(2)[:-1] != "1":
            item = None  # only bullets and "1." interrupt a paragraph (CommonMark), not "2026." in a sentence
        if item and stack and indent >= stack[-1] + 4:
            item = None  # indented past its item's content: text, not a new list
        if indent < 4 and line.lstrip().startswith("#"):
            stack = []
        if item:
            while stack and indent < stack[-1]:
                stack.pop()
            if last == "text" and (not item_paragraph or len(stack) >= text_depth):
                out.append("")  # Python-Markdown starts no list inside a paragraph: a blank line ends it
            out.append(" " * (4 * len(stack)) + line[indent:])
            stack.append(indent + len(item.group(2)) + len(item.group(3)))
            last = "item"
        else:
            if opened and last == "text":
                out.append("")  # a fence inside a paragraph would be rendered inside its <p>
            if last == "blank":
                while stack and indent < stack[-1]:
                    stack.pop()
            if not stack:
                out.append(line)
            else:
                out.append(" " * (4 * len(stack) + max(0, indent - stack[-1])) + line.lstrip(" "))
            item_paragraph = last != "blank" and (last == "item" or item_paragraph)
            last = "text"
            text_depth = len(stack)
        if opened:
            fence = (opened.group(2), indent, len(out[-1]) - len(out[-1].lstrip(" ")))
            last, item_paragraph, text_depth = "text", False, len(stack)
    return "\n".join(out)


def on_page_markdown(markdown: str, **_: object) -> str:
    return normalise_lists(markdown)
