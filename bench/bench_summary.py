"""The run summary at 1k, 100k and 1M decisions: render time, pages and size, the old layout beside the new.

    PYTHONPATH=. .venv/bin/python bench/bench_summary.py [--sizes 1000,100000,1000000] [--review 0.05]
                  [--failed 0.002] [--language en] [--layouts 1,3] [--keep DIR]

Builds synthetic run results of N decisions without explaining them (vectorised: the demo's features, three
factors per decision, ``--review`` of them gated to review with one or two failed checks, ``--failed`` of them in
``failures.parquet``), writes them as the flow stages them (``explanations.parquet``, ``failures.parquet``) and
times what the flow's summary step does (flows/prefect_tasks.py ``summary_task``): read the explanations' summary
columns, the quality figures, render the summary PDF. Layout 1 is the summary of runs before the scalable summary
(the review list up to ``review_list_limit`` ids, every review id in the JSON attachment); layout 3 the current one
(top-N tables, the full lists in ``review.parquet`` and ``failures.parquet``; layout 2 without the PDF/UA-1
claim). Printed per size and layout: seconds (read, render), pages, PDF bytes. Target (issue 22): under 10 s at
1M, pages not growing with N.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.explain.aggregate import quality_summary, read_for_summary
from tasks.inputs.config import Config
from tasks.report.render import render_run_summary
from tasks.report.samples import demo_config, demo_run
from tasks.report.summary import summary_counts

GATES = ("low-fidelity", "prediction-gap", "unstable", "deletion-fails")


def synthetic_run(n: int, config: Config, review: float, failed: float, folder: Path, seed: int = 7) -> dict:
    """Write ``explanations.parquet`` and ``failures.parquet`` of ``n`` decisions into ``folder``; their counts."""
    rng = np.random.default_rng(seed)
    k = config.explain.top_k
    names = np.array([f.name for f in config.features])
    ids = np.char.add("CUST-", np.arange(1_000_000, 1_000_000 + n).astype(str))
    gated = rng.random(n) < review
    fidelity = np.where(gated, rng.uniform(0.05, 0.6, n), rng.uniform(0.35, 0.95, n))
    reasons = np.where(gated, np.where(fidelity < config.review.min_fidelity, "low-fidelity", ""), "")
    extra = np.array(GATES[1:])[rng.integers(0, len(GATES) - 1, n)]
    reasons = np.where(gated & (reasons == ""), extra, np.where(gated & (rng.random(n) < 0.3),
                                                                np.char.add(np.char.add(reasons, ","), extra),
                                                                reasons))
    features = np.stack([rng.permutation(len(names))[:k] for _ in range(min(n, 4096))])[np.arange(n) % min(n, 4096)]
    frame = pd.DataFrame({
        config.data.id_column: np.repeat(ids, k),
        "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), n),
        "role": "reason",
        "feature": names[features.ravel()],
        "direction": np.where(rng.random(n * k) < 0.7, "raises", "lowers"),
        "fidelity": np.repeat(fidelity, k),
        "needs_review": np.repeat(gated, k),
        "review_reasons": np.repeat(reasons, k),
        "stable": np.repeat(rng.random(n) < 0.98, k),
        "num_samples": np.int64(config.explain.num_samples),
        "prediction_gap": np.repeat(rng.uniform(0, 0.2, n), k),
    })
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), folder / "explanations.parquet")
    lost = rng.random(n) < failed
    stages = np.array(["input", "explain", "render"])[rng.integers(0, 3, int(lost.sum()))]
    failures = pa.table({config.data.id_column: pa.array(np.char.add("LOST-", ids[lost].astype(str))),
                         "stage": pa.array(stages), "error": pa.array(np.char.add("synthetic error for ", ids[lost]))})
    pq.write_table(failures, folder / "failures.parquet")
    return {"decisions_in": n + failures.num_rows, "reports_made": n, "needs_review": int(gated.sum()),
            "failed": failures.num_rows}


def pages(pdf: Path) -> int:
    info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, check=True).stdout
    return int(next(line.split()[-1] for line in info.splitlines() if line.startswith("Pages:")))


def time_summary(folder: Path, counts: dict, config: Config, layout: int, target: Path) -> tuple[float, float]:
    """What the flow's summary step does, timed: (read + quality seconds, render seconds)."""
    from tasks.report.index import review_ids_of

    start = time.perf_counter()
    frame = read_for_summary(folder / "explanations.parquet")
    quality = quality_summary(frame)
    review = review_ids_of(folder / "explanations.parquet", config.data.id_column) if layout == 1 else []
    read = time.perf_counter() - start
    start = time.perf_counter()
    render_run_summary(frame, summary_counts(counts), review, config, demo_run(config), target, quality,
                       layout=layout, failures=folder / "failures.parquet")
    return read, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,100000,1000000")
    parser.add_argument("--review", type=float, default=0.05, help="share of decisions gated to review")
    parser.add_argument("--failed", type=float, default=0.002, help="share of decisions in failures.parquet")
    parser.add_argument("--language", default="en")
    parser.add_argument("--layouts", default="1,3")
    parser.add_argument("--keep", help="copy the summaries here (summary-N-layoutL.pdf)")
    args = parser.parse_args()
    config = demo_config(args.language)
    keep = Path(args.keep) if args.keep else None
    if keep:
        keep.mkdir(parents=True, exist_ok=True)
    print(f"summary bench, {args.language}: {args.review:.0%} in review, {args.failed:.1%} failed "
          "(times on a shared 2-core machine: noisy)", flush=True)
    with tempfile.TemporaryDirectory(prefix="limelight-summary-") as tmp:
        for n in (int(s) for s in args.sizes.split(",")):
            folder = Path(tmp) / str(n)
            folder.mkdir()
            counts = synthetic_run(n, config, args.review, args.failed, folder)
            for layout in (int(v) for v in args.layouts.split(",")):
                target = (keep or folder) / f"summary-{n}-layout{layout}.pdf"
                read, render = time_summary(folder, counts, config, layout, target)
                print(f"{n:>9,} decisions, layout {layout}: read {read:6.2f} s + render {render:6.2f} s = "
                      f"{read + render:6.2f} s; {pages(target)} pages, {target.stat().st_size:>10,} bytes",
                      flush=True)


if __name__ == "__main__":
    main()
