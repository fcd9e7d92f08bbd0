"""mkdocs hook: the "Configuration reference" page, generated at build time from the config's pydantic models
(tasks/inputs/config_reference.py), so the guide cannot drift from the code. The page exists only in the built
site; ``python -m tasks.inputs.config_reference`` prints it."""

from __future__ import annotations

import sys
from pathlib import Path

from mkdocs.structure.files import File, Files

PAGE = "configuration-reference.md"
REPO = Path(__file__).resolve().parents[2]


def _render() -> str:
    # This checkout's tasks/, even where an editable install of another checkout comes first on the path.
    sys.path.insert(0, str(REPO))
    try:
        from tasks.inputs.config_reference import render
    finally:
        sys.path.remove(str(REPO))
    return render()


def on_files(files: Files, config) -> Files:  # noqa: ANN001 - mkdocs' hook signature
    if files.get_file_from_path(PAGE) is not None:
        raise RuntimeError(f"docs/{PAGE} is generated at build time: remove the file")
    files.append(File.generated(config, PAGE, content=_render()))
    return files
