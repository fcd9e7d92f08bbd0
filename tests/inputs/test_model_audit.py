"""The model in the audit: the manifest's model record (format, runtime, the file's or files' SHA-256), the run
identity it joins, and rerender's check that the record adds up to the model hash the PDFs carry."""

from __future__ import annotations

import hashlib
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb

from tasks.errors import InputError, ModelError
from tasks.inputs import model_formats
from tasks.inputs.config import parse_config
from tasks.inputs.model import model_sha256
from tasks.report.rerender import check_model_record
from tasks.run.manifest import Execution, build_manifest, build_run_info, new_run_id
from tasks.run.state import effective_settings, run_identity

STARTED = datetime(2026, 11, 22, 2, 0, 5, tzinfo=UTC)


def xgboost_file(path: Path) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    xgb.XGBClassifier(n_estimators=5, max_depth=2).fit(x, x[:, 0] > 0).get_booster().save_model(str(path))
    return path


def config(tmp_path: Path, model: dict):
    raw = {
        "data": {"decisions": "d.parquet", "reference": "r.parquet"},
        "model": {"classes": ["approved", "declined"], "explain": "declined", **model},
        "features": [{"name": f"f{i}", "label": f"F{i}", "kind": "numeric"} for i in range(3)],
    }
    return parse_config(raw, tmp_path / "c.toml", sha256="c" * 64)


def manifest_of(cfg) -> dict:
    sha = model_sha256(cfg.model)
    run = build_run_info(cfg, run_id=new_run_id(STARTED), started=STARTED, model_sha256=sha,
                         decisions_sha256="d" * 64, reference_sha256="r" * 64)
    execution = Execution(devices="cpu:1", cluster=None, workers=1, shards=1, shard_size=8, torch_threads=1)
    return build_manifest(cfg, run, finished=STARTED + timedelta(seconds=1), execution=execution, counts={},
                          review_ids=[], outputs={})


