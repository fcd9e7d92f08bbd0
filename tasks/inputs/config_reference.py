"""The configuration reference, generated from the config's pydantic models, so it cannot drift from the code.

Every model under :class:`~tasks.inputs.config.Config`, recursively, becomes one section of the page: each field's
TOML key, type, default, constraints and description. The user guide's "Configuration reference" page is this
module's output (``make docs``: the mkdocs hook ``docs/hooks/config_reference.py``); ``python -m
tasks.inputs.config_reference`` prints it. ``tests/inputs/test_config_reference.py`` fails when a field has no
entry or no description.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from tasks.inputs.config import Config

INTRO = """\
# Configuration reference

Every key of the TOML config, generated from the pydantic models in `tasks/inputs/config.py` and
`tasks/inputs/report_config.py` when the guide is built: what you read here is what `limelight validate` and
`limelight run` accept. Unknown keys and bad values stop a run with one line that names the file and the key.
Relative paths resolve against the config file's folder. A worked example is on the
[Configuration](configuration.md) page.
"""

_TYPE_NAMES: dict[Any, str] = {str: "string", int: "integer", float: "float", bool: "boolean", Path: "path"}
_BOUNDS = (
    (annotated_types.Ge, "ge", "≥"), (annotated_types.Gt, "gt", ">"),
    (annotated_types.Le, "le", "≤"), (annotated_types.Lt, "lt", "<"),
)


@dataclass(frozen=True)
class Entry:
    """One key of the config as the reference shows it."""

    key: str
    type: str
    default: str
    constraints: str
    description: str


@dataclass(frozen=True)
class Section:
    """One TOML table (``[explain]``), array of tables (``[[features]]``) or the top level, and its keys."""

    title: str
    anchor: str
    model: type[BaseModel]
    intro: str
    entries: tuple[Entry, ...]


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation holds: itself, or inside ``X | None``, ``list[X]``, ``tuple[X, ...]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in typing.get_args(annotation) for model in _models_in(arg)]


def _is_array_of_tables(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (list, tuple) and bool(_models_in(annotation))


def section_title(path: tuple[str, ...], array: bool) -> str:
    """('report', 'lender') -> "[report.lender]"; ('features',) as an array of tables -> "[[features]]"."""
    if not path:
        return "the top level"
    name = ".".join(path)
    return f"[[{name}]]" if array else f"[{name}]"


def _anchor(path: tuple[str, ...]) -> str:
    return "-".join(path) if path else "top-level"


def type_name(annotation: Any) -> str:
    """A TOML reader's name for a field's type: ``integer``, ``array of strings``, ``"sobol" or "random"``."""
    if annotation is type(None):
        return "unset"
    if annotation in _TYPE_NAMES:
        return _TYPE_NAMES[annotation]
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        return " or ".join(f'`"{arg}"`' if isinstance(arg, str) else f"`{arg}`" for arg in args)
    if origin in (typing.Union, types.UnionType):
        names = [type_name(arg) for arg in args if arg is not type(None)]
        return " or ".join(names)
    if origin in (list, tuple):
        inner = [arg for arg in args if arg is not Ellipsis]
        if len(inner) == 1 and _models_in(inner[0]):
            return "array of tables"
        element = type_name(inner[0]) if len(inner) == 1 else "values"
        plural = {"string": "strings", "integer": "integers", "float": "floats", "boolean": "booleans",
                  "path": "paths"}.get(element, element)
        return f"array of {plural}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "table"
    return getattr(annotation, "__name__", str(annotation))


def toml_value(value: Any) -> str:
    """A default as it would be written in the TOML file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | Path):
        return f'"{value}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return str(value)


def default_text(field: FieldInfo) -> str:
    """``required``, ``unset``, a TOML value, or ``see [report.lender]`` for a nested table."""
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            return "its keys' defaults"
    else:
        value = field.default
    if value is None or value is PydanticUndefined:
        return "unset"
    return f"`{toml_value(value)}`"


def constraints_text(field: FieldInfo) -> str:
    """The field's declared bounds and lengths: ``≥ 10, ≤ 1000000``, ``at least 1 item``."""
    parts: list[str] = []
    for item in field.metadata:
        for kind, attribute, symbol in _BOUNDS:
            if isinstance(item, kind):
                bound = getattr(item, attribute)
                parts.append(f"{symbol} {'2⁶³' if bound == 2**63 else bound}")
        if isinstance(item, annotated_types.MinLen):
            parts.append(f"at least {item.min_length} item{'s' if item.min_length != 1 else ''}"
                         if typing.get_origin(field.annotation) in (list, tuple) else
                         f"at least {item.min_length} character{'s' if item.min_length != 1 else ''}")
        if isinstance(item, annotated_types.MaxLen):
            parts.append(f"at most {item.max_length}")
    return ", ".join(parts)


def config_fields(model: type[BaseModel]) -> dict[str, FieldInfo]:
    """The fields a TOML file sets: all but the excluded bookkeeping ones (``Config.source``)."""
    return {name: field for name, field in model.model_fields.items() if not field.exclude}


def _escape(text: str) -> str:
    """One line of Markdown text for a table cell: no cell break, no HTML tag, no emphasis."""
    text = " ".join(text.split())
    for char, escaped in (("\\", "\\\\"), ("|", "\\|"), ("*", "\\*"), ("&", "&amp;"), ("<", "&lt;"), (">", "&gt;")):
        text = text.replace(char, escaped)
    return text


def _entry(name: str, field: FieldInfo, path: tuple[str, ...]) -> Entry:
    annotation = field.annotation
    kind = type_name(annotation)
    nested = _models_in(annotation)
    if nested:
        title = section_title(path + (name,), _is_array_of_tables(annotation))
        kind = f"{kind}, see [`{title}`](#{_anchor(path + (name,))})"
    return Entry(
        key=name, type=kind, default=default_text(field), constraints=constraints_text(field),
        description=_escape(field.description or ""),
    )


def sections(model: type[BaseModel] = Config, path: tuple[str, ...] = (), array: bool = False) -> list[Section]:
    """The reference's sections, depth first: the model's own keys, then each nested table's."""
    fields = config_fields(model)
    doc = _escape((model.__doc__ or "").strip().split("\n\n")[0]) if model.__doc__ else ""
    result = [Section(
        title=section_title(path, array), anchor=_anchor(path), model=model, intro=doc,
        entries=tuple(_entry(name, field, path) for name, field in fields.items()),
    )]
    for name, field in fields.items():
        for inner in _models_in(field.annotation):
            result.extend(sections(inner, path + (name,), _is_array_of_tables(field.annotation)))
    return result


def render(model: type[BaseModel] = Config) -> str:
    """The whole page as Markdown."""
    lines = [INTRO]
    for section in sections(model):
        heading = section.title.capitalize() if section.title == "the top level" else f"`{section.title}`"
        lines += [f"## {heading} {{#{section.anchor}}}", ""]
        if section.intro:
            lines += [section.intro, ""]
        lines += ["| key | type | default | constraints | description |", "|---|---|---|---|---|"]
        lines += [f"| `{e.key}` | {e.type} | {e.default} | {e.constraints} | {e.description} |"
                  for e in section.entries]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - prints the page
    print(render(), end="")
