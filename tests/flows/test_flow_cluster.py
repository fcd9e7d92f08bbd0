"""The flow on an existing cluster started the way users start one: `dask scheduler` + `dask worker` processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def _processes(tmp_path: Path, workers: dict[str, list[str]], prefix: dict[str, list[str]] | None = None
               ) -> Iterator[str]:
    """A scheduler and the named single-threaded workers (``name: resources``) on loopback, as subprocesses;
    ``prefix`` wraps a worker's command (e.g. in its own mount namespace)."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    # Workers on other machines do not share the flow's environment: no PREFECT_API_URL here. The flow's
    # settings travel with each task (prefect-dask's serialized context), so they still report to the
    # run's server instead of each starting an ephemeral one.
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_HOME")}
    env.update({"CUDA_VISIBLE_DEVICES": "", "DASK_LOGGING__DISTRIBUTED": "warning",
                "PREFECT_HOME": str(tmp_path / "worker-home")})
    logs = [open(tmp_path / f"{name}.log", "wb") for name in ("scheduler", *workers)]  # noqa: SIM115
    processes = [
        subprocess.Popen(_dask("scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"),
                         env=env, stdout=logs[0], stderr=subprocess.STDOUT, start_new_session=True)
    ]
    try:
        time.sleep(1.0)
        for log, (name, resources) in zip(logs[1:], workers.items(), strict=True):
            processes.append(subprocess.Popen(
                [*(prefix or {}).get(name, []), *_dask(
                    "worker", address, "--nthreads", "1", "--nworkers", "1", "--resources", *resources,
                    "--name", name, "--no-dashboard", "--host", "127.0.0.1")],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            ))
        _wait_for_workers(address, len(workers))
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


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """Two single-threaded workers with one DEVICE each and a render-only worker (RENDER), as a bank starts
    them on GPU and CPU nodes; yields the scheduler's address and the folder of the logs and worker home."""
    folder = tmp_path_factory.mktemp("dask-cluster")
    with _processes(folder, {"device-0": ["DEVICE=1"], "device-1": ["DEVICE=1"], "render-0": ["RENDER=1"]}) \
            as address:
        yield address, folder


def _worker_pids(address: str) -> dict[str, str]:
    """Worker name -> ``host:pid`` (as a render batch names the worker that rendered it)."""
    import socket

    from distributed import Client

    with Client(address, timeout=30, set_as_default=False) as client:
        pids = client.run(os.getpid)
        names = {a: w["name"] for a, w in client.scheduler_info(n_workers=-1)["workers"].items()}
    return {names[a]: f"{socket.gethostname()}:{pid}" for a, pid in pids.items()}


def test_dask_cli_cluster_gives_the_same_explanations(prefect_api, dask_cluster, small_demo,
                                                      reference_explanations, tmp_path):
    """A full run: the device workers explain (the same explanations as one local worker); render batches ask
    for RENDER, so the render-only worker renders every report and the device workers none."""
    address, folder = dask_cluster
    out = tmp_path / "run"
    summary = limelight_flow(config_path=str(small_demo), out=str(out), cluster=address)
    assert summary["counts"]["workers"] == 2 and summary["render_workers"] == 1
    workers = {w["worker"] for w in summary["workers"]}
    assert len(workers) == 2  # both worker processes took shards
    pd.testing.assert_frame_equal(pd.read_parquet(out / "explanations.parquet"),
                                  pd.read_parquet(reference_explanations))
    assert summary["rendered_by"] == {_worker_pids(address)["render-0"]: summary["counts"]["reports_made"]}
    assert summary["counts"]["reports_made"] > 0
    assert not list(out.glob(".limelight-shared-*"))  # the shared-folder probe is gone
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
    assert not list((folder / "worker-home").glob("*.db"))  # no worker started an ephemeral server


def _private_mounts() -> bool:
    """Whether this machine lets a process mount its own empty folder over a path (unprivileged namespaces)."""
    if not shutil.which("unshare"):
        return False
    done = subprocess.run(["unshare", "-Urm", "true"], capture_output=True, check=False)
    return done.returncode == 0


@pytest.mark.skipif(not _private_mounts(), reason="needs unshare -Urm (a worker with its own mounts)")
def test_a_worker_that_does_not_share_the_output_folder_stops_the_run(prefect_api, dask_cluster, small_demo,
                                                                      tmp_path):
    """A worker that sees another disk at the output root (an empty tmpfs in its own mount namespace, as on a
    host without the shared storage) is named in one line before any work; nothing is left behind."""
    from distributed import Client

    from flows.cluster import DeviceError

    address, folder = dask_cluster
    root = tmp_path / "shared"
    root.mkdir()
    isolated = ["unshare", "-Urm", "sh", "-c", f'mount -t tmpfs none "{root}" && exec "$0" "$@"']
    far = subprocess.Popen(
        [*isolated, *_dask("worker", address, "--nthreads", "1", "--resources", "RENDER=1", "--name", "render-far",
                           "--no-dashboard", "--host", "127.0.0.1")],
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        with Client(address, timeout=30, set_as_default=False) as client:
            client.wait_for_workers(4, timeout=120)
            workers = client.scheduler_info(n_workers=-1)["workers"]
            far_address = next(a for a, w in workers.items() if w["name"] == "render-far")
            with pytest.raises(DeviceError, match=f"worker {far_address} does not share the output folder"):
                limelight_flow(config_path=str(small_demo), out=str(root / "night" / "run"), cluster=address)
            assert list(root.iterdir()) == []  # neither the output folders nor the probe
    finally:  # the cluster's other tests must not meet this worker
        far.terminate()
        far.wait(timeout=30)
