"""Shared test set-up: quiet, isolated Prefect; one Prefect server per session; small demo configs.

The environment is set here, at import, before any test module imports prefect: a per-session
PREFECT_HOME (no profile, no API URL from the developer's machine), logging quiet, analytics off.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="limelight-tests-prefect-"))
os.environ["PREFECT_HOME"] = str(_SESSION_HOME)
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("PREFECT_PROFILE", None)
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "config" / "demo.toml"
#: Decisions in the end-to-end tests and the LIME samples per decision: small, so the suite stays fast.
TEST_DECISIONS = 48
TEST_SAMPLES = 500
TEST_SHARD = 16


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_SESSION_HOME, ignore_errors=True)


def write_config(path: Path, raw: dict[str, Any]) -> Path:
    from tasks.io import dump_toml

    path.write_text(dump_toml(raw), encoding="utf-8")
    return path


def demo_raw() -> dict[str, Any]:
    import tomllib

    return tomllib.loads(DEMO_CONFIG.read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def demo_artifacts() -> Any:
    """The real demo (decisions, reference, model), built once and cached in .cache/demo."""
    from tasks.demo import build_demo

    return build_demo()


@pytest.fixture(scope="session")
def small_demo(demo_artifacts: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the first TEST_DECISIONS demo decisions; returns the path of a config using them."""
    import pyarrow.parquet as pq

    folder = tmp_path_factory.mktemp("small-demo")
    decisions = pq.read_table(demo_artifacts.decisions).slice(0, TEST_DECISIONS)
    pq.write_table(decisions, folder / "decisions.parquet", row_group_size=20)
    raw = demo_raw()
    raw["data"].update({"decisions": str(folder / "decisions.parquet"), "reference": str(demo_artifacts.reference)})
    raw["model"]["path"] = str(demo_artifacts.model)
    raw["explain"]["num_samples"] = TEST_SAMPLES
    raw["run"]["shard_size"] = TEST_SHARD
    return write_config(folder / "limelight.toml", raw)


@pytest.fixture
def make_config(small_demo: Path, tmp_path: Path):
    """Write a variant of the small demo config: ``make_config(explain={"engine": "lime"}, ...)``;
    ``features={"annual_income": {"missing": "fail"}}`` changes the named ``[[features]]``."""
    import tomllib

    def make(name: str = "variant.toml", **sections: dict[str, Any]) -> Path:
        raw = tomllib.loads(small_demo.read_text(encoding="utf-8"))
        for section, values in sections.items():
            if section == "features":
                for feature in raw["features"]:
                    feature.update(values.get(feature["name"], {}))
                continue
            raw.setdefault(section, {}).update(values)
        return write_config(tmp_path / name, raw)

    return make


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """One real Prefect server for the whole session (flows/server.py), exported as PREFECT_API_URL.

    CLI subprocesses started by tests inherit the URL and so reuse this server.
    """
    from flows.server import prefect_server

    with prefect_server() as url:
        yield url


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` run only where a CUDA device is visible (counted without initialising CUDA)."""
    from flows.cluster import visible_gpus

    if visible_gpus():
        return
    skip = pytest.mark.skip(reason="no CUDA device visible")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def reference_explanations(prefect_api: str, small_demo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small demo explained once with ONE CPU worker: what every other way of running must reproduce."""
    from flows.pipeline import limelight_flow

    target = tmp_path_factory.mktemp("reference-run") / "explanations.parquet"
    summary = limelight_flow(config_path=str(small_demo), out=str(target), devices="cpu:1", mode="explain")
    assert summary["counts"]["decisions_in"] == TEST_DECISIONS
    return target
