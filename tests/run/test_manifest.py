"""tasks/run/manifest.py and tasks/io.py: RunInfo, the manifest, atomic writes, publishing staged outputs."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime, timedelta

import pytest

from tasks.inputs.config import default_kernel_width, parse_config
from tasks.io import atomic_path, file_sha256, replace_dir, tree_sha256, write_json_atomic, write_text_atomic
from tasks.run.info import RunInfo
from tasks.run.manifest import (
    MANIFEST,
    Execution,
    build_manifest,
    build_run_info,
    iso,
    new_run_id,
    package_versions,
    publish,
    staging_dir,
)

STARTED = datetime(2026, 11, 22, 2, 0, 5, tzinfo=UTC)


def config(tmp_path, **explain):
    raw = {
        "data": {"decisions": "d.parquet", "reference": "r.parquet"},
        "model": {"path": "m.pt", "classes": ["approved", "declined"], "explain": "declined"},
        "explain": {"num_samples": 1000, **explain},
        "features": [{"name": f"f{i}", "label": f"F{i}", "kind": "numeric"} for i in range(4)],
    }
    return parse_config(raw, tmp_path / "c.toml", sha256="c" * 64)


def run_info(tmp_path, **explain) -> RunInfo:
    return build_run_info(config(tmp_path, **explain), run_id=new_run_id(STARTED), started=STARTED,
                          model_sha256="m" * 64, decisions_sha256="d" * 64, reference_sha256="r" * 64)


def test_run_info_carries_the_engine_parameters(tmp_path):
    run = run_info(tmp_path)
    assert run.run_id.startswith("20261122T020005Z-")
    assert run.generated_at == "2026-11-22T02:00:05Z"
    assert run.config_sha256 == "c" * 64
    assert run.kernel_width == pytest.approx(default_kernel_width(4)) == pytest.approx(1.5)
    assert (run.engine, run.num_samples, run.top_k, run.seed) == ("batched", 1000, 3, 20261122)
    assert run.explained_class == "declined" and run.min_fidelity == 0.3
    assert run.versions["torch"] and run.versions["prefect"] and run.versions["python"]
    assert RunInfo.from_dict(json.loads(json.dumps(run.to_dict()))) == run
    assert run.method == "per-bin"
    lime = run_info(tmp_path, kernel_width=2.5, method="lime")
    assert lime.kernel_width == 2.5 and lime.method == "lime"


def test_versions_do_not_import_packages(monkeypatch):
    import sys

    monkeypatch.delitem(sys.modules, "weasyprint", raising=False)  # put back after: a re-import breaks isinstance
    versions = package_versions()
    assert "weasyprint" in versions and "weasyprint" not in sys.modules


def test_manifest_has_the_contract_fields(tmp_path):
    run = run_info(tmp_path)
    execution = Execution(devices="cpu:2", cluster=None, workers=2, shards=3, shard_size=16, torch_threads=1)
    manifest = build_manifest(
        config(tmp_path), run, finished=STARTED + timedelta(seconds=42), execution=execution,
        counts={"decisions": 40, "needs_review": 2}, review_ids=["A", "B"],
        outputs={"explanations.parquet": {"sha256": "x"}},
    )
    assert manifest["run_id"] == run.run_id
    assert (manifest["started_at"], manifest["finished_at"]) == ("2026-11-22T02:00:05Z", "2026-11-22T02:00:47Z")
    assert manifest["duration_s"] == 42.0
    assert manifest["config"]["sha256"] == "c" * 64
    assert manifest["model"]["sha256"] == "m" * 64
    assert manifest["inputs"]["decisions"]["sha256"] == "d" * 64
    assert manifest["inputs"]["reference"]["sha256"] == "r" * 64
    assert manifest["engine"]["seed"] == 20261122 and manifest["engine"]["num_samples"] == 1000
    assert manifest["versions"] == run.versions
    assert manifest["counts"]["decisions"] == 40
    assert manifest["review"]["ids"] == ["A", "B"]
    assert manifest["execution"]["workers"] == 2
    json.dumps(manifest)  # serialisable as is


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "out" / "file.txt"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as temp:
        temp.write_text("half")
        raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert os.listdir(target.parent) == ["file.txt"]
    write_json_atomic(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}


def test_checksums(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"hello")
    assert file_sha256(tmp_path / "a.bin") == hashlib.sha256(b"hello").hexdigest()
    folder = tmp_path / "ds"
    (folder / "k=1").mkdir(parents=True)
    (folder / "k=1" / "p.parquet").write_bytes(b"one")
    before = tree_sha256(folder)
    (folder / "_SUCCESS").write_text("")
    (folder / ".crc").write_text("x")
    assert tree_sha256(folder) == before  # files the dataset reader skips do not count
    (folder / "k=1" / "p.parquet").write_bytes(b"two")
    assert tree_sha256(folder) != before


def test_replace_dir_swaps_whole_folder(tmp_path):
    old, new = tmp_path / "reports", tmp_path / "staged"
    old.mkdir()
    (old / "stale.pdf").write_text("old")
    new.mkdir()
    (new / "fresh.pdf").write_text("new")
    replace_dir(new, old)
    assert os.listdir(old) == ["fresh.pdf"]
    assert sorted(os.listdir(tmp_path)) == ["reports"]


def test_publish_moves_outputs_and_writes_manifest_last(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / MANIFEST).write_text('{"run_id": "previous"}')
    (out / "keep.txt").write_text("not ours")
    staging = staging_dir(out, "run-1")
    (staging / "reports").mkdir(parents=True)
    (staging / "reports" / "a.pdf").write_bytes(b"%PDF")
    (staging / "explanations.parquet").write_bytes(b"PAR1")
    published = publish(staging, out, ["explanations.parquet", "reports"], {"run_id": "run-1"})
    assert published[-1] == out / MANIFEST
    assert json.loads((out / MANIFEST).read_text()) == {"run_id": "run-1"}
    assert (out / "reports" / "a.pdf").read_bytes() == b"%PDF"
    assert sorted(os.listdir(out)) == ["explanations.parquet", "keep.txt", "manifest.json", "reports"]


def test_iso_is_utc_seconds():
    assert iso(datetime(2026, 1, 2, 3, 4, 5, 999, tzinfo=UTC)) == "2026-01-02T03:04:05Z"


def test_dump_toml_round_trips_a_config():
    import tomllib

    from tasks.io import dump_toml

    raw = {
        "data": {"decisions": 'a "quoted" path/é.parquet', "id_column": "id"},
        "explain": {"num_samples": 500, "kernel_width": 1.5, "compile": "never"},
        "report": {"enabled": True, "applicant_fields": ["name"], "lender": {"name": "Bank", "address": ["1 St"]}},
        "features": [{"name": "x", "kind": "numeric"}, {"name": "c", "kind": "categorical", "categories": ["a"]}],
    }
    assert tomllib.loads(dump_toml(raw)) == raw


def test_the_not_reached_list_is_read_from_its_file_or_an_older_manifest(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tasks.errors import InputError
    from tasks.run.manifest import NOT_REACHED, not_reached_ids

    assert not_reached_ids({"not_reached_ids": ["b", 7]}, tmp_path) == ["b", "7"]  # before manifest 3: inline
    manifest = {"inputs": {"id_column": "loan"}, "not_reached": {"file": NOT_REACHED, "count": 2}}
    with pytest.raises(InputError, match=rf"{NOT_REACHED}: cannot read column 'loan'"):
        not_reached_ids(manifest, tmp_path)
    pq.write_table(pa.table({"loan": ["z", "a"]}), tmp_path / NOT_REACHED)
    assert not_reached_ids(manifest, tmp_path) == ["z", "a"]  # in the file's (the selection's) order
    pq.write_table(pa.table({"id": ["z"]}), tmp_path / NOT_REACHED)
    with pytest.raises(InputError, match="cannot read column 'loan'"):
        not_reached_ids(manifest, tmp_path)


def test_publish_can_keep_the_staging_folder(tmp_path):
    from tasks.run.manifest import publish

    staging, out = tmp_path / ".staging", tmp_path / "out"
    staging.mkdir()
    out.mkdir()
    (staging / "explanations.parquet").write_bytes(b"x")
    (staging / "state.json").write_text("{}")
    publish(staging, out, ["explanations.parquet"], {"run_id": "r"}, keep_staging=True)
    assert (out / "explanations.parquet").read_bytes() == b"x" and (staging / "state.json").exists()
