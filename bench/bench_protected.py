"""Prohibited bases on German credit: a model that uses age and marital status, letters that never state them.

    .venv/bin/python bench/bench_protected.py                     # 300 decisions, 1,000 samples, CPU
    .venv/bin/python bench/bench_protected.py --limit 0 --look /tmp/protected-look   # all 1,000; page images

German credit (bench/data, UCI Statlog: 1,000 applicants, 20 features) with the XGBoost model of
bench/bench_deadline.py (300 trees, trained on 800 applicants; the 800 are the reference). The model uses
``age_in_years``, ``personal_status_and_sex`` (marital status and sex in one column) and ``foreign_worker``.

1. ``limelight validate`` on the config as ``init`` would leave it unmarked: the warnings it prints.
2. A real ``limelight run`` (its own Prefect server, Dask workers, WeasyPrint) with the three marked:
   ``age_in_years`` as ``protected = "age"`` (62), the other two ``protected = true``.
3. From the published run, recomputed from ``explanations.parquet`` alone, and checked:
   - letters stating a protected feature (every letter's embedded JSON): must be 0;
   - decisions where one would have been a principal reason, and how many of them are in ``review.parquet``
     with the gate ``protected-basis``: must be all;
   - per feature: the manifest's and the summary's figures against the recomputation: must be equal.
4. With ``--look DIR``: page 1 of a letter that names fewer reasons, and the summary's section, en and zh-CN,
   as PNG (pdftoppm), for a person to look at.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

MARKS = {"age_in_years": {"protected": "age"}, "personal_status_and_sex": {"protected": True},
         "foreign_worker": {"protected": True}}


def _cli(args: list[str], state: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "XDG_STATE_HOME": str(state), "COLUMNS": "200", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, env=env,
                          cwd=REPO)


def configs(folder: Path, samples: int, shard_size: int) -> tuple[Path, Path]:
    """The German inputs and two configs: unmarked (as init leaves a config without its marks) and marked."""
    from bench_deadline import german_xgb

    from tasks.io import dump_toml

    plain = german_xgb(folder, samples, shard_size)
    raw = tomllib.loads(plain.read_text(encoding="utf-8"))
    for feature in raw["features"]:
        feature.update(MARKS.get(feature["name"], {}))
    marked = folder / "german-protected.toml"
    marked.write_text(dump_toml(raw), encoding="utf-8")
    return plain, marked


def recompute(out: Path) -> dict:
    """The targets, from the published files alone."""
    import pandas as pd
    import pikepdf
    import pyarrow.parquet as pq

    rows = pd.read_parquet(out / "explanations.parquet")
    would = rows[rows["withheld"].fillna(False).astype(bool) & (rows["role"] == "reason")]
    gated = set(would["customer_id"])
    queue = {r["id"]: r["review_reasons"] for r in pq.read_table(out / "review.parquet").to_pylist()}
    stating, letters = 0, 0
    for entry in pq.read_table(out / "reports.parquet").to_pylist():
        with pikepdf.open(out / entry["file"]) as pdf:
            document = json.loads(pdf.attachments["explanation.json"].get_file().read_bytes())
        letters += 1
        stated = {f["feature"] for f in document["factors"]}
        stating += bool(stated & {"personal_status_and_sex", "foreign_worker"}) or (
            entry["id"] in gated and "age_in_years" in stated)
    per_feature = {}
    for name in MARKS:
        mine = would[would["feature"] == name]
        per_feature[name] = {
            "reason_decisions": int(mine["customer_id"].nunique()),
            "mean_weight": round(float(mine["weight"].mean()), 6) if len(mine) else None,
            "omitted_decisions": int(rows[rows["withheld"].fillna(False).astype(bool)
                                          & (rows["feature"] == name)]["customer_id"].nunique()),
        }
    adverse = rows[rows["role"].isin(["reason", "favourable"])]["customer_id"].nunique()
    return {"letters": letters, "stating": stating, "gated": gated, "queue": queue, "per_feature": per_feature,
            "adverse": adverse, "decisions": rows["customer_id"].nunique()}


def look(out: Path, config_path: Path, folder: Path, gated: set[str]) -> None:
    """Page 1 of a gated letter with fewer reasons and the summary's section, en and zh-CN, as PNG."""
    import pandas as pd
    import pyarrow.parquet as pq

    from tasks.inputs.config import load_config
    from tasks.report.render import render_customer_reports, render_run_summary
    from tasks.run.info import RunInfo

    folder.mkdir(parents=True, exist_ok=True)
    table = pq.read_table(out / "explanations.parquet")
    run = RunInfo.from_dict(json.loads(table.schema.metadata[b"limelight.run"]))
    rows = table.to_pandas()
    reasons = rows[(rows["role"] == "reason") & ~rows["withheld"]].groupby("customer_id").size()
    fewer = sorted(gated, key=lambda i: (reasons.get(i, 0), i))[0]
    people = pd.read_parquet(config_path.parent / "decisions.parquet")
    manifest = json.loads((out / "manifest.json").read_text())
    for language in ("en", "zh-CN"):
        config = load_config(config_path)
        report = config.report.model_copy(update={"language": language,
                                                  "jurisdiction": "uk" if language == "en" else "cn"})
        config = config.model_copy(update={"report": report})
        made = render_customer_reports(rows[rows["customer_id"] == fewer], people[people["customer_id"] == fewer],
                                       config, run, folder / f"letters-{language}")
        summary = render_run_summary(rows, {k: manifest["counts"][k] for k in ("decisions_in", "reports_made",
                                                                               "needs_review", "failed")},
                                     [], config, run, folder / f"summary-{language}.pdf")
        for pdf, stem in ((made[0].path, f"letter-{language}"), (summary, f"summary-{language}")):
            subprocess.run(["pdftoppm", "-png", "-r", "60", str(pdf), str(folder / stem)], check=True)
    print(f"page images of {fewer}'s letter ({reasons.get(fewer, 0)} reasons stated) and the summary: {folder}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/limelight-bench-protected"))
    parser.add_argument("--samples", type=int, default=1000, help="LIME samples per decision")
    parser.add_argument("--shard-size", type=int, default=50)
    parser.add_argument("--limit", type=int, default=300, help="decisions (0: all 1,000)")
    parser.add_argument("--devices", default="cpu:1")
    parser.add_argument("--look", type=Path, default=None, help="write page images here")
    parser.add_argument("--run-out", type=Path, default=None,
                        help="the run's output folder (default: a new one under --out); an unfinished one resumes")
    args = parser.parse_args()

    plain, marked = configs(args.out / "inputs", args.samples, args.shard_size)
    state = args.out / "state"
    checked = _cli(["validate", str(plain)], state)
    flagged = [line for line in checked.stderr.splitlines() if "prohibited basis" in line]
    print(f"validate, unmarked config: {len(flagged)} feature(s) flagged (exit {checked.returncode})")
    for line in flagged:
        print("  " + line.strip()[:160])

    out = args.run_out or args.out / f"run-{int(time.time())}"
    command = ["run", str(marked), "--out", str(out), "--devices", args.devices,
               *(["--limit", str(args.limit)] if args.limit else [])]
    started = time.monotonic()
    result = _cli(command, state)
    print(f"limelight {' '.join(command)}: exit {result.returncode} in {time.monotonic() - started:.0f} s "
          "(wall time on a shared machine: noisy)")
    if result.returncode not in (0, 3):
        print(result.stdout[-2000:], result.stderr[-2000:])
        raise SystemExit(1)

    figures = recompute(out)
    manifest = json.loads((out / "manifest.json").read_text())
    import pikepdf

    with pikepdf.open(out / "summary.pdf") as pdf:
        summary = json.loads(pdf.attachments["run-summary.json"].get_file().read_bytes())
    gated, queue = figures["gated"], figures["queue"]
    in_review = sum(1 for i in gated if "protected-basis" in (queue.get(i) or []))
    print(f"decisions {figures['decisions']}, adverse {figures['adverse']}, letters {figures['letters']}")
    print(f"letters stating a protected feature: {figures['stating']} (target 0)")
    print(f"decisions where one would have been a principal reason: {len(gated)}; in review.parquet with gate "
          f"protected-basis: {in_review} (target {len(gated)})")
    print(f"{'feature':<26}{'would be a reason':>18}{'mean weight':>13}{'letters omitting':>18}  manifest/summary")
    recorded = {f["feature"]: f for f in manifest["protected"]["features"]}
    in_summary = {f["feature"]: f for f in summary["protected"]["features"]}
    ok = figures["stating"] == 0 and in_review == len(gated)
    for name, mine in figures["per_feature"].items():
        same = all(recorded[name][k] == v == in_summary[name][k] for k, v in mine.items())
        ok &= same
        weight = "—" if mine["mean_weight"] is None else f"{mine['mean_weight']:+.4f}"
        print(f"{name:<26}{mine['reason_decisions']:>18}{weight:>13}{mine['omitted_decisions']:>18}  "
              f"{'equal' if same else 'DIFFERENT'}")
    print(f"review_decisions: manifest {manifest['protected']['review_decisions']}, recomputed {len(gated)}; "
          f"review share {manifest['counts']['needs_review']}/{figures['decisions']}")
    print("all targets met" if ok else "TARGETS MISSED")
    if args.look:
        look(out, marked, args.look, gated)
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
