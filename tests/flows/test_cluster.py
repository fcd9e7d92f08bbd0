"""flows/cluster.py: --devices parsing, GPU counting without CUDA, one device per worker, existing clusters."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows.cluster import (
    DASK_SETTINGS,
    RENDER_RESOURCE,
    RESOURCE,
    DeviceError,
    DevicePlan,
    apply_dask_settings,
    check_cluster,
    cluster_kwargs,
    parse_nvidia_smi,
    render_pool_size,
    resolve_devices,
    visible_gpus,
    with_render_pool,
)
from tasks.explain.worker import DEVICE_ENV
from tasks.run.deadline import PRIOR_RENDER_S, render_prior

SMI = """\
GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-11111111-2222-3333-4444-555555555555)
GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee)
  MIG 3g.20gb     Device  0: (UUID: MIG-aaaa0000-0000-0000-0000-000000000000)
  MIG 3g.20gb     Device  1: (UUID: MIG-aaaa1111-1111-1111-1111-111111111111)
GPU 2: NVIDIA L4 (UUID: GPU-99999999-8888-7777-6666-555555555555)
"""


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0,1", ["0", "1"]), ("", []), ("-1", []), ("2, 3", ["2", "3"]), ("1,-1,3", ["1"]),
     ("GPU-1234", ["GPU-1234"])],
)
def test_visible_gpus_from_cuda_visible_devices(value, expected):
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": value}) == expected


def test_nvidia_smi_listing_with_mig():
    assert parse_nvidia_smi(SMI) == ["0", "MIG-aaaa0000-0000-0000-0000-000000000000",
                                     "MIG-aaaa1111-1111-1111-1111-111111111111", "2"]
    assert visible_gpus({}, smi=None) == []
    assert visible_gpus({}, smi="/nonexistent/nvidia-smi") == []


def test_counting_gpus_does_not_import_torch():
    """The flow process must not initialise CUDA (it would pin every worker to one GPU): not even torch."""
    code = ("import sys; from flows.cluster import resolve_devices; plan = resolve_devices('auto'); "
            "print(plan.kind, 'torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    kind, imported = out.stdout.split()
    assert kind in ("cpu", "cuda") and imported == "False"


def test_device_specs(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    assert resolve_devices("cpu:3") == DevicePlan("cpu", ("cpu0", "cpu1", "cpu2"))
    assert resolve_devices("cpu") == DevicePlan("cpu", ("cpu0",))
    assert resolve_devices("auto") == DevicePlan("cuda", ("4", "5"))
    assert resolve_devices("cuda") == DevicePlan("cuda", ("4", "5"))
    assert resolve_devices("cuda:1") == DevicePlan("cuda", ("5",))  # indices count the visible GPUs
    assert resolve_devices("CUDA:1,0") == DevicePlan("cuda", ("5", "4"))
    plan = resolve_devices("auto", cluster="tcp://10.0.0.1:8786")
    assert plan.kind == "cluster" and plan.address == "tcp://10.0.0.1:8786"


@pytest.mark.parametrize(
    ("spec", "message"),
    [("cpu:0", "expected cpu:N with N >= 1"), ("cpu:x", "expected cpu:N"), ("gpu:0", "expected 'auto'"),
     ("cuda:2", "cuda:2 does not exist (2 GPU(s) visible)"), ("cuda:0,0", "listed twice"),
     ("cuda:a", "expected cuda:0,1")],
)
def test_bad_device_specs(monkeypatch, spec, message):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with pytest.raises(DeviceError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_devices(spec)


def test_no_gpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(DeviceError, match="no CUDA device is visible"):
        resolve_devices("cuda:0")
    plan = resolve_devices("auto", torch_threads=1)
    assert plan.kind == "cpu" and 1 <= plan.workers <= 16
    with pytest.raises(DeviceError, match="expected a scheduler address"):
        resolve_devices("auto", cluster="localhost")


def test_each_worker_sees_exactly_its_device():
    """Two 'GPU' workers of a real SpecCluster: each process gets its own CUDA_VISIBLE_DEVICES and one DEVICE.

    (No GPU needed: what is checked is the environment each worker process is started with.)
    """
    from distributed import Client, SpecCluster

    kwargs = cluster_kwargs(DevicePlan("cuda", ("7", "GPU-abc")), torch_threads=2)
    assert kwargs["scheduler"]["options"]["dashboard_address"] is None
    with SpecCluster(**kwargs) as cluster, Client(cluster) as client:
        seen = client.run(lambda: (os.environ["CUDA_VISIBLE_DEVICES"], os.environ[DEVICE_ENV],
                                   os.environ["OMP_NUM_THREADS"]))
        resources = {w["name"]: w["resources"] for w in client.scheduler_info()["workers"].values()}
    assert sorted(seen.values()) == [("7", "cuda", "2"), ("GPU-abc", "cuda", "2")]
    assert list(resources.values()) == [{RESOURCE: 1, RENDER_RESOURCE: 1}, {RESOURCE: 1, RENDER_RESOURCE: 1}]


def test_render_pool_fills_the_cores_the_device_workers_leave():
    gpu, cpu = DevicePlan("cuda", ("0",)), DevicePlan("cpu", ("cpu0", "cpu1"))
    assert render_pool_size(gpu, None, slots=16) == 15  # the GPU worker keeps one core
    assert render_pool_size(DevicePlan("cuda", ("0", "1")), None, slots=64) == 62
    assert render_pool_size(cpu, None, torch_threads=2, slots=8) == 4
    assert render_pool_size(cpu, None, slots=2) == 1  # at least one
    assert render_pool_size(DevicePlan("cpu", ("cpu0",)), None, slots=2) == 1
    assert render_pool_size(gpu, 3, slots=16) == 3 and render_pool_size(gpu, 0, slots=16) == 0
    assert render_pool_size(DevicePlan("cluster", address="tcp://h:1"), 4, slots=16) == 0  # its own workers
    with pytest.raises(DeviceError, match="--render-workers -1: expected 0 or more"):
        render_pool_size(gpu, -1)
    assert with_render_pool(gpu, 2) == DevicePlan("cuda", ("0",), render_workers=2)
    assert with_render_pool(gpu, 2).describe() == "1 GPU worker (CUDA devices 0) + 2 render workers"


def test_a_deadline_run_s_render_prior_counts_the_cores_its_workers_share(monkeypatch):
    monkeypatch.setattr("flows.cluster.cpu_slots", lambda: 2)
    cpu = DevicePlan("cpu", ("cpu0", "cpu1"), render_workers=1)
    assert cpu.device_cores() == 2 and cpu.device_cores(torch_threads=2) == 4
    assert cpu.render_prior_s() == render_prior(3, 2) > PRIOR_RENDER_S  # 3 workers on 2 cores
    assert DevicePlan("cuda", ("0",), render_workers=1).render_prior_s() == PRIOR_RENDER_S  # 2 on 2
    assert DevicePlan("cluster", address="tcp://h:1", render_workers=8).render_prior_s() == PRIOR_RENDER_S


def test_render_workers_render_only_and_see_no_gpu():
    """The render pool's processes advertise RENDER alone (no shard goes there), one thread, no GPU."""
    from distributed import Client, SpecCluster

    plan = DevicePlan("cuda", ("3",), render_workers=2)
    with SpecCluster(**cluster_kwargs(plan, torch_threads=2)) as cluster, Client(cluster) as client:
        seen = client.run(lambda: (os.environ["CUDA_VISIBLE_DEVICES"], os.environ[DEVICE_ENV],
                                   os.environ["OMP_NUM_THREADS"]))
        workers = client.scheduler_info()["workers"]
        resources = {w["name"]: w["resources"] for w in workers.values()}
        threads = {w["name"]: w["nthreads"] for w in workers.values()}
        names = {address: w["name"] for address, w in workers.items()}
        preloaded = {names[a]: ok for a, ok in client.run(lambda: "weasyprint" in sys.modules).items()}
    assert sorted(seen.values()) == [("", "cpu", "1"), ("", "cpu", "1"), ("3", "cuda", "2")]
    # the render pool imported WeasyPrint as it started; the device worker imports it when it first renders
    assert preloaded == {"limelight-cuda-0": False, "limelight-render-0": True, "limelight-render-1": True}
    assert resources == {"limelight-cuda-0": {RESOURCE: 1, RENDER_RESOURCE: 1},
                         "limelight-render-0": {RENDER_RESOURCE: 1}, "limelight-render-1": {RENDER_RESOURCE: 1}}
    assert set(threads.values()) == {1}


