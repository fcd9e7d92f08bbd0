"""The README and the user guide (issue 20): a README a newcomer reads first, whose commands and links hold, and
guide pages whose documented contracts match the code. `make docs` builds the guide with --strict (broken links
and anchors, pages missing from the nav); these tests need no mkdocs."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
MAX_README_LINES = 200
PLANNED_COMMANDS: set[str] = set()  # commands a page may name before they exist (none now)

_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
_CODE_BLOCK = re.compile(r"^```.*?^```", re.S | re.M)


def _code_blocks(text: str) -> list[str]:
    return _CODE_BLOCK.findall(text)


def test_readme_is_short() -> None:
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_README_LINES, f"README.md: {lines} lines; move detail into docs/ (at most {MAX_README_LINES})"


@pytest.mark.parametrize("page", [README, *sorted(DOCS.glob("*.md"))], ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page: Path) -> None:
    """Every relative link of the README and of the guide's pages names a file that exists (the generated
    configuration reference exists in the built guide only)."""
    text = _CODE_BLOCK.sub("", page.read_text(encoding="utf-8"))
    generated = {"configuration-reference.md"} if page.parent == DOCS else set()
    broken = []
    for target in _LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue
        path = target.split("#", 1)[0]
        if path not in generated and not (page.parent / path).exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(REPO)}: links to missing files: {broken}"


def test_readme_make_commands_are_make_targets() -> None:
    """`make demo` and `make test` (and any other `make X` the README shows) are targets of the Makefile."""
    targets = set(re.findall(r"^([a-z][a-z-]*):", (REPO / "Makefile").read_text(encoding="utf-8"), re.M))
    blocks = _code_blocks(README.read_text(encoding="utf-8"))
    shown = {m for block in blocks for m in re.findall(r"^make (\w+)", block, re.M)}
    assert {"demo", "test"} <= shown
    assert shown <= targets, shown - targets


def _cli_commands() -> set[str]:
    tree = ast.parse((REPO / "flows" / "cli.py").read_text(encoding="utf-8"))
    commands = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            for decorator in node.decorator_list:
                call = decorator.func if isinstance(decorator, ast.Call) else decorator
                if isinstance(call, ast.Attribute) and call.attr == "command":
                    named = [a.value for a in getattr(decorator, "args", []) if isinstance(a, ast.Constant)]
                    commands.add(named[0] if named else node.name.replace("_", "-"))
        # a group of subcommands: app.add_typer(review_app, name="review") -> `limelight review ...`
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_typer":
            commands.update(k.value.value for k in node.keywords
                            if k.arg == "name" and isinstance(k.value, ast.Constant))
    return commands


@pytest.mark.parametrize("page", [README, DOCS / "operations.md", DOCS / "your-model.md"],
                         ids=lambda p: str(p.relative_to(REPO)))
def test_documented_limelight_commands_exist(page: Path) -> None:
    commands = _cli_commands()
    assert {"run", "validate", "demo", "rerender"} <= commands
    shown = {m for block in _code_blocks(page.read_text(encoding="utf-8"))
             for m in re.findall(r"^limelight ([a-z-]+)", block, re.M)}
    assert shown or page.name == "your-model.md", page
    assert shown <= commands | PLANNED_COMMANDS, shown - commands


def _documented_columns(page: str, output: str) -> list[str]:
    """The first code span of the output contract table's row for ``output``, split on commas."""
    text = (DOCS / page).read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith(f"| `{output}`"))
    spans = re.findall(r"`([^`]+)`", row.split("|")[2])
    return [column.strip() for column in spans[0].split(",")]


def test_output_contract_lists_the_explanations_columns() -> None:
    from tasks.explain.aggregate import explanation_schema

    documented = _documented_columns("output-contract.md", "OUT/explanations.parquet")
    assert documented[0] == "<id column>"
    assert documented[1:] == explanation_schema("customer_id").names[1:]


def test_output_contract_lists_the_report_index_columns() -> None:
    from tasks.report.index import SCHEMA

    assert _documented_columns("output-contract.md", "OUT/reports.parquet") == SCHEMA.names


def _lists_hook():
    spec = importlib.util.spec_from_file_location("docs_lists_hook", DOCS / "hooks" / "lists.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lists_hook_renders_github_lists_for_python_markdown() -> None:
    """docs/hooks/lists.py: 2- and 3-space nesting become 4 spaces; a list under a paragraph gets a blank line."""
    source = (
        "Failure stages:\n- `input`: a row\n  continued\n  - nested\n- `render`\n\n"
        "1. **Reference**:\n   - each bin\n\n   Tests check.\n2. **Perturbations**\n\n"
        "- item\n  ```\n  code\n  ```\n  after\n\nThe year\n2026. is not a list\n"
    )
    assert _lists_hook().normalise_lists(source) == (
        "Failure stages:\n\n- `input`: a row\n    continued\n\n    - nested\n- `render`\n\n"
        "1. **Reference**:\n    - each bin\n\n    Tests check.\n\n2. **Perturbations**\n\n"
        "- item\n    ```\n    code\n    ```\n\n    after\n\nThe year\n2026. is not a list\n"
    )


@pytest.mark.parametrize("page", sorted(DOCS.glob("*.md")), ids=lambda p: p.name)
def test_guide_pages_render_their_structure_as_github_does(page: Path) -> None:
    """With the lists hook, mkdocs' Python-Markdown gives each page the lists, tables, code blocks and headings a
    CommonMark renderer (GitHub) gives it: no list run into its paragraph, no nesting lost."""
    markdown = pytest.importorskip("markdown")  # the dev extra (mkdocs)
    from markdown_it import MarkdownIt  # rich's dependency

    text = page.read_text(encoding="utf-8")
    extensions = ["tables", "attr_list", "toc", "pymdownx.superfences"]
    ours = markdown.markdown(_lists_hook().normalise_lists(text), extensions=extensions)
    github = MarkdownIt("commonmark").enable("table").render(text)
    tags = ("li", "ul", "ol", "table", "pre", "h1", "h2", "h3", "h4")

    def count(html: str) -> dict[str, int]:
        return {tag: len(re.findall(rf"<{tag}[ >]", html)) for tag in tags}

    assert count(ours) == count(github)
