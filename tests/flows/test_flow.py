"""The flow end to end: a real Prefect server, real Dask workers, the real demo model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from flows.pipeline import limelight_flow
from flows.steps import renderer_available
from tasks.errors import InputError, ModelError
from tasks.explain.aggregate import explanation_schema
from tasks.io import file_sha256
from tasks.run.info import RunInfo

TEST_DECISIONS = 48  # tests/conftest.py: the small demo
TEST_SHARD = 16

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def full_run(prefect_api, small_demo, tmp_path_factory):
    """The whole pipeline (reports included) on two CPU workers and a render pool of one."""
    out = tmp_path_factory.mktemp("full-run") / "out"
    summary = limelight_flow(config_path=str(small_demo), out=str(out), devices="cpu:2", render_workers=1)
    return out, summary


def test_two_workers_give_the_same_explanations_as_one(full_run, reference_explanations):
    out, summary = full_run
    one = pd.read_parquet(reference_explanations)
    two = pd.read_parquet(out / "explanations.parquet")
    shown = one.groupby("customer_id").size()
    assert len(shown) == TEST_DECISIONS and shown.between(1, 6).all()  # up to 3 reasons + 3 favourable factors
    pd.testing.assert_frame_equal(one, two)
    assert summary["counts"]["workers"] == 2
    assert summary["render_workers"] == 1 and summary["devices"] == "2 CPU workers + 1 render worker"


def test_outputs_follow_the_contract(full_run, small_demo):
    out, summary = full_run
    table = pq.read_table(out / "explanations.parquet")
    assert table.schema.remove_metadata().equals(explanation_schema("customer_id"))
    run = RunInfo.from_dict(json.loads(table.schema.metadata[b"limelight.run"]))
    frame = table.to_pandas()
    decisions = pq.read_table(small_demo.parent / "decisions.parquet").column("customer_id").to_pylist()
    assert frame.customer_id.drop_duplicates().tolist() == decisions  # file order
    ranks = frame.groupby("customer_id", sort=False)["rank"].agg(list)
    assert all(r == list(range(1, len(r) + 1)) for r in ranks)
    # principal reasons of a declined application raised its probability
    declined = frame["model_pred"] >= 0.4
    assert (frame.loc[frame["role"] == "reason", "direction"] == "raises").all()
    assert (frame.loc[frame["role"] == "favourable", "direction"] == "lowers").all()
    assert set(frame.loc[declined, "role"]) <= {"reason", "favourable"}
    assert (frame.loc[~declined, "role"] == "factor").all()
    # the approved ones name their top 3, or 4 where the 3rd and 4th tie (the `tied` column)
    sizes = frame.loc[~declined].groupby("customer_id").size()
    tied = frame.loc[~declined].groupby("customer_id")["tied"].first()
    assert (sizes == 3 + tied.astype(int)).all()

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["run_id"] == run.run_id == summary["run_id"]
    assert manifest["config"]["sha256"] == file_sha256(small_demo)
    assert manifest["inputs"]["decisions"]["sha256"] == file_sha256(small_demo.parent / "decisions.parquet")
    assert manifest["model"]["sha256"] == run.model_sha256
    assert manifest["engine"]["num_samples"] == 500 and manifest["engine"]["seed"] == run.seed
    assert manifest["counts"]["decisions_in"] == TEST_DECISIONS
    assert manifest["counts"]["shards"] == TEST_DECISIONS // TEST_SHARD
    assert manifest["outputs"]["explanations.parquet"]["sha256"] == file_sha256(out / "explanations.parquet")
    review = frame.loc[frame.needs_review, "customer_id"].drop_duplicates().tolist()
    assert manifest["review"] == {"min_fidelity": 0.3, "count": len(review), "source": "explanations.parquet"}
    assert review == summary["review_ids"] and summary["review_count"] == len(review)
    assert manifest["manifest_version"] == 3
    assert manifest["versions"]["torch"] and manifest["started_at"].endswith("Z")
    quality = manifest["quality"]
    assert quality["decisions"] == TEST_DECISIONS and quality["needs_review"] == len(review)
    assert quality["stable_share"] == round(float(frame.loc[frame["rank"] == 1, "stable"].mean()), 6)
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no staging folder, no temporary files


@pytest.mark.skipif(not renderer_available(), reason="the report step is not installed yet")
def test_reports_and_summary(full_run):
    out, summary = full_run
    manifest = json.loads((out / "manifest.json").read_text())
    reports = pq.read_table(out / "reports.parquet").to_pylist()  # the index; the manifest has its SHA-256
    assert manifest["outputs"]["reports"] == {"index": "reports.parquet", "count": TEST_DECISIONS, "layout": "flat"}
    assert manifest["outputs"]["reports.parquet"]["sha256"] == file_sha256(out / "reports.parquet")
    assert manifest["outputs"]["reports.parquet"]["rows"] == TEST_DECISIONS
    assert len(reports) == TEST_DECISIONS == len(list((out / "reports").glob("*.pdf")))
    assert [r["id"] for r in reports] == list(dict.fromkeys(pq.read_table(out / "explanations.parquet").column(
        "customer_id").to_pylist()))
    review = set(summary["review_ids"])
    assert {r["id"] for r in reports if r["needs_review"]} == review
    for entry in reports[:5]:
        pdf = out / entry["file"]
        assert pdf.read_bytes().startswith(b"%PDF") and file_sha256(pdf) == entry["sha256"]
    assert (out / "summary.pdf").read_bytes().startswith(b"%PDF")
    assert manifest["outputs"]["summary.pdf"]["sha256"] == file_sha256(out / "summary.pdf")
    assert manifest["outputs"]["summary.pdf"]["layout"] == 3  # top-N tables, PDF/UA-1: tasks/report/summary_lists.py
    from render_support import embedded_files

    attached = json.loads(embedded_files(out / "summary.pdf")["run-summary.json"])
    assert "review_ids" not in attached and attached["review"]["count"] == len(review)
    assert set(attached["review"]["shown"]) <= review and attached["failures"]["count"] == 0


def test_prefect_recorded_the_run_and_its_artifacts(full_run, prefect_api):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["limelight-run", "limelight-workers"]))
        )
        flow_runs = client.read_flow_runs()
    kinds = {a.key: a.type for a in artifacts}
    assert kinds == {"limelight-run": "markdown", "limelight-workers": "table"}
    assert str(client.api_url).rstrip("/") == prefect_api.rstrip("/")
    flows = {run.flow_id for run in flow_runs}
    assert len(flows) >= 2  # the limelight flow and its explain-shards subflow


def test_ids_and_limit_select_decisions_in_order(prefect_api, small_demo, reference_explanations, tmp_path):
    reference = pd.read_parquet(reference_explanations)
    in_order = reference.customer_id.drop_duplicates().tolist()
    wanted = [in_order[i] for i in (40, 2, 17, 3)]
    ids = tmp_path / "ids.csv"
    ids.write_text("customer_id\n" + "\n".join(wanted) + "\n")
    target = tmp_path / "subset.parquet"
    limelight_flow(config_path=str(small_demo), out=str(target), devices="cpu:1", ids_file=str(ids), limit=3,
                   mode="explain")
    subset = pd.read_parquet(target)
    assert subset.customer_id.drop_duplicates().tolist() == wanted[:3]
    expected = pd.concat([reference[reference.customer_id == i] for i in wanted[:3]], ignore_index=True)
    pd.testing.assert_frame_equal(subset, expected)


def test_bad_input_fails_before_any_output(prefect_api, make_config, tmp_path):
    config = make_config(data={"reference": str(tmp_path / "missing.parquet")})
    out = tmp_path / "never"
    with pytest.raises(InputError, match=r"missing.parquet: not found \(\[data\] reference\)"):
        limelight_flow(config_path=str(config), out=str(out), devices="cpu:1")
    assert not out.exists()


def test_unknown_id_names_file_and_line(prefect_api, small_demo, tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("C-nope\n")
    out = tmp_path / "never"
    with pytest.raises(InputError, match="ids.txt line 1: unknown customer_id 'C-nope'"):
        limelight_flow(config_path=str(small_demo), out=str(out), devices="cpu:1", ids_file=str(ids))
    assert not out.exists()


def test_a_worker_failure_publishes_nothing(prefect_api, make_config, tmp_path):
    """A model that only fails when a worker loads it: the error crosses Dask as itself; nothing is left."""
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a torchscript archive")
    config = make_config(model={"path": str(broken)})
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("previous")
    with pytest.raises(ModelError, match="broken.pt: not a loadable TorchScript"):
        limelight_flow(config_path=str(config), out=str(out), devices="cpu:1", mode="run")
    assert os.listdir(out) == ["keep.txt"]


def test_existing_local_cluster_by_address(prefect_api, small_demo, reference_explanations, tmp_path):
    """A LocalCluster with two CPU workers advertising DEVICE, used through --cluster."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      resources={"DEVICE": 1}, env={"CUDA_VISIBLE_DEVICES": ""}) as cluster:
        target = tmp_path / "e.parquet"
        summary = limelight_flow(config_path=str(small_demo), out=str(target), cluster=cluster.scheduler_address,
                                 mode="explain")
    assert summary["counts"]["workers"] == 2
    pd.testing.assert_frame_equal(pd.read_parquet(target), pd.read_parquet(reference_explanations))