def bank_entrypoint(tmp_path: Path, monkeypatch) -> Path:
    (tmp_path / "bank_scorer.py").write_text(textwrap.dedent("""
        import numpy as np

        def load():
            return lambda rows: np.tile([0.5, 0.5], (len(rows), 1))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    weights = tmp_path / "artifacts" / "weights.npy"
    weights.parent.mkdir()
    np.save(weights, np.arange(3.0))
    return weights


def test_manifest_records_format_runtime_and_the_files_own_sha256(tmp_path: Path) -> None:
    path = xgboost_file(tmp_path / "model.ubj")
    manifest = manifest_of(config(tmp_path, {"path": "model.ubj"}))
    own = hashlib.sha256(path.read_bytes()).hexdigest()
    assert manifest["model"] == {"source": str(path), "format": "xgboost", "sha256": own, "file_sha256": own,
                                 "runtime": {"library": "xgboost", "version": xgb.__version__}}
    assert manifest["run"]["model_sha256"] == own
    assert check_model_record(manifest, tmp_path / "manifest.json") == (
        f"xgboost file {path} (sha256 {own[:12]}…, xgboost {xgb.__version__})")


def test_manifest_records_an_entrypoints_source_and_files(tmp_path: Path, monkeypatch) -> None:
    weights = bank_entrypoint(tmp_path, monkeypatch)
    cfg = config(tmp_path, {"entrypoint": "bank_scorer:load", "files": ["artifacts/weights.npy"]})
    assert cfg.model.files == [weights]  # relative to the config's folder
    manifest = manifest_of(cfg)
    record = manifest["model"]
    assert record["format"] == "entrypoint" and record["sha256"] == manifest["run"]["model_sha256"]
    assert record["files"] == [{"path": str(weights), "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}]
    assert record["entrypoint_source"]["path"] == str(tmp_path / "bank_scorer.py")
    assert check_model_record(manifest, tmp_path / "manifest.json").startswith("entrypoint bank_scorer:load")
    np.save(weights, np.zeros(3))  # the artifact changed after the run started: the manifest would lie
    with pytest.raises(ModelError, match=r"bank_scorer:load.*changed during the run"):
        build_manifest(cfg, build_run_info(cfg, run_id="r", started=STARTED, model_sha256=record["sha256"],
                                           decisions_sha256="d", reference_sha256="r"),
                       finished=STARTED, execution=Execution("cpu:1", None, 1, 1, 8, 1), counts={}, review_ids=[],
                       outputs={})


def test_rerender_refuses_a_model_record_that_does_not_add_up(tmp_path: Path, monkeypatch) -> None:
    bank_entrypoint(tmp_path, monkeypatch)
    manifest = manifest_of(config(tmp_path, {"entrypoint": "bank_scorer:load", "files": ["artifacts/weights.npy"]}))
    where = tmp_path / "manifest.json"
    forged = {**manifest, "model": {**manifest["model"], "files": [{"path": "other.npy", "sha256": "0" * 64}]}}
    with pytest.raises(InputError, match=r"manifest\.json: the model record .* does not add up"):
        check_model_record(forged, where)
    moved = {**manifest, "model": {**manifest["model"], "sha256": "1" * 64}}
    with pytest.raises(InputError, match=r"model\.sha256 is not the run's model_sha256"):
        check_model_record(moved, where)
    xgboost_file(tmp_path / "model.ubj")
    file_manifest = manifest_of(config(tmp_path, {"path": "model.ubj"}))
    file_manifest["model"]["file_sha256"] = "2" * 64
    with pytest.raises(InputError, match=r"model\.file_sha256 is not the run's model_sha256"):
        check_model_record(file_manifest, where)
    old = {**manifest, "model": {"source": "m.pt", "sha256": manifest["run"]["model_sha256"]}}  # before formats
    assert check_model_record(old, where).startswith("file m.pt")


def test_identity_takes_the_model_format_runtime_and_files_into_account(tmp_path: Path, monkeypatch) -> None:
    xgboost_file(tmp_path / "model.ubj")
    selection = np.arange(4)

    def identity(cfg) -> str:
        checksums = {"config": "c", "model": model_sha256(cfg.model), "decisions": "d", "reference": "r"}
        return run_identity(mode="run", checksums=checksums, selection=selection, extra=effective_settings(cfg))

    inferred = identity(config(tmp_path, {"path": "model.ubj"}))
    assert identity(config(tmp_path, {"path": "model.ubj", "format": "xgboost"})) == inferred  # as inferred
    assert effective_settings(config(tmp_path, {"path": "model.ubj"}))["model"] == {
        "format": "xgboost", "runtime": {"library": "xgboost", "version": xgb.__version__}}
    monkeypatch.setattr(model_formats.metadata, "version", lambda name: "9.9.9")  # another XGBoost installed
    assert identity(config(tmp_path, {"path": "model.ubj"})) != inferred
    monkeypatch.undo()

    weights = bank_entrypoint(tmp_path, monkeypatch)
    entry = config(tmp_path, {"entrypoint": "bank_scorer:load", "files": ["artifacts/weights.npy"]})
    before = identity(entry)
    assert identity(config(tmp_path, {"entrypoint": "bank_scorer:load"})) != before  # files join the model hash
    np.save(weights, np.ones(3))
    assert identity(entry) != before


@pytest.mark.slow
def test_a_run_with_an_xgboost_file_records_it_and_rerenders(prefect_api, demo_artifacts, make_config, tmp_path):
    """The pipeline end to end with an XGBoost file (trained on the demo's reference, labelled by the demo
    model): the manifest names the format, runtime and file hash; rerender checks and reports them."""
    import pandas as pd

    from flows.pipeline import limelight_flow
    from tasks.demo import model_inputs
    from tasks.report.rerender import rerender

    reference = model_inputs(pd.read_parquet(demo_artifacts.reference)).astype(np.float32)
    labels = (reference[:, 1] > np.median(reference[:, 1])).astype(int)  # a fixed rule, not a trained model's
    classifier = xgb.XGBClassifier(n_estimators=40, max_depth=4, n_jobs=1).fit(reference, labels)
    path = tmp_path / "bank-model.ubj"
    classifier.get_booster().save_model(str(path))
    out = tmp_path / "out"
    limelight_flow(config_path=str(make_config(model={"path": str(path)})), out=str(out), devices="cpu:1", limit=6)
    manifest = json_load(out / "manifest.json")
    own = hashlib.sha256(path.read_bytes()).hexdigest()
    assert manifest["model"]["format"] == "xgboost" and manifest["model"]["file_sha256"] == own
    assert manifest["model"]["runtime"] == {"library": "xgboost", "version": xgb.__version__}
    assert manifest["run"]["model_sha256"] == own
    rows = pd.read_parquet(out / "explanations.parquet")
    decisions = pd.read_parquet(demo_artifacts.decisions).set_index("customer_id")
    first = rows.drop_duplicates("customer_id")
    native = classifier.predict_proba(model_inputs(decisions.loc[first.customer_id].reset_index()).astype(np.float32))
    np.testing.assert_allclose(first["model_pred"], native[:, 1], atol=1e-5)
    again = rerender(out / "manifest.json", tmp_path / "again")
    assert again.reports == 6 and again.model.startswith(f"xgboost file {path}")


def json_load(path: Path) -> dict:
    import json

    return json.loads(path.read_text(encoding="utf-8"))
