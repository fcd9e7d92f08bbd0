"""Where the report step's bundled files live in the repository: templates/, config/texts/, config/reasons/.

A module of its own so that every report module can import them without importing another's code: the
WeasyPrint plumbing (tasks/report/pdf.py) loads the templates, the texts module (tasks/report/text.py) hashes
them for the manifest (:func:`tasks.report.text.report_sources`) and reads the texts and reason catalogs.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATES_DIR = REPO_ROOT / "templates"
TEXTS_DIR = REPO_ROOT / "config" / "texts"
REASONS_DIR = REPO_ROOT / "config" / "reasons"