def test_out_must_be_a_folder(prefect_api, small_demo, tmp_path):
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(InputError, match="exists and is not a folder"):
        limelight_flow(config_path=str(small_demo), out=str(file), devices="cpu:1")
    assert Path(file).read_text() == "x"


def test_explain_tasks_only_go_to_device_workers(prefect_api, small_demo, tmp_path):
    """dask.annotate(resources={"DEVICE": 1}) is honoured: a worker without the resource gets no shard."""
    from distributed import Client, Nanny, Scheduler, SpecCluster

    options = {"nthreads": 1, "host": "127.0.0.1", "env": {"CUDA_VISIBLE_DEVICES": ""}}
    workers = {
        "owns-device": {"cls": Nanny, "options": {**options, "resources": {"DEVICE": 1}}},
        "no-device": {"cls": Nanny, "options": options},
    }
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": None, "host": "127.0.0.1"}}
    with SpecCluster(workers=workers, scheduler=scheduler) as cluster, Client(cluster) as client:
        pids = client.run(os.getpid)  # worker address -> pid
        names = {addr: w["name"] for addr, w in cluster.scheduler_info["workers"].items()}
        summary = limelight_flow(config_path=str(small_demo), out=str(tmp_path / "e.parquet"),
                                 cluster=cluster.scheduler_address, mode="explain")
    by_pid = {str(pid): names[addr] for addr, pid in pids.items()}
    used = {w["worker"].rsplit(":", 1)[1] for w in summary["workers"]}
    assert {by_pid[pid] for pid in used} == {"owns-device"}
    assert summary["counts"]["workers"] == 1
    assert sum(w["shards"] for w in summary["workers"]) == TEST_DECISIONS // TEST_SHARD



