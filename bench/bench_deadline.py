"""Deadline estimates against what runs achieve: real CLI runs with ``--deadline ... --best-effort``.

    .venv/bin/python bench/bench_deadline.py --case demo --seconds 400          # the demo, a deadline it meets
    .venv/bin/python bench/bench_deadline.py --case german-xgb --seconds 400    # German credit, XGBoost 300 trees
    .venv/bin/python bench/bench_deadline.py --case demo --seconds 60           # a cut: what is reported

Each run is the CLI as a user starts it (its own Prefect server). The deadline is ``--seconds`` after the start.
Printed from the run's manifest (``deadline.rates``, written by flows/work.py): the rate the estimate expected
after calibration (decisions/s until the end, explain and render together) and the rate achieved from the
calibration to the end, their ratio, the counts, and, for a cut run, the decisions explained more than 15 s
before the cut against those reported (from the run's log file: the times its shards finished).

The tree case: German credit (bench/data, 1,000 applicants, 20 features) with an XGBoost classifier of 300 trees,
depth 6, saved as ``model.ubj``; the 1,000 applicants are the decisions, the 800 training rows the reference.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: A shard's line in the run's log file (flows/pacing.py; the log's times are the machine's local time, UTC here).
EXPLAINED = re.compile(r"(\S+ \S+),(\d+) INFO limelight.pacing: explained TaskTime\(worker='[^']*', items=(\d+)")
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def bench_settings(samples: int, shard_size: int) -> dict:
    """A bench case's config but its features: inputs ``decisions.parquet``, ``reference.parquet`` and an XGBoost
    ``model.ubj`` beside it, ids in ``customer_id``, applicants' ``full_name`` and ``decision_date``."""
    return {
        "data": {"decisions": "decisions.parquet", "reference": "reference.parquet", "id_column": "customer_id"},
        "model": {"path": "model.ubj", "classes": ["approved", "declined"], "explain": "declined"},
        "explain": {"num_samples": samples, "top_k": 3, "seed": 20261122},
        "run": {"shard_size": shard_size, "torch_threads": 1},
        "report": {"language": "en", "jurisdiction": "uk", "applicant_fields": ["full_name"],
                   "date_column": "decision_date", "decision_threshold": 0.5,
                   "lender": {"name": "Northbridge Bank plc", "address": ["40 Old Broad Street", "London EC2N 1HQ"],
                              "contact": ["credit.review@northbridge.example"]}},
    }


def german_xgb(folder: Path, samples: int, shard_size: int) -> Path:
    """German credit as decisions, its training rows as the reference, an XGBoost model file, and a config."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    import xgboost as xgb
    from bench_quality import GERMAN, german_data

    from tasks.io import dump_toml

    folder.mkdir(parents=True, exist_ok=True)
    data = german_data()
    frame = pd.read_csv(GERMAN).drop(columns=["creditability"])
    frame.insert(0, "customer_id", [f"G{i:04d}" for i in range(len(frame))])
    frame["full_name"] = [f"Applicant {i:04d}" for i in range(len(frame))]
    frame["decision_date"] = pd.Timestamp("2026-11-20").date()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), folder / "decisions.parquet")
    pq.write_table(pa.Table.from_pandas(frame.iloc[data.train], preserve_index=False), folder / "reference.parquet")
    model = xgb.XGBClassifier(n_estimators=300, max_depth=6, learning_rate=0.05, n_jobs=1)
    model.fit(data.x[data.train], data.target[data.train])
    model.get_booster().save_model(str(folder / "model.ubj"))
    raw = {
        **bench_settings(samples, shard_size),
        "features": [
            {"name": f.name, "label": f.name.replace("_", " "), "kind": f.kind,
             **({"categories": list(f.categories or [])} if f.kind == "categorical" else {"decimals": 0})}
            for f in data.features
        ],
    }
    config = folder / "german.toml"
    config.write_text(dump_toml(raw), encoding="utf-8")
    return config


def demo_config() -> Path:
    from tasks.demo import build_demo

    build_demo()
    return REPO / "config" / "demo.toml"


def explained_before(log: Path, cut: datetime, seconds: float) -> int:
    """Decisions whose shard finished explaining more than ``seconds`` before ``cut`` (the run's log file)."""
    count = 0
    for line in log.read_text(errors="replace").splitlines():
        match = EXPLAINED.match(line)
        if match:
            when = datetime.strptime(f"{match.group(1)}.{match.group(2)}", "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
            if when <= cut - timedelta(seconds=seconds):
                count += int(match.group(3))
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=["demo", "german-xgb"], default="demo")
    parser.add_argument("--seconds", type=float, default=400.0, help="the deadline, seconds after the start")
    parser.add_argument("--out", type=Path, default=Path("/tmp/limelight-bench-deadline"))
    parser.add_argument("--samples", type=int, default=2000, help="german-xgb: LIME samples per decision")
    parser.add_argument("--shard-size", type=int, default=50, help="german-xgb: decisions per shard")
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()

    config = demo_config() if args.case == "demo" else german_xgb(args.out / "inputs", args.samples, args.shard_size)
    out = args.out / f"run-{args.case}-{int(time.time())}"
    state = args.out / "state"
    deadline = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=args.seconds)
    command = [sys.executable, "-m", "flows.cli", "run", str(config), "--out", str(out), "--deadline",
               deadline.isoformat(), "--best-effort", *(["--limit", str(args.limit)] if args.limit else [])]
    env = {**os.environ, "XDG_STATE_HOME": str(state), "COLUMNS": "200", "PYTHONPATH": str(REPO)}
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.monotonic() - started
    print(" ".join(command[1:]))
    print(f"exit {result.returncode} after {wall:.1f} s (deadline at {args.seconds:.0f} s); "
          f"finished {(datetime.now(UTC) - deadline).total_seconds():+.1f} s from the deadline")
    for line in result.stdout.splitlines():
        if line.startswith(("estimated finish", "deadline:", "run ")):
            print("  " + line.strip())
    if result.stderr.strip():
        print("stderr:", result.stderr.strip()[-2000:])
    manifest = json.loads((out / "manifest.json").read_text())
    rates = (manifest.get("deadline") or {}).get("rates") or {}
    counts = manifest["counts"]
    print(f"counts: {json.dumps({k: counts[k] for k in ('decisions_in', 'reported', 'not_reached')})}")
    if rates.get("estimated") and rates.get("achieved"):
        print(f"rate estimated after calibration {rates['estimated']:.2f} decisions/s, achieved "
              f"{rates['achieved']:.2f}: estimate / achieved = {rates['estimated'] / rates['achieved']:.2f}")
    logs = sorted((state / "limelight" / "logs").glob("*.log"))
    if logs and manifest["deadline"]["stopped_at_deadline"]:
        cut = deadline - timedelta(seconds=10)
        early = explained_before(logs[-1], cut, 15.0)
        print(f"explained more than 15 s before the cut: {early}; reported: {counts['reported']} "
              f"({'ok' if counts['reported'] >= early else 'SHORT'}); log {logs[-1]}")


if __name__ == "__main__":
    main()
