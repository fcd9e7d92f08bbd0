"""The configuration reference (tasks/inputs/config_reference.py, the guide's page): every key of the config has
an entry and a description, found by walking the pydantic models here, independently of the generator."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from tasks.inputs.config import Config
from tasks.inputs.config_reference import render, sections

REPO = Path(__file__).resolve().parents[2]


def _nested(annotation: typing.Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in typing.get_args(annotation) for model in _nested(arg)]


def _every_field(model: type[BaseModel] = Config, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], str]]:
    """(section path, key) for every field a TOML file sets, every model under Config, recursively."""
    fields = []
    for name, field in model.model_fields.items():
        if field.exclude:  # Config.source, .source_sha256: set by load_config, not by the file
            continue
        fields.append((path, name))
        for inner in _nested(field.annotation):
            fields.extend(_every_field(inner, path + (name,)))
    return fields


def _page_entries(page: str) -> set[tuple[str, str]]:
    """(section heading, key) for every table row of the rendered page."""
    entries, heading = set(), None
    for line in page.splitlines():
        if line.startswith("## "):
            heading = line
        match = re.match(r"^\| `([^`]+)` \|", line)
        if match:
            entries.add((heading, match.group(1)))
    return entries


def _heading(path: tuple[str, ...]) -> str:
    anchor = "-".join(path) if path else "top-level"
    return next(line for line in render().splitlines() if line.startswith("## ") and line.endswith(f"{{#{anchor}}}"))


def test_every_config_field_has_an_entry_in_the_reference() -> None:
    page = _page_entries(render())
    missing = [f"[{'.'.join(path)}] {name}" for path, name in _every_field() if (_heading(path), name) not in page]
    assert not missing, f"config fields with no entry in the configuration reference: {missing}"
    assert len(page) == len(_every_field()), "the reference lists keys the config does not have"


@pytest.mark.parametrize("section", ["data", "model", "explain", "review", "run", "report", "report.lender",
                                     "features"])
def test_every_section_has_a_heading(section: str) -> None:
    title = f"[[{section}]]" if section == "features" else f"[{section}]"
    assert f"## `{title}` {{#{section.replace('.', '-')}}}" in render()


def test_every_config_field_has_a_description() -> None:
    """A key without a description is a row of the reference that says nothing: add ``description=`` to it."""
    bare = [f"{section.title} {entry.key}" for section in sections() for entry in section.entries
            if not entry.description.strip()]
    assert not bare, f"config fields without a description: {bare}"


def test_reference_shows_types_defaults_and_bounds() -> None:
    rows = {(s.title, e.key): e for s in sections() for e in s.entries}
    num_samples = rows[("[explain]", "num_samples")]
    assert (num_samples.type, num_samples.default, num_samples.constraints) == ("integer", "`5000`", "≥ 10, ≤ 1000000")
    assert rows[("[data]", "decisions")].default == "required"
    assert rows[("[explain]", "kernel_width")].default == "unset"
    assert rows[("[explain]", "design")].type == '`"sobol"` or `"random"`'
    assert rows[("[explain]", "width_grid")].default == "`[0.75, 0.35, 0.2, 0.12, 0.08]`"
    assert rows[("[[features]]", "missing")].default == '`"explain"`'
    assert rows[("the top level", "features")].type == "array of tables, see [`[[features]]`](#features)"
    assert "\\|local_pred - model_pred\\|" in rows[("[review]", "max_prediction_gap")].description


def test_the_guide_generates_the_page_and_does_not_store_it() -> None:
    """The page exists only in the built guide (docs/hooks/config_reference.py), so it cannot go stale."""
    assert not (REPO / "docs" / "configuration-reference.md").exists()
    mkdocs = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    assert "docs/hooks/config_reference.py" in mkdocs
    assert "configuration-reference.md" in mkdocs
