"""The flow on an existing cluster started the way users start one: `dask scheduler` + `dask worker` processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from flows.pipeline import limelight_flow
from flows.server import free_port

pytestmark = pytest.mark.slow



def _dask(*args: str) -> list[str]:
    executable = Path(sys.executable).with_name("dask")
    return [str(executable), *args] if executable.exists() else [sys.executable, "-m", "dask", *args]


def _wait_for_workers(address: str, count: int, timeout: float = 120) -> None:
    from distributed import Client

    with Client(address, timeout=30, set_as_default=False) as client:
        client.wait_for_workers(count, timeout=timeout)


@pytest.fixture
def dask_cluster(tmp_path: Path) -> Iterator[str]:
    """A scheduler and two single-threaded workers with one DEVICE each, on loopback, as subprocesses."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    # Workers on other machines do not share the flow's environment: no PREFECT_API_URL here. The flow's
    # settings travel with each task (prefect-dask's serialized context), so they still report to the
    # run's server instead of each starting an ephemeral one.
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_HOME")}
    env.update({"CUDA_VISIBLE_DEVICES": "", "DASK_LOGGING__DISTRIBUTED": "warning",
                "PREFECT_HOME": str(tmp_path / "worker-home")})
    logs = [open(tmp_path / name, "wb") for name in ("scheduler.log", "worker-0.log", "worker-1.log")]  # noqa: SIM115
    processes = [
        subprocess.Popen(_dask("scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"),
                         env=env, stdout=logs[0], stderr=subprocess.STDOUT, start_new_session=True)
    ]
    try:
        time.sleep(1.0)
        for i in (1, 2):
            processes.append(subprocess.Popen(
                _dask("worker", address, "--nthreads", "1", "--nworkers", "1", "--resources", "DEVICE=1",
                      "--name", f"device-{i - 1}", "--no-dashboard", "--host", "127.0.0.1"),
                env=env, stdout=logs[i], stderr=subprocess.STDOUT, start_new_session=True,
            ))
        _wait_for_workers(address, 2)
        yield address
    finally:
        for process in reversed(processes):  # only the processes this fixture started, by their id
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        for log in logs:
            log.close()


def test_dask_cli_cluster_gives_the_same_explanations(prefect_api, dask_cluster, small_demo,
                                                      reference_explanations, tmp_path):
    target = tmp_path / "explanations.parquet"
    summary = limelight_flow(config_path=str(small_demo), out=str(target), cluster=dask_cluster, mode="explain")
    assert summary["counts"]["workers"] == 2
    workers = {w["worker"] for w in summary["workers"]}
    assert len(workers) == 2  # both worker processes took shards
    pd.testing.assert_frame_equal(pd.read_parquet(target), pd.read_parquet(reference_explanations))
    # the explain tasks were recorded by the run's server (they ran on the workers, against it)
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, TaskRunFilter, TaskRunFilterName

    wanted = {"explain-shard-00000", "explain-shard-00001", "explain-shard-00002"}
    names: set[str] = set()
    with get_client(sync_client=True) as client:
        subflows = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[r.id for r in client.read_flow_runs() if r.parent_task_run_id])))
        for _ in range(40):  # the server records task runs from their events in batches
            names = {t.name for t in client.read_task_runs(
                task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="explain-shard-")))}
            if wanted <= names:
                break
            time.sleep(0.5)
    assert subflows and wanted <= names
    assert not list((tmp_path / "worker-home").glob("*.db"))  # no worker started an ephemeral server
