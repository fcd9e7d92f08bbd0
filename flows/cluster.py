"""Dask workers that each own one device, wrapped in a prefect-dask task runner.

``--devices`` picks the workers:

* ``auto`` (default): one worker per visible GPU, else CPU workers;
* ``cpu:N``: N CPU workers;
* ``cuda`` or ``cuda:0,1,...``: one worker per listed GPU (indices count the *visible* GPUs, as
  torch does).

Each worker is a Nanny process of a ``SpecCluster`` whose environment pins it to its device
(``CUDA_VISIBLE_DEVICES=<its GPU>``, or empty for CPU workers), so inside a worker the device is
always ``cuda:0``. Every worker advertises one ``DEVICE`` resource and explain tasks ask for it, so
a worker runs one shard at a time. ``--cluster tcp://host:port`` uses an existing cluster instead
(its workers must be started with ``--resources DEVICE=1``).

Rendering PDFs is CPU work (WeasyPrint, about 5-6 reports/s per core), so a run that renders starts a
**render pool** beside the device workers: ``--render-workers N`` (``[run] render_workers``) CPU worker
processes that advertise only ``RENDER``; by default as many as the cores the device workers leave, at
least one. Render tasks ask for ``RENDER``. Local device workers advertise ``RENDER`` too: they take
render batches when they have a free thread (once the shards are explained, every core renders);
``--render-workers 0`` leaves all rendering to them (the layout before the pool). On an existing cluster
GPU nodes' workers advertise ``DEVICE`` (and optionally ``RENDER``), CPU nodes' workers ``RENDER``; a
cluster where no worker offers ``RENDER`` falls back to rendering on any worker, with a warning.

GPUs are counted without initialising CUDA in this process (a CUDA context made before the workers
start would pin them all to one GPU, and importing torch here is slow): ``CUDA_VISIBLE_DEVICES``
when set, else ``nvidia-smi -L``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from tasks.errors import LimelightError
from tasks.explain.worker import DEVICE_ENV
from tasks.run.deadline import render_prior

#: The resource every worker advertises once; each explain task needs one.
RESOURCE = "DEVICE"
#: The resource of workers that render PDFs (render pool workers, and local device workers too).
RENDER_RESOURCE = "RENDER"
#: ``--devices auto`` without a GPU starts at most this many CPU workers.
MAX_AUTO_CPU_WORKERS = 16

_SMI_GPU = re.compile(r"^GPU (\d+):.*?\(UUID: (GPU-[^)]+)\)")
_SMI_MIG = re.compile(r"^\s+MIG .*?\(UUID: (MIG-[^)]+)\)")


class DeviceError(LimelightError):
    """A ``--devices`` or ``--cluster`` value that cannot be honoured."""


@dataclass(frozen=True)
class DevicePlan:
    """The workers of a run: ``devices`` are CUDA_VISIBLE_DEVICES values, or CPU slot names."""

    kind: Literal["cpu", "cuda", "cluster"]
    devices: tuple[str, ...] = ()
    address: str | None = None
    #: CPU workers that only render (started here), or a cluster's workers that offer RENDER.
    render_workers: int = 0

    @property
    def workers(self) -> int:
        return len(self.devices)

    def device_cores(self, torch_threads: int = 1) -> int:
        """Cores the device workers use: a CPU worker its ``torch_threads``, a GPU worker one (it feeds its GPU)."""
        return self.workers * (max(1, torch_threads) if self.kind == "cpu" else 1)

    def render_prior_s(self, torch_threads: int = 1) -> float:
        """A deadline run's render rate until it has timed a batch (tasks/run/deadline.py: :func:`render_prior`):
        workers started here share this host's cores; a cluster's workers are taken to have a core each."""
        if self.kind == "cluster":
            return render_prior(0, None)
        return render_prior(self.device_cores(torch_threads) + self.render_workers, cpu_slots())

    def describe(self) -> str:
        pool = f" + {self.render_workers} render worker{'s' if self.render_workers != 1 else ''}" \
            if self.render_workers else ""
        if self.kind == "cluster":
            return f"cluster {self.address} ({self.workers} worker{'s' if self.workers != 1 else ''}{pool})"
        if self.kind == "cpu":
            return f"{self.workers} CPU worker{'s' if self.workers != 1 else ''}{pool}"
        return (f"{self.workers} GPU worker{'s' if self.workers != 1 else ''} (CUDA devices "
                f"{', '.join(self.devices)}){pool}")


def visible_gpus(env: Mapping[str, str] | None = None, smi: str | None = "auto") -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries, without touching CUDA.

    ``CUDA_VISIBLE_DEVICES`` wins when set (empty or ``-1`` means none). Otherwise ``nvidia-smi -L``
    lists the GPUs; a GPU split into MIG instances contributes its MIG instances (one worker each).
    """
    env = os.environ if env is None else env
    if "CUDA_VISIBLE_DEVICES" in env:
        entries = [e.strip() for e in env["CUDA_VISIBLE_DEVICES"].split(",") if e.strip()]
        visible = []
        for entry in entries:
            if entry.startswith("-"):  # CUDA stops at the first invalid/negative entry
                break
            visible.append(entry)
        return visible
    command = shutil.which("nvidia-smi") if smi == "auto" else smi
    if not command:
        return []
    try:
        listing = subprocess.run([command, "-L"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if listing.returncode != 0:
        return []
    return parse_nvidia_smi(listing.stdout)


def parse_nvidia_smi(text: str) -> list[str]:
    """``nvidia-smi -L`` output -> device entries: GPU indices, or MIG UUIDs where a GPU has them."""
    gpus: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if match := _SMI_GPU.match(line):
            gpus.append((match.group(1), []))
        elif (match := _SMI_MIG.match(line)) and gpus:
            gpus[-1][1].append(match.group(1))
    return [device for index, migs in gpus for device in (migs or [index])]


def cpu_slots() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolve_devices(spec: str, cluster: str | None = None, torch_threads: int = 1) -> DevicePlan:
    """``--devices``/``--cluster`` -> the workers to start (or the cluster to use)."""
    if cluster:
        if not re.match(r"^[a-z0-9+]+://\S+$", cluster):
            raise DeviceError(f"--cluster {cluster!r}: expected a scheduler address like tcp://host:8786")
        return DevicePlan("cluster", address=cluster)
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        gpus = visible_gpus()
        if gpus:
            return DevicePlan("cuda", tuple(gpus))
        count = max(1, min(MAX_AUTO_CPU_WORKERS, cpu_slots() // max(1, torch_threads)))
        return DevicePlan("cpu", tuple(f"cpu{i}" for i in range(count)))
    if spec.startswith("cpu"):
        match = re.fullmatch(r"cpu(?::(\d+))?", spec)
        count = int(match.group(1)) if match and match.group(1) else (1 if match else 0)
        if not match or count < 1:
            raise DeviceError(f"--devices {spec!r}: expected cpu:N with N >= 1 (e.g. cpu:2)")
        return DevicePlan("cpu", tuple(f"cpu{i}" for i in range(count)))
    if spec.startswith("cuda"):
        return DevicePlan("cuda", tuple(_cuda_devices(spec)))
    raise DeviceError(f"--devices {spec!r}: expected 'auto', 'cpu:N' or 'cuda:0,1,...'")


def render_pool_size(plan: DevicePlan, requested: int | None, torch_threads: int = 1,
                     slots: int | None = None) -> int:
    """Render workers to start beside ``plan``'s device workers: ``requested``, else the cores they leave.

    A CPU device worker uses ``torch_threads`` cores, a GPU worker one (it feeds its GPU); what is left of
    the machine's ``slots`` renders, at least one worker. An existing cluster brings its own (0 here).
    """
    if plan.kind == "cluster":
        return 0
    if requested is not None:
        if requested < 0:
            raise DeviceError(f"--render-workers {requested}: expected 0 or more")
        return requested
    return max(1, (cpu_slots() if slots is None else slots) - plan.device_cores(torch_threads))


def with_render_pool(plan: DevicePlan, requested: int | None, torch_threads: int = 1) -> DevicePlan:
    """``plan`` with its render pool sized (see :func:`render_pool_size`)."""
    if plan.kind == "cluster":
        return plan
    return replace(plan, render_workers=render_pool_size(plan, requested, torch_threads))


def _cuda_devices(spec: str) -> list[str]:
    gpus = visible_gpus()
    if not gpus:
        raise DeviceError(f"--devices {spec!r}: no CUDA device is visible (nvidia-smi / CUDA_VISIBLE_DEVICES)")
    if spec == "cuda":
        return gpus
    match = re.fullmatch(r"cuda:(\d+(?:,\d+)*)", spec)
    if not match:
        raise DeviceError(f"--devices {spec!r}: expected cuda:0,1,... (indices of visible GPUs)")
    indices = [int(i) for i in match.group(1).split(",")]
    if len(set(indices)) != len(indices):
        raise DeviceError(f"--devices {spec!r}: a GPU is listed twice")
    for i in indices:
        if i >= len(gpus):
            raise DeviceError(f"--devices {spec!r}: cuda:{i} does not exist ({len(gpus)} GPU(s) visible)")
    return [gpus[i] for i in indices]


def worker_env(plan: DevicePlan, device: str | None, torch_threads: int) -> dict[str, str]:
    """The environment of one worker process: its device (None: a render worker, no GPU), and thread counts
    set on purpose."""
    threads = str(torch_threads)
    env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}
    if plan.kind == "cuda" and device is not None:
        env.update({"CUDA_VISIBLE_DEVICES": device, DEVICE_ENV: "cuda"})
    else:
        env.update({"CUDA_VISIBLE_DEVICES": "", DEVICE_ENV: "cpu"})
    return env


#: Imported by each render worker as it starts (WeasyPrint and the report step: 1.6 s on a quiet core), while the
#: device workers load the model; the render pool is idle until the first shard is explained.
RENDER_PRELOAD = "tasks.report.render"


#: limelight's Dask settings (Dask's bookkeeping at a pace for long single-threaded tasks): a folder, so that
#: workers started by hand read it with DASK_CONFIG=<this folder> (docs/operations.md, "Worker settings").
DASK_SETTINGS = Path(__file__).resolve().parents[1] / "config" / "dask"


def apply_dask_settings(folder: Path = DASK_SETTINGS) -> dict[str, Any]:
    """Make the settings in ``folder``'s YAML files Dask's defaults in this process, before a local cluster
    starts (its nannies hand this process's configuration to the workers they spawn). A value set by the user
    (a DASK_* variable, ~/.config/dask) keeps precedence. Once per process (a served deployment runs many
    nights). Returns the settings."""
    import dask.config
    import distributed  # noqa: F401  (its own defaults first, so that ours replace them)

    settings = dask.config.collect(paths=[str(folder)], env={})
    if settings not in dask.config.defaults:
        dask.config.update_defaults(settings)
    return settings


def cluster_kwargs(plan: DevicePlan, torch_threads: int = 1) -> dict[str, Any]:
    """SpecCluster arguments: a loopback scheduler without dashboard, one Nanny per device (resources DEVICE
    and RENDER), and the render pool's Nannies (RENDER only, no GPU, one thread)."""
    from distributed import Nanny, Scheduler
    from distributed.system import MEMORY_LIMIT

    if plan.kind == "cluster":
        raise ValueError("an existing cluster is not started here")
    apply_dask_settings()
    memory = max(1, MEMORY_LIMIT // max(1, plan.workers + plan.render_workers))

    def nanny(resources: dict[str, int], env: dict[str, str], preload: list[str]) -> dict[str, Any]:
        return {"cls": Nanny, "options": {"nthreads": 1, "resources": resources, "env": env, "memory_limit": memory,
                                          "host": "127.0.0.1", "silence_logs": logging.WARNING, "preload": preload}}

    workers = {
        f"limelight-{plan.kind}-{i}": nanny({RESOURCE: 1, RENDER_RESOURCE: 1}, worker_env(plan, device, torch_threads),
                                            [])
        for i, device in enumerate(plan.devices)
    }
    workers.update({  # a render worker imports WeasyPrint as it starts, not on the night's first report
        f"limelight-render-{i}": nanny({RENDER_RESOURCE: 1}, worker_env(plan, None, 1), [RENDER_PRELOAD])
        for i in range(plan.render_workers)
    })
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": None, "dashboard": False, "host": "127.0.0.1"}}
    return {"workers": workers, "scheduler": scheduler, "name": "limelight", "silence_logs": logging.WARNING}


def task_runner(plan: DevicePlan, torch_threads: int = 1) -> Any:
    """The prefect-dask task runner for ``plan`` (imported lazily: the CLI's ``validate`` needs no Dask)."""
    from prefect_dask import DaskTaskRunner

    if plan.kind == "cluster":
        return DaskTaskRunner(address=plan.address)
    return DaskTaskRunner(cluster_class="distributed.SpecCluster", cluster_kwargs=cluster_kwargs(plan, torch_threads))


def check_cluster(address: str, timeout: float = 15.0) -> DevicePlan:
    """Connect to an existing scheduler; fail clearly if none of its workers offers the DEVICE resource.

    (Tasks that need a resource no worker has would wait forever.) The plan's ``render_workers`` counts the
    workers that offer RENDER (0: the run renders on any worker, see the module's docstring).
    """
    from distributed import Client

    try:
        client = Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as error:
        raise DeviceError(f"--cluster {address}: cannot connect to the Dask scheduler ({error})") from None
    try:
        workers = client.scheduler_info(n_workers=-1).get("workers", {})
    except TypeError:  # older distributed without n_workers
        workers = client.scheduler_info().get("workers", {})
    finally:
        client.close()
    owning = sorted(
        w.get("name", addr) for addr, w in workers.items() if (w.get("resources") or {}).get(RESOURCE, 0) >= 1
    )
    if not owning:
        raise DeviceError(
            f"--cluster {address}: none of its {len(workers)} worker(s) offers the {RESOURCE} resource "
            f"(start workers with: dask worker {address} --nthreads 1 --resources {RESOURCE}=1)"
        )
    rendering = sum(1 for w in workers.values() if (w.get("resources") or {}).get(RENDER_RESOURCE, 0) >= 1)
    return DevicePlan("cluster", tuple(str(name) for name in owning), address, render_workers=rendering)
