"""Full runs with PDFs at growing sizes: PDFs/s and RSS flat; a run killed mid-render resumes losing little.

    PYTHONPATH=. .venv/bin/python bench/bench_full_run.py [--sizes 2000,20000] [--kill-at 20000] [--samples 300]

Each size gets a demo portfolio of N decisions (.cache/scale-N), plain LIME with ``--samples`` samples,
``[report] layout = "hash-prefix"``, and runs the real CLI (``limelight run``, default devices: on 2 cores two
CPU device workers and one render worker) in its own process group. While it runs the script samples, every
``--every`` seconds, the reports recorded in the staging folder's render records and the resident memory (RSS)
of the flow process (the CLI) and of the largest other process of its group (a Dask worker). Printed per size:
the steady PDFs/s (reports recorded between 10% and 90% of N, over the time between), the wall time, the peak
RSS of the flow process and of the largest worker, and whether every count of the manifest holds against the
published files.

``--kill-at N`` runs size N once more and kills it (SIGKILL to the process group: flow, workers and all) when half
of its reports are recorded, then reruns the same command, which resumes from the staging folder. Printed: the
batches recorded at the kill, the PDFs on disk then, how many of those the resumed run rendered again (their
file changed: work lost; a batch's record is written after its PDFs, so at most the batches in flight on the
render workers, one each, are lost), and the manifest's counts checked again. Both halves print their steady
PDFs/s and peak RSS too: the killed run is an uninterrupted run up to half of N, the resumed one does its end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_render_workers import records  # noqa: E402
from bench_scale import scale_config  # noqa: E402


@dataclass
class Watch:
    """What the sampler saw of one run."""

    started: float = field(default_factory=time.perf_counter)
    seen: dict[str, int] = field(default_factory=dict)  # render record -> reports in it
    progress: list[tuple[float, int]] = field(default_factory=list)  # (seconds, reports recorded)
    flow_rss: int = 0  # bytes, peak
    worker_rss: int = 0

    def sample(self, out: Path, pid: int) -> int:
        for record in records(out, "render"):
            if record.name not in self.seen:
                try:
                    self.seen[record.name] = len(json.loads(record.read_text())["reports"])
                except (OSError, ValueError):  # being written: next time
                    continue
        done = sum(self.seen.values())
        self.progress.append((time.perf_counter() - self.started, done))
        flow, worker = _group_rss(pid)
        self.flow_rss, self.worker_rss = max(self.flow_rss, flow), max(self.worker_rss, worker)
        return done

    def rate(self, total: int, start: int = 0, low_at: float = 0.1, high_at: float = 0.9) -> float | None:
        """Reports/s between ``low_at`` and ``high_at`` of the ``total - start`` reports recorded after ``start``
        (a resumed run starts with the killed one's)."""
        left = total - start
        low = next(((t, n) for t, n in self.progress if n >= start + low_at * left), None)
        high = next(((t, n) for t, n in self.progress if n >= start + high_at * left), None)
        if not low or not high or high[0] <= low[0]:
            return None
        return (high[1] - low[1]) / (high[0] - low[0])


def _group_rss(pid: int) -> tuple[int, int]:
    """RSS of process ``pid`` and the largest other process of its process group (psutil: a Dask dependency)."""
    import psutil

    flow = worker = 0
    for process in psutil.process_iter(["pid", "memory_info"]):
        try:
            if os.getpgid(process.info["pid"]) != pid:
                continue
        except OSError:
            continue
        rss = process.info["memory_info"].rss if process.info["memory_info"] else 0
        if process.info["pid"] == pid:
            flow = rss
        else:
            worker = max(worker, rss)
    return flow, worker


def run_cli(config: Path, out: Path, log: Path, every: float, kill_after: int | None = None
            ) -> tuple[int | None, Watch]:
    """``limelight run`` in its own process group, sampled; killed (SIGKILL to the group) once ``kill_after``
    reports are recorded. Returns its exit code (None: killed) and what was seen."""
    command = [sys.executable, "-m", "flows.cli", "run", str(config), "--out", str(out)]
    watch = Watch()
    with open(log, "ab") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
                                   cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        try:
            while process.poll() is None:
                done = watch.sample(out, process.pid)
                if kill_after is not None and done >= kill_after:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                    return None, watch
                time.sleep(every)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode, watch


def check_counts(out: Path, n: int) -> list[str]:
    """The manifest's counts against the published files; the problems found (none: they hold)."""
    manifest = json.loads((out / "manifest.json").read_text())
    counts = manifest["counts"]
    pdfs = sum(1 for _ in (out / "reports").rglob("*.pdf"))
    index = pq.read_metadata(out / "reports.parquet").num_rows
    id_column = manifest["inputs"]["id_column"]
    reported = len(pq.read_table(out / "explanations.parquet", columns=[id_column]).column(0).unique())
    failures = pq.read_metadata(out / "failures.parquet").num_rows
    review = pq.read_metadata(out / "review.parquet").num_rows if (out / "review.parquet").exists() else None
    checks = {
        "decisions_in == N": counts["decisions_in"] == n,
        "reported + failed + not_reached == decisions_in":
            counts["reported"] + counts["failed"] + counts["not_reached"] == counts["decisions_in"],
        "reports_made == PDFs in reports/": counts.get("reports_made") == pdfs,
        "reports_made == rows of reports.parquet": counts.get("reports_made") == index,
        "reported == decisions in explanations.parquet": counts["reported"] == reported,
        "failed + not_reached == rows of failures.parquet": counts["failed"] + counts["not_reached"] == failures,
        "needs_review == rows of review.parquet": review is None or counts["needs_review"] == review,
        "manifest's report index rows == reports.parquet": manifest["outputs"]["reports.parquet"].get("rows") == index,
        "no staging folder left": not list(out.glob(".limelight-staging-*")),
    }
    return [name for name, ok in checks.items() if not ok]


def _mib(value: int) -> str:
    return f"{value / 2**20:.0f} MiB"


def full_run(n: int, folder: Path, args: argparse.Namespace) -> None:
    config = scale_config(n, folder, args.samples, args.shard_size, layout="hash-prefix")
    out = folder / f"run-{n}"
    load = os.getloadavg()[0]
    code, watch = run_cli(config, out, folder / f"run-{n}.log", args.every)
    wall = time.perf_counter() - watch.started
    rate = watch.rate(n)
    problems = check_counts(out, n) if code in (0, 3) else [f"exit {code}: see {folder / f'run-{n}.log'}"]
    print(f"full run {n:>6,}: exit {code}, {wall:7.1f} s wall, steady {rate or float('nan'):.2f} PDFs/s, "
          f"overall {n / wall:.2f}/s; peak RSS flow {_mib(watch.flow_rss)}, largest worker {_mib(watch.worker_rss)}; "
          f"counts {'hold' if not problems else 'FAIL: ' + '; '.join(problems)} (load {load:.1f} -> "
          f"{os.getloadavg()[0]:.1f})", flush=True)


def kill_and_resume(n: int, folder: Path, args: argparse.Namespace) -> None:
    config = scale_config(n, folder, args.samples, args.shard_size, layout="hash-prefix")
    out = folder / f"killed-{n}"
    log = folder / f"killed-{n}.log"
    code, watch = run_cli(config, out, log, args.every, kill_after=n // 2)
    if code is not None:
        raise SystemExit(f"the run to kill ended first (exit {code}): see {log}")
    staging = next(out.glob(".limelight-staging-*"))
    recorded = {entry["file"] for r in records(out, "render") for entry in json.loads(r.read_text())["reports"]}
    on_disk = {p.relative_to(staging).as_posix(): p.stat().st_mtime_ns for p in (staging / "reports").rglob("*.pdf")}
    batches = len(records(out, "render"))
    explained = len(records(out, "explain"))
    killed_rate = watch.rate(n, high_at=0.45)
    print(f"killed at {time.perf_counter() - watch.started:.0f} s: {batches} render batches recorded "
          f"({len(recorded)} reports), {len(on_disk)} PDFs on disk, {explained} shards explained; steady "
          f"{killed_rate or float('nan'):.2f} PDFs/s (10% to 45%), peak RSS flow {_mib(watch.flow_rss)}, largest "
          f"worker {_mib(watch.worker_rss)}", flush=True)
    clock = time.perf_counter()
    code, resumed = run_cli(config, out, log, args.every)
    problems = check_counts(out, n) if code in (0, 3) else [f"exit {code}: see {log}"]
    again = [f for f, mtime in on_disk.items() if (out / f).stat().st_mtime_ns != mtime]
    kept = [f for f in recorded if on_disk.get(f) == (out / f).stat().st_mtime_ns]
    manifest = json.loads((out / "manifest.json").read_text())
    batch = manifest["execution"]["render_batch"]
    workers = manifest["execution"]["render_workers"] + manifest["execution"]["workers"]
    print(f"resumed: exit {code} in {time.perf_counter() - clock:.0f} s; {len(kept)} of {len(recorded)} recorded "
          f"reports kept as they were; {len(again)} PDFs on disk at the kill rendered again (work lost: "
          f"{len(again) / batch:.2f} batches of {batch}, {workers} workers could render); steady "
          f"{resumed.rate(n, start=len(recorded)) or float('nan'):.2f} PDFs/s, peak RSS flow "
          f"{_mib(resumed.flow_rss)}, largest worker {_mib(resumed.worker_rss)}; counts "
          f"{'hold' if not problems else 'FAIL: ' + '; '.join(problems)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2000,20000", help="decisions of each full run ('' for none)")
    parser.add_argument("--kill-at", type=int, default=20000, help="size of the kill/resume run (0: none)")
    parser.add_argument("--samples", type=int, default=300, help="LIME samples per decision")
    parser.add_argument("--shard-size", type=int, default=250)
    parser.add_argument("--every", type=float, default=2.0, help="seconds between samples")
    args = parser.parse_args()
    from flows.server import apply_quiet_env, prefect_server

    apply_quiet_env()
    sizes = [int(n) for n in args.sizes.split(",") if n.strip()]
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; plain LIME, {args.samples} samples, "
          f"shard size {args.shard_size}, layout hash-prefix; default devices", flush=True)
    with tempfile.TemporaryDirectory(prefix="limelight-full-") as tmp, prefect_server():
        folder = Path(tmp)
        for n in sizes:
            full_run(n, folder, args)
        if args.kill_at:
            kill_and_resume(args.kill_at, folder, args)
    print(f"load average at the end {os.getloadavg()[0]:.1f} (other jobs on the machine inflate wall times)")


if __name__ == "__main__":
    main()