def test_cpu_workers_hide_gpus():
    from distributed import Client, SpecCluster

    with SpecCluster(**cluster_kwargs(DevicePlan("cpu", ("cpu0",)))) as cluster, Client(cluster) as client:
        seen = client.run(lambda: (os.environ["CUDA_VISIBLE_DEVICES"], os.environ[DEVICE_ENV]))
    assert list(seen.values()) == [("", "cpu")]


def _leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    return {k: v for key, value in tree.items()
            for k, v in (_leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
                         ).items()}


def test_dask_settings_name_real_keys():
    """A misspelt key would be a setting that silently does nothing."""
    import dask.config
    import distributed
    import yaml

    ours = _leaves(dask.config.collect(paths=[str(DASK_SETTINGS)], env={}))
    dask_own = _leaves(yaml.safe_load((Path(distributed.__file__).parent / "distributed.yaml").read_text()))
    assert {"distributed.worker.profile.enabled", "distributed.admin.tick.interval"} <= set(ours)
    for key, value in ours.items():
        assert key in dask_own, f"config/dask: {key} is not a Dask setting"
        assert value != dask_own[key], f"config/dask: {key} is Dask's own default"


def test_a_user_s_dask_setting_wins_over_limelight_s():
    import dask.config

    apply_dask_settings()
    with dask.config.set({"distributed.admin.tick.interval": "7ms"}):
        settings = apply_dask_settings()
        assert dask.config.get("distributed.admin.tick.interval") == "7ms"
        assert dask.config.get("distributed.worker.profile.enabled") is False
    assert settings["distributed"]["admin"]["tick"]["interval"] == "1s"
    assert dask.config.get("distributed.admin.tick.interval") == "1s"


