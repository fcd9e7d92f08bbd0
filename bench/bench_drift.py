"""Reason drift night over night on the demo: two nights of the same population, then a shifted night (one run).

    .venv/bin/python bench/bench_drift.py [--decisions 750] [--shift 0.35] [--devices cpu:2] [--pdfs] [--keep DIR]
    .venv/bin/python bench/bench_drift.py --again DIR   # the comparisons again from DIR's manifests (no run)

Three nights of demo applications (tasks/demo: the same generator and model as ``make demo``), each a fresh draw of
``--decisions`` applicants, in one hive-partitioned dataset (``decisions/decision_date=YYYY-MM-DD/``):

- 2026-11-18 and 2026-11-19: the same population (two seeds);
- 2026-11-20: a third draw whose population is shifted: for a random half of the applicants with revolving credit,
  ``credit_utilization`` is raised by ``--shift`` (capped at 1.2, the generator's maximum).

The real flow runs each night in turn with one config into ``ROOT/{date}`` (as the nightly deployment does), so each
night finds the previous one as its baseline under the output root. Printed per night: its baseline, the decline
rate, the review share, the fidelity median and PSI, the per-feature shares and PSI of the reason mix, the warnings.
Target: the second night raises no warning; the shifted night raises one that names credit utilisation.
``--pdfs`` renders the letters and summaries too (slower; the drift section is then in ROOT/<night>/summary.pdf).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tomllib
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
NIGHTS = ("2026-11-18", "2026-11-19", "2026-11-20")


def night_decisions(n: int, seed: int, night: str, shift: float) -> object:
    """One night's applications: a fresh draw of the demo portfolio (its gaps too); ``shift`` > 0 raises the
    utilisation of a random half of those with revolving credit."""
    from tasks.demo.portfolio import add_gaps, derived_seed, generate_portfolio

    frame = add_gaps(generate_portfolio(n, seed), derived_seed(seed, 7))
    frame["customer_id"] = night.replace("-", "") + "-" + frame["customer_id"]  # ids unique across nights
    if shift:
        rng = np.random.default_rng(seed + 1)
        has = frame["credit_utilization"].notna().to_numpy()
        half = has & (rng.random(len(frame)) < 0.5)
        frame.loc[half, "credit_utilization"] = np.minimum(frame.loc[half, "credit_utilization"] + shift, 1.2)
    return frame.drop(columns=["decision_date"])  # the night is the partition's key


def write_inputs(folder: Path, n: int, shift: float, pdfs: bool) -> Path:
    """The three nights' dataset and one config (the demo's, reading that dataset) in ``folder``."""
    from tasks.demo import build_demo
    from tasks.io import dump_toml

    demo = build_demo()
    for i, night in enumerate(NIGHTS):
        part = folder / "decisions" / f"decision_date={night}"
        part.mkdir(parents=True)
        frame = night_decisions(n, 1000 + i, night, shift if night == NIGHTS[-1] else 0.0)
        frame.to_parquet(part / "part-0.parquet", index=False)  # type: ignore[attr-defined]
    raw = tomllib.loads((REPO / "config" / "demo.toml").read_text(encoding="utf-8"))
    raw["data"].update({"decisions": str(folder / "decisions"), "reference": str(demo.reference),
                        "date_column": "decision_date"})
    raw["model"]["path"] = str(demo.model)
    raw["run"]["shard_size"] = 100
    raw["report"]["enabled"] = pdfs
    config = folder / "nightly.toml"
    config.write_text(dump_toml(raw), encoding="utf-8")
    return config


def show(night: str, summary: dict, manifest: dict, seconds: float) -> None:
    drift = manifest.get("drift")
    print(f"\n== night {night}: run {summary['run_id']}, {summary['counts']['decisions_in']} decisions"
          + (f", {seconds:.0f} s (busy shared machine)" if seconds else ""))
    if drift is None:
        print("   no baseline: nothing compared")
        return
    d, r, f = drift["decline_rate"], drift["review"], drift["fidelity"]
    print(f"   baseline: night {drift['baseline']['run_date']} ({drift['baseline']['found']}), "
          f"{drift['baseline_decisions']} decisions")
    print(f"   decline rate {d['rate']:.3f} vs {d['baseline_rate']:.3f} ({d['status']}); declines "
          f"{drift['declines']} vs {drift['baseline_declines']}")
    print(f"   review share {r['share']:.3f} vs {r['baseline_share']:.3f} ({r['status']})")
    print(f"   fidelity median {f['quantiles']['p50']} vs {f['baseline_quantiles']['p50']}, PSI {f['psi']}, "
          f"KS {f['ks']} ({f['status']})")
    print(f"   reason mix PSI {drift['reason_mix']['psi']}")
    print(f"   {'feature':<24} {'baseline':>9} {'tonight':>9} {'PSI':>7}  status")
    for row in drift["reason_mix"]["features"]:
        print(f"   {row['feature']:<24} {row['baseline_share']:>9.3f} {row['share']:>9.3f} {row['psi']:>7.3f}  "
              f"{row['status']}")
    print(f"   warnings ({len(drift['warnings'])}):")
    for warning in drift["warnings"] or ["none"]:
        print(f"   - {warning}")


def again(folder: Path) -> None:
    """Each night of ``folder`` against the night before, from the profiles their manifests recorded, with the
    thresholds and the comparison of this checkout (a change to either needs no new run)."""
    import json

    from tasks.inputs.config import load_config
    from tasks.run.drift import baseline_record, compare

    config = load_config(folder / "nightly.toml")
    labels = {f.name: f.label or f.name for f in config.features}
    paths = [folder / "out" / night / "manifest.json" for night in NIGHTS]
    manifests = [json.loads(p.read_text(encoding="utf-8")) for p in paths]
    show(NIGHTS[0], manifests[0], {}, 0.0)
    for i in range(1, len(NIGHTS)):
        drift = {"baseline": baseline_record(manifests[i - 1], paths[i - 1], "previous run"),
                 **compare(manifests[i - 1]["drift_profile"], manifests[i]["drift_profile"], config.drift, labels)}
        show(NIGHTS[i], manifests[i], {"drift": drift}, 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=750, help="applicants per night (declines ~20%%)")
    parser.add_argument("--shift", type=float, default=0.35, help="utilisation added for half the third night")
    parser.add_argument("--devices", default="cpu:2")
    parser.add_argument("--pdfs", action="store_true", help="render letters and summaries too")
    parser.add_argument("--keep", type=Path, help="write here (kept) instead of a temporary folder")
    parser.add_argument("--again", type=Path, help="compare the nights a --keep run left in DIR again, no run")
    args = parser.parse_args()
    if args.again:
        again(args.again)
        return

    import json

    from flows.pipeline import limelight_flow
    from flows.server import prefect_server

    folder = args.keep or Path(tempfile.mkdtemp(prefix="bench-drift-"))
    folder.mkdir(parents=True, exist_ok=True)
    config = write_inputs(folder, args.decisions, args.shift, args.pdfs)
    verdicts = []
    with prefect_server():
        for night in NIGHTS:
            started = time.perf_counter()
            summary = limelight_flow(config_path=str(config), out=str(folder / "out" / "{date}"), run_date=night,
                                     devices=args.devices, trigger="nightly")
            manifest = json.loads((folder / "out" / night / "manifest.json").read_text(encoding="utf-8"))
            show(night, summary, manifest, time.perf_counter() - started)
            verdicts.append((manifest.get("drift") or {}).get("warnings"))
    same, shifted = verdicts[1], verdicts[2]
    named = any("credit_utilization" in w for w in shifted or [])
    print(f"\nsame population: {len(same or [])} warning(s) (target 0); shifted night: {len(shifted or [])} "
          f"warning(s), credit utilisation named: {named} (target: yes)")
    print(f"outputs: {folder}")


if __name__ == "__main__":
    main()
