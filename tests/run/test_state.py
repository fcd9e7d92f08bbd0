"""tasks/run/state.py: a run's identity, finding it again in its output folder, refusing another run's folder."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tasks.errors import InputError
from tasks.run.manifest import build_run_info, staging_dir, utc_now
from tasks.run.state import effective_settings, find_run, load_record, run_identity, save_record, write_state

CHECKSUMS = {"config": "c", "model": "m", "decisions": "d", "reference": "r"}


def identity(**changes) -> str:
    facts = {"mode": "run", "checksums": CHECKSUMS, "selection": np.arange(5)}
    facts.update(changes)
    return run_identity(**facts)


def test_identity_changes_with_any_input_and_the_selection():
    same = identity()
    assert identity() == same
    assert identity(checksums={**CHECKSUMS, "model": "other"}) != same
    assert identity(selection=np.array([0, 1, 2, 4, 3])) != same  # the order of an ids file matters
    assert identity(mode="explain") != same and identity(extra={"render": False}) != same


def test_every_row_in_order_as_a_range_is_the_same_run_as_its_array(monkeypatch):
    """A run planned before selections became ranges resumes: the same digest, chunk boundaries included."""
    monkeypatch.setattr("tasks.run.state.IDENTITY_CHUNK", 7)
    for n in (0, 1, 7, 20):
        assert identity(selection=range(n)) == identity(selection=np.arange(n, dtype=np.int64))
    assert identity(selection=range(5)) == identity()  # the array of the first test


@pytest.fixture
def run(small_demo):
    from tasks.inputs.config import load_config

    return build_run_info(load_config(small_demo), run_id="20261122T000000Z-abcdef12", started=utc_now(),
                          model_sha256="m", decisions_sha256="d", reference_sha256="r")


def test_a_staged_run_is_found_and_another_refused(tmp_path, run):
    out = tmp_path / "out"
    staging = staging_dir(out, run.run_id)
    staging.mkdir(parents=True)
    write_state(staging, identity=identity(), mode="run", target=str(out), run=run)
    (staging / "parts").mkdir()
    (staging / "parts" / ".x.parquet.123.tmp").write_bytes(b"half")
    save_record(staging, "explain-shard-00000", {"a": 1})

    found = find_run(out, identity=identity(), mode="run", target=out)
    assert found.staging == staging and found.run == run and found.manifest is None
    assert not (staging / "parts" / ".x.parquet.123.tmp").exists()  # a killed writer's temporary file
    assert load_record(staging, "explain-shard-00000") == {"a": 1}
    assert load_record(staging, "nothing") is None

    other = identity(checksums={**CHECKSUMS, "decisions": "new"})
    with pytest.raises(InputError) as error:
        find_run(out, identity=other, mode="run", target=out)
    assert str(error.value) == (f"--out {out}: output folder holds run {run.run_id} of other inputs or settings; "
                                "use another --out or remove it")


def test_identity_follows_the_resolved_settings_not_where_inputs_live(tmp_path):
    """A changed setting, written or a default, is another run; moved inputs or other workers are not."""
    from tasks.inputs.config import parse_config

    raw = {"data": {"decisions": "d.parquet", "reference": "r.parquet"},
           "model": {"path": "m.pt", "classes": ["a", "b"], "explain": "b"},
           "features": [{"name": "x", "label": "X", "kind": "numeric"}]}

    def settings_identity(**sections) -> str:
        config = parse_config({**raw, **sections}, tmp_path / "limelight.toml")
        return identity(extra=effective_settings(config))

    same = settings_identity()
    assert settings_identity(explain={"design": "sobol"}) == same  # the default, written out
    assert settings_identity(explain={"design": "random"}) != same
    assert settings_identity(review={"min_fidelity": 0.5}) != same
    assert settings_identity(run={"shard_size": 10}) != same  # shards name the resume records
    moved = {"decisions": "elsewhere/d.parquet", "reference": "elsewhere/r.parquet"}
    assert settings_identity(data=moved, run={"devices": "cpu:2", "torch_threads": 2}) == same


def test_published_runs_complete_or_conflicting(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    mine = identity()
    (out / "manifest.json").write_text(json.dumps({"run_id": "R1", "identity": mine}))
    assert find_run(out, identity=mine, mode="run", target=out).manifest["run_id"] == "R1"
    with pytest.raises(InputError, match="holds run R1 of other inputs"):
        find_run(out, identity=identity(mode="other"), mode="run", target=out)
    (out / "manifest.json").unlink()
    (out / "reports").mkdir()
    with pytest.raises(InputError, match="holds another run's reports without its manifest"):
        find_run(out, identity=mine, mode="run", target=out)


def test_stale_staging_without_state_is_removed(tmp_path):
    out = tmp_path / "out"
    stale = staging_dir(out, "20260101T000000Z-00000000")
    stale.mkdir(parents=True)
    found = find_run(out, identity=identity(), mode="run", target=out)
    assert found.staging is None and not stale.exists()
    assert find_run(tmp_path / "absent", identity=identity(), mode="run", target=tmp_path / "absent").staging is None
