"""Time per decision and peak memory as the number of decisions grows (one run of this script, sizes in turn).

    .venv/bin/python bench/bench_scale.py [--explain 10000,100000] [--run 2000] [--samples 1000] [--devices cpu:2]

Each size gets its own demo portfolio of N decisions (tasks/demo/, cached in .cache/scale-N/) and runs the
real CLI in a subprocess under ``/usr/bin/time -v``: ``limelight explain`` (explanations only) for the
``--explain`` sizes, ``limelight run`` (PDFs) for the ``--run`` sizes. The engine is the plain one
(``[explain] method = "lime"``, ``stability_runs = 1``, ``adaptive = false``) with ``--samples`` samples per
decision. Printed per run: wall time (the CLI's, with its fixed ~20 s of server and worker start), time per
decision, the explain phase as the CLI reports it (and per decision), peak RSS (the largest single process: the
CLI, the Prefect server or a Dask worker; GNU time's "Maximum resident set size"), the flow process's own peak RSS
(its VmHWM, printed by the CLI at exit), task runs' sizes (shards), and the manifest's size. The targets (issue
22): the flow process's peak RSS within +10% and the time per decision flat (within 10%) from 100k to 1M.
The demo's ids have six digits, so its largest portfolio, the "1M" of the targets, is 999,999 decisions:

    .venv/bin/python bench/bench_scale.py --explain 10000,100000,999999 --run "" --samples 100
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def scale_config(n: int, folder: Path, samples: int, shard_size: int, layout: str | None = None) -> Path:
    """The demo config over a portfolio of ``n`` decisions, plain engine, absolute paths; ``layout``: the reports'
    folder layout (default: the config's)."""
    from tasks.demo import build_demo
    from tasks.io import dump_toml

    artifacts = build_demo(REPO / ".cache" / f"scale-{n}", n_decisions=n)
    raw = tomllib.loads((REPO / "config" / "demo.toml").read_text(encoding="utf-8"))
    raw["data"].update({"decisions": str(artifacts.decisions), "reference": str(artifacts.reference)})
    raw["model"]["path"] = str(artifacts.model)
    raw["explain"].update({"num_samples": samples, "method": "lime", "stability_runs": 1, "adaptive": False})
    raw["run"]["shard_size"] = shard_size
    if layout is not None:
        raw["report"]["layout"] = layout
    target = folder / f"scale-{n}.toml"
    target.write_text(dump_toml(raw), encoding="utf-8")
    return target


#: The CLI, run so that it prints its own peak RSS (VmHWM: the flow process alone, not its workers) at exit.
FLOW_PEAK = ("import atexit, sys; atexit.register(lambda: print('flow process VmHWM', next(line.split()[1] for line "
             "in open('/proc/self/status') if line.startswith('VmHWM:')), file=sys.stderr)); "
             "sys.argv[0] = 'limelight'; from flows.cli import app; app()")


def timed(command: list[str]) -> tuple[float, int, str, int]:
    """Run ``command`` under /usr/bin/time -v: (wall seconds, peak RSS in KiB of the largest process, its output's
    tail, the flow process's own peak RSS in KiB: 0 when it did not print it)."""
    done = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO)
    report = done.stderr
    flow = re.search(r"flow process VmHWM (\d+)", report)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)", report)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", report)
    if done.returncode not in (0, 3) or not wall or not rss:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{report[-3000:]}")
    seconds = int(wall.group(1) or 0) * 3600 + int(wall.group(2)) * 60 + float(wall.group(3))
    return seconds, int(rss.group(1)), done.stdout[-2000:], int(flow.group(1)) if flow else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--explain", default="10000,100000", help="decision counts of explain-only runs")
    parser.add_argument("--run", default="2000", help="decision counts of full runs (PDFs)")
    parser.add_argument("--samples", type=int, default=1000, help="LIME samples per decision")
    parser.add_argument("--shard-size", type=int, default=256)
    parser.add_argument("--devices", default="cpu:2")
    args = parser.parse_args()
    plans = [("explain", int(n)) for n in args.explain.split(",") if n.strip()]
    plans += [("run", int(n)) for n in args.run.split(",") if n.strip()]
    print(f"{os.cpu_count()} CPUs; plain engine, {args.samples} samples; devices {args.devices}; shard size "
          f">= {args.shard_size}", flush=True)
    with tempfile.TemporaryDirectory(prefix="limelight-scale-") as tmp:
        folder = Path(tmp)
        for mode, n in plans:
            config = scale_config(n, folder, args.samples, args.shard_size)
            out = folder / (f"{mode}-{n}.parquet" if mode == "explain" else f"{mode}-{n}")
            command = [sys.executable, "-c", FLOW_PEAK, mode, str(config), "--out", str(out), "--devices",
                       args.devices]
            seconds, rss_kib, output, flow_kib = timed(command)
            manifest = out / "manifest.json"
            extra = ""
            if manifest.is_file():
                data = json.loads(manifest.read_text())
                extra = (f"; manifest {manifest.stat().st_size:,} bytes, {data['execution']['shards']} shards, "
                         f"render batches of {data['execution']['render_batch']}")
            explained = re.search(r"explanations\s+([\d.]+) s", output)  # the CLI's own line: explain phase
            if explained:
                extra = f"; explain phase {explained.group(1)} s" + extra
            if explained:
                extra += f"; {1000 * float(explained.group(1)) / n:.2f} ms/decision in the explain phase"
            print(f"{mode:7} {n:>8,} decisions: {seconds:8.1f} s wall, {1000 * seconds / n:7.2f} ms/decision, "
                  f"peak RSS {rss_kib / 1024:7.1f} MiB (largest process), flow process {flow_kib / 1024:7.1f} MiB"
                  f"{extra}", flush=True)


if __name__ == "__main__":
    main()
