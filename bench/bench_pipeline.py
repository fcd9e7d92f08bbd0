"""Explanation throughput of the whole pipeline with 1 and 2 CPU workers, and full runs with a render pool (one run).

    .venv/bin/python bench/bench_pipeline.py [--workers 1,2] [--shard-size 50] [--samples N] [--decisions N]
                                             [--render-workers 1,2] [--devices cpu:1] [--render-decisions N]

Each worker count runs the real flow (``mode="explain"``: no PDFs) against one Prefect server, on a
fresh Dask cluster. Printed per run:

- ``explain wall``: from the workers being up to the last shard explained (includes each worker
  importing torch and loading the model and reference once), and decisions/s over it;
- ``compute``: the busiest worker's time inside the explain step, and decisions/s over that;
- whether the explanations are identical to the first run's (they must be).

Then full runs (``mode="run"``: PDFs) of ``--render-decisions`` decisions, side by side: the baseline "2 full
workers" (``cpu:2`` with ``--render-workers 0``: the two workers explain and render, the layout before the render
pool) and ``--devices`` (one CPU device worker) with each render pool size of ``--render-workers``. Printed:
end-to-end decisions/s (explain + render, from the workers being up to the last report), the render rate
(reports/s over the same span), and the time relative to the baseline (target: 1 device worker + a render pool
on 2 cores <= 1.3x the 2 full workers' time).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def variant_config(source: Path, folder: Path, shard_size: int, samples: int | None, decisions: int | None) -> Path:
    """The demo config with absolute paths and the benchmark's shard size (and optional sample/decision counts)."""
    import pyarrow.parquet as pq

    from tasks.inputs.config import load_config
    from tasks.io import dump_toml

    config = load_config(source)
    raw = tomllib.loads(source.read_text(encoding="utf-8"))
    decisions_path = Path(config.data.decisions)
    if decisions:
        decisions_path = folder / "decisions.parquet"
        pq.write_table(pq.read_table(config.data.decisions).slice(0, decisions), decisions_path)
    raw["data"].update({"decisions": str(decisions_path), "reference": str(config.data.reference)})
    raw["model"]["path"] = str(config.model.path)
    raw.setdefault("run", {})["shard_size"] = shard_size
    if samples:
        raw.setdefault("explain", {})["num_samples"] = samples
    target = folder / "bench.toml"
    target.write_text(dump_toml(raw), encoding="utf-8")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "config" / "demo.toml")
    parser.add_argument("--workers", default="1,2", help="CPU worker counts to compare, e.g. 1,2")
    parser.add_argument("--shard-size", type=int, default=50)
    parser.add_argument("--samples", type=int, default=None, help="LIME samples per decision (default: config)")
    parser.add_argument("--decisions", type=int, default=None, help="first N decisions (default: all)")
    parser.add_argument("--render-workers", default="1,2",
                        help="render pool sizes for the full runs, e.g. 1,2 ('' skips the full runs)")
    parser.add_argument("--devices", default="cpu:1", help="device workers of the render pool runs")
    parser.add_argument("--render-decisions", type=int, default=200, help="decisions of each full run")
    parser.add_argument("--skip-explain", action="store_true", help="only the full runs")
    parser.add_argument("--before", action="store_true",
                        help="also --devices with --render-workers 0: the device workers render alone")
    args = parser.parse_args()

    from flows.server import apply_quiet_env

    apply_quiet_env()
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "ERROR")
    import pandas as pd

    from flows.pipeline import limelight_flow
    from flows.server import prefect_server
    from tasks.demo import build_demo
    from tasks.inputs.config import load_config

    build_demo(Path(load_config(args.config).data.decisions).parent)
    counts = [] if args.skip_explain else [int(n) for n in args.workers.split(",")]
    pools = [int(n) for n in args.render_workers.split(",") if n.strip()]
    with tempfile.TemporaryDirectory(prefix="limelight-bench-") as tmp:
        folder = Path(tmp)
        config = variant_config(args.config, folder, args.shard_size, args.samples, args.decisions)
        loaded = load_config(config)
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; torch threads per worker: "
              f"{loaded.run.torch_threads}; engine {loaded.explain.engine}, {loaded.explain.num_samples} samples, "
              f"shard size {args.shard_size}")
        rows, first = [], None
        clock = time.perf_counter()
        with prefect_server():
            print(f"prefect server ready in {time.perf_counter() - clock:.1f} s")
            for n in counts:
                target = folder / f"explanations-{n}.parquet"
                summary = limelight_flow(config_path=str(config), out=str(target), devices=f"cpu:{n}", mode="explain")
                table = pd.read_parquet(target)
                first = table if first is None else first
                decisions = summary["counts"]["decisions_in"]
                busiest = max(w["seconds"] for w in summary["workers"])
                rows.append({
                    "workers": n,
                    "decisions": decisions,
                    "shards": summary["counts"]["shards"],
                    "workers start s": summary["seconds"]["workers_start"],
                    "explain wall s": summary["seconds"]["explain"],
                    "decisions/s (wall)": summary["decisions_per_second"],
                    "busiest worker s": round(busiest, 2),
                    "decisions/s (compute)": round(decisions / busiest, 1),
                    "identical": bool(table.equals(first)),
                })
            if pools:
                full = full_runs(folder, args, pools)
    if rows:
        frame = pd.DataFrame(rows).set_index("workers")
        print(frame.to_string())
        if len(rows) > 1:
            base = rows[0]["decisions/s (wall)"]
            for row in rows[1:]:
                speedup = row["decisions/s (wall)"] / base
                print(f"speed-up {rows[0]['workers']} -> {row['workers']} workers (wall): {speedup:.2f}x")
    if pools:
        print(f"\nfull runs (PDFs), {args.render_decisions} decisions each:")
        print(pd.DataFrame(full).set_index("layout").to_string())
        base = full[0]["explain+render s"]
        for row in full[1:]:
            print(f"{row['layout']}: {row['explain+render s'] / base:.2f}x the time of {full[0]['layout']}")


def full_runs(folder: Path, args: argparse.Namespace, pools: list[int]) -> list[dict[str, object]]:
    """The baseline (2 full workers) and each render pool size, as full runs of the same decisions."""
    from flows.pipeline import limelight_flow

    (folder / "full").mkdir()
    config = variant_config(args.config, folder / "full", args.shard_size, args.samples, args.render_decisions)
    layouts = [("2 full workers (cpu:2, render-workers 0)", "cpu:2", 0)]
    if args.before:
        layouts.append((f"{args.devices}, render-workers 0 (before the pool)", args.devices, 0))
    layouts += [(f"{args.devices} + {n} render worker{'s' if n != 1 else ''}", args.devices, n) for n in pools]
    rows: list[dict[str, object]] = []
    for name, devices, pool in layouts:
        target = folder / "full" / f"out-{devices.replace(':', '')}-{pool}"
        summary = limelight_flow(config_path=str(config), out=str(target), devices=devices, render_workers=pool)
        seconds = summary["seconds"]
        span = seconds["explain"] + seconds["render"]
        made = summary["counts"]["reports_made"]
        rows.append({
            "layout": name,
            "reports": made,
            "workers start s": seconds["workers_start"],
            "explain s": seconds["explain"],
            "render tail s": seconds["render"],
            "explain+render s": round(span, 2),
            "decisions/s (end to end)": round(summary["counts"]["decisions_in"] / span, 2),
            "reports/s": round(made / span, 2),
            "total s": seconds["total"],
        })
    return rows


if __name__ == "__main__":
    main()