def test_local_workers_run_with_limelight_s_dask_settings():
    import dask.config
    from distributed import Client, SpecCluster

    with SpecCluster(**cluster_kwargs(DevicePlan("cpu", ("cpu0",)))) as cluster, Client(cluster) as client:
        seen = client.run(lambda: (dask.config.get("distributed.worker.profile.enabled"),
                                   dask.config.get("distributed.admin.tick.interval")))
    assert list(seen.values()) == [(False, "1s")]


def test_existing_cluster_needs_device_workers():
    from distributed import LocalCluster

    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as plain,
        pytest.raises(DeviceError, match=f"none of its 1 worker\\(s\\) offers the {RESOURCE} resource"),
    ):
        check_cluster(plain.scheduler_address)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None,
                      resources={RESOURCE: 1}) as owning:
        plan = check_cluster(owning.scheduler_address)
        assert plan.kind == "cluster" and plan.workers == 2 and plan.render_workers == 0


def test_existing_cluster_counts_its_render_workers():
    from distributed import Client, Scheduler, SpecCluster, Worker

    options = {"nthreads": 1, "host": "127.0.0.1"}
    workers = {"gpu": {"cls": Worker, "options": {**options, "resources": {RESOURCE: 1}}},
               **{f"cpu-{i}": {"cls": Worker, "options": {**options, "resources": {RENDER_RESOURCE: 1}}}
                  for i in range(3)}}
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": None, "host": "127.0.0.1"}}
    with SpecCluster(workers=workers, scheduler=scheduler) as cluster, Client(cluster):
        plan = check_cluster(cluster.scheduler_address)
    assert plan.devices == ("gpu",) and plan.render_workers == 3
    assert plan.describe().endswith("(1 worker + 3 render workers)")


def test_unreachable_cluster():
    from flows.server import free_port

    with pytest.raises(DeviceError, match="cannot connect to the Dask scheduler"):
        check_cluster(f"tcp://127.0.0.1:{free_port()}", timeout=2)
