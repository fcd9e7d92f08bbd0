"""Render rate of a run on 1 and 2 render-only Dask workers, side by side (the explain work done once, before).

    PYTHONPATH=. .venv/bin/python bench/bench_render_workers.py [--decisions 2000] [--workers 1,2] [--samples 300]
                  [--rounds 1] [--dask-defaults]

A bank's cluster on loopback, every worker a process started as on another host: ``dask scheduler``, one device
worker (``dask worker --nthreads 1 --resources DEVICE=1``) and N render-only workers (``dask worker --nthreads 1
--resources RENDER=1 --preload tasks.report.render``), all with limelight's Dask settings (``DASK_CONFIG=config/dask``;
``--dask-defaults``: Dask's own). The output folder is on the disk they all share (docs/operations.md).

The explain work is done once: ``limelight run --cluster`` over a demo portfolio of ``--decisions`` decisions
(plain LIME, ``--samples`` samples) is stopped with SIGKILL to its process group as soon as every shard's record
is in its staging folder; its render records and PDFs are then deleted. Each measurement copies that output
folder and resumes the run there (the flow, in this process, against one Prefect server) on a fresh cluster with
N render workers: the shards come from their records, so what runs is the render stage: every customer report,
then the summary and the publication. Printed per N: the reports, the flow's render span (from the shards taken
from their records to the last report), reports/s over it, the whole resumed run's wall time, the reports each
worker rendered, and the time relative to N=1 (target: 2 workers <= 0.55x on a 2-core machine). Other jobs on
the machine slow both alike only when they last the whole script: the load average is printed beside the figures,
and ``--rounds 2`` measures 1, 2, 1, 2 and compares the sums. Printed too: each process's CPU seconds over each
resumed run (the flow, the Prefect server, the scheduler, each worker with its nanny), where the two cores went.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_scale import scale_config  # noqa: E402

from flows.cluster import DASK_SETTINGS, RENDER_PRELOAD  # noqa: E402


def _dask(*args: str) -> list[str]:
    executable = Path(sys.executable).with_name("dask")
    return [str(executable), *args] if executable.exists() else [sys.executable, "-m", "dask", *args]


@contextmanager
def dask_cluster(folder: Path, render_workers: int, port: int, settings: bool = True) -> Iterator[str]:
    """``dask scheduler`` + one DEVICE worker + ``render_workers`` RENDER-only workers, as subprocesses, started
    as docs/operations.md says: with limelight's Dask settings (``DASK_CONFIG=config/dask``; ``settings=False``:
    Dask's defaults), render workers importing the report step as they start (``--preload``)."""
    from distributed import Client

    address = f"tcp://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_HOME")}
    env.update({"CUDA_VISIBLE_DEVICES": "", "DASK_LOGGING__DISTRIBUTED": "warning", "PYTHONPATH": str(REPO),
                "PREFECT_HOME": str(folder / "worker-home")})
    if settings:
        env["DASK_CONFIG"] = str(DASK_SETTINGS)
    workers = {"device-0": ["DEVICE=1"],
               **{f"render-{i}": ["RENDER=1", "--preload", RENDER_PRELOAD] for i in range(render_workers)}}
    log = open(folder / f"cluster-{port}.log", "wb")  # noqa: SIM115
    processes = [subprocess.Popen(_dask("scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"),
                                  env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)]
    try:
        time.sleep(1.0)
        for name, resource in workers.items():
            processes.append(subprocess.Popen(
                _dask("worker", address, "--nthreads", "1", "--resources", *resource, "--name", name,
                      "--no-dashboard", "--host", "127.0.0.1"),
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        with Client(address, timeout=60, set_as_default=False) as client:
            client.wait_for_workers(len(workers), timeout=180)
        yield address
    finally:
        for process in reversed(processes):  # only what this function started, by id
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        log.close()


def run_until(command: list[str], stop: Callable[[], bool], log: Path, poll: float = 0.5) -> float:
    """Start ``command`` in its own process group; SIGKILL the group once ``stop()`` holds (or it ends by itself).
    Returns the seconds it ran."""
    clock = time.perf_counter()
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO,
                                   env={**os.environ, "PYTHONPATH": str(REPO)})
        try:
            while process.poll() is None:
                if stop():
                    os.killpg(process.pid, signal.SIGKILL)
                    break
                time.sleep(poll)
        finally:
            process.wait()
    return time.perf_counter() - clock


def _tag(process: psutil.Process) -> str:
    """What a process is, from its command line (a worker's nanny and its child share the ``--name``)."""
    line = process.cmdline()
    if "--name" in line:
        return line[line.index("--name") + 1]
    text = " ".join(line)
    return "scheduler" if " scheduler" in text else "prefect server" if "prefect" in text or "uvicorn" in text \
        else "other"


def cpu_seconds() -> dict[str, float]:
    """User + system CPU seconds of this process ("flow") and every process below it, summed per role."""
    me = psutil.Process()
    totals: dict[str, float] = {"flow": sum(me.cpu_times()[:2])}
    for child in me.children(recursive=True):
        try:
            chain = [child, *child.parents()]
            tag = next((t for t in (_tag(p) for p in chain if p.pid != me.pid) if t != "other"), "other")
            totals[tag] = totals.get(tag, 0.0) + sum(child.cpu_times()[:2])
        except psutil.Error:
            continue
    return totals


def records(out: Path, kind: str) -> list[Path]:
    """The staging folder's records of ``kind`` (explain / render) under ``out``."""
    return sorted(out.glob(f".limelight-staging-*/records/{kind}-*.json"))


def prime(config: Path, out: Path, address: str, shards: int, folder: Path) -> float:
    """Explain every shard through the CLI on the cluster, kill the run, drop what it rendered. Returns seconds."""
    command = [sys.executable, "-m", "flows.cli", "run", str(config), "--out", str(out), "--cluster", address]
    seconds = run_until(command, lambda: len(records(out, "explain")) >= shards, folder / "prime.log")
    if len(records(out, "explain")) < shards:
        raise SystemExit(f"the priming run ended before explaining {shards} shards: see {folder / 'prime.log'}")
    for record in records(out, "render"):
        record.unlink()
    for staging in out.glob(".limelight-staging-*"):
        shutil.rmtree(staging / "reports", ignore_errors=True)
    return seconds


def measure(config: Path, primed: Path, folder: Path, n: int, port: int, settings: bool = True,
            round_: int = 1) -> dict[str, object]:
    """Resume a copy of the primed run on a fresh cluster with ``n`` render workers; the flow's own timings."""
    from flows.pipeline import limelight_flow

    out = folder / f"out-{n}-{round_}"
    shutil.copytree(primed, out, symlinks=True)
    load = os.getloadavg()[0]
    with dask_cluster(folder, n, port, settings) as address:
        cpu_before, clock = cpu_seconds(), time.perf_counter()
        summary = limelight_flow(config_path=str(config), out=str(out), cluster=address)
        wall = time.perf_counter() - clock
        cpu_after = cpu_seconds()
    used = {tag: cpu_after[tag] - cpu_before.get(tag, 0.0) for tag in cpu_after}
    print(f"{n} render workers, CPU seconds over the resumed run ({wall:.1f} s wall, {os.cpu_count()} CPUs): "
          + ", ".join(f"{tag} {seconds:.1f}" for tag, seconds in sorted(used.items())), flush=True)
    resumed = summary["resumed"] or {}
    made = summary["counts"]["reports_made"]
    span = summary["seconds"]["explain"] + summary["seconds"]["render"]  # explain: shards taken from records
    return {"round": round_, "render workers": n, "reports": made, "shards reused": resumed.get("shards"),
            "render s": round(span, 1), "reports/s": round(made / span, 2), "resumed run s": round(wall, 1),
            "per worker": " ".join(str(v) for v in sorted(summary["rendered_by"].values(), reverse=True)),
            "load before": round(load, 1), "load after": round(os.getloadavg()[0], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=2000)
    parser.add_argument("--workers", default="1,2", help="render-only worker counts, side by side")
    parser.add_argument("--samples", type=int, default=300, help="LIME samples per decision (explain is not timed)")
    parser.add_argument("--shard-size", type=int, default=250)
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure the worker counts in turn this many times (1, 2, 1, 2, ...): a machine whose "
                             "speed drifts slows both alike; the ratio is of the summed render times")
    parser.add_argument("--dask-defaults", action="store_true",
                        help="start the cluster with Dask's own settings, not config/dask (for comparison)")
    args = parser.parse_args()

    from flows.server import apply_quiet_env, free_port

    apply_quiet_env()
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "ERROR")
    import pandas as pd

    from flows.server import prefect_server

    counts = [int(n) for n in args.workers.split(",") if n.strip()]
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; {args.decisions} decisions, render-only "
          f"workers {counts} beside one device worker", flush=True)
    with tempfile.TemporaryDirectory(prefix="limelight-render-workers-") as tmp, prefect_server():
        folder = Path(tmp)
        config = scale_config(args.decisions, folder, args.samples, args.shard_size, layout="flat")
        primed = folder / "primed"
        with dask_cluster(folder, 1, free_port(), not args.dask_defaults) as address:
            seconds = prime(config, primed, address, math.ceil(args.decisions / args.shard_size), folder)
        print(f"explained once in {seconds:.0f} s (run killed, its reports dropped)", flush=True)
        rows = [measure(config, primed, folder, n, free_port(), not args.dask_defaults, r)
                for r in range(1, args.rounds + 1) for n in counts]
    frame = pd.DataFrame(rows).set_index(["round", "render workers"])
    print(frame.to_string())
    spans = frame["render s"].groupby(level="render workers").sum()
    for n in counts[1:]:
        print(f"{n} render workers: {spans[n] / spans[counts[0]]:.2f}x the render time of {counts[0]} "
              f"({args.rounds} round(s) summed; target <= 0.55x for 2 vs 1)")
    print(f"load average at the end {os.getloadavg()[0]:.1f} (other jobs on the machine inflate wall times)")


if __name__ == "__main__":
    main()