def _executed(client: object) -> dict[str, int]:
    """Tasks each worker (by name) has run so far."""
    counts = client.run(lambda dask_worker: (dask_worker.name, dask_worker.state.executed_count))  # type: ignore[attr-defined]
    return dict(counts.values())


@pytest.mark.skipif(not renderer_available(), reason="the report step is not installed yet")
def test_render_batches_go_to_render_workers_and_shards_to_device_workers(prefect_api, small_demo, tmp_path):
    """On a cluster of one DEVICE worker and one RENDER worker, each kind of task runs only on its own kind."""
    from distributed import Client, Nanny, Scheduler, SpecCluster

    options = {"nthreads": 1, "host": "127.0.0.1", "env": {"CUDA_VISIBLE_DEVICES": ""}}
    workers = {
        "device": {"cls": Nanny, "options": {**options, "resources": {"DEVICE": 1}}},
        "render": {"cls": Nanny, "options": {**options, "resources": {"RENDER": 1}}},
    }
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": None, "host": "127.0.0.1"}}
    with SpecCluster(workers=workers, scheduler=scheduler) as cluster, Client(cluster) as client:
        summary = limelight_flow(config_path=str(small_demo), out=str(tmp_path / "out"),
                                 cluster=cluster.scheduler_address)
        executed = _executed(client)
    shards = TEST_DECISIONS // TEST_SHARD
    assert summary["counts"]["reports_made"] == TEST_DECISIONS and summary["accounting"]["holds"]
    assert summary["render_workers"] == 1 and not summary["warnings"]
    assert executed == {"device": 1 + shards, "render": shards}  # prepare + shards; one render batch per shard
    assert len(list((tmp_path / "out" / "reports").glob("*.pdf"))) == TEST_DECISIONS


@pytest.mark.skipif(not renderer_available(), reason="the report step is not installed yet")
def test_a_cluster_without_render_workers_renders_on_its_device_workers(prefect_api, small_demo, full_run,
                                                                        tmp_path):
    """Also the next night: a run of the same config beside ``full_run`` (under the same output root) compares
    itself with it (its drift in the manifest and the summary, which rerender reproduces); ``full_run`` had none."""
    from distributed import LocalCluster
    from render_support import flat, pdf_text

    from tasks.report.rerender import rerender
    from tasks.run.drift import run_profile

    out, first = full_run
    night = out.parent / "night-2"
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                      resources={"DEVICE": 1}, env={"CUDA_VISIBLE_DEVICES": ""}) as cluster:
        summary = limelight_flow(config_path=str(small_demo), out=str(night),
                                 cluster=cluster.scheduler_address, limit=5)
    assert summary["counts"]["reports_made"] == 5 and summary["render_workers"] == 0
    assert any("no worker offers RENDER" in w for w in summary["warnings"])

    earlier = json.loads((out / "manifest.json").read_text())
    assert "drift" not in earlier and earlier["drift_profile"] == run_profile(out / "explanations.parquet")
    manifest = json.loads((night / "manifest.json").read_text())
    drift = manifest["drift"]
    assert drift["baseline"]["run_id"] == first["run_id"] and drift["baseline"]["found"] == "previous run"
    frame = pd.read_parquet(night / "explanations.parquet")
    declines = frame.loc[frame["role"].isin(["reason", "favourable"]), "customer_id"].nunique()
    assert (drift["decisions"], drift["declines"], drift["baseline_decisions"]) == (5, declines, TEST_DECISIONS)
    named = frame[frame["role"] == "reason"].groupby("feature")["customer_id"].nunique()
    assert manifest["drift_profile"]["reasons"] == {f: int(n) for f, n in named.items()}
    assert drift["warnings"] == [] and not drift["judged"]["decisions"]  # 5 < [drift] min_decisions: no warning
    text = flat(pdf_text(night / "summary.pdf"))
    assert f"Compared with the previous run Baseline: run {first['run_id']}" in text
    assert "Fewer than 100 decisions" in text and "Compared with" not in flat(pdf_text(out / "summary.pdf"))
    assert rerender(night / "manifest.json", tmp_path / "again").summary  # byte for byte, drift section included
