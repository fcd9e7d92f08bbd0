"""Wide models (issue 20, item 4): the default method on a bureau-style portfolio at d = 50, 150 and 300.

A bank's bureau model has hundreds of inputs, most of them variants of a few attributes (inquiries in the last 3,
6, 12 and 24 months; utilisation on bank cards, retail cards and all revolving lines; delinquencies by severity
and window; balances and limits by trade type; months since the last delinquency, missing when there was none),
so they are strongly correlated. This builds such a portfolio for any d from five latent traits per applicant,
trains an XGBoost model on it (300 trees, depth 4, column subsampling, as bureau models are), ships it as a .ubj
file and explains decisions through ``[model] path`` as a worker does, one torch thread, in a child process per d
(its peak RSS is the explanation's, not the training's). Per d it prints:

- time per decision (each seed), and the plain engine's (lime's work only: one stream of S) for scale;
- held-out fidelity (share >= 0.5, median), median |local_pred - model_pred|, the review share at the default gates;
- the same principal reasons under two seeds; declines with a favourable factor among their reasons;
- the per-bin layout: columns per decision (P without the budget), features given their own per-value columns;
- peak RSS against ``memory_budget_mb``.

    .venv/bin/python bench/bench_wide.py                           # d = 50 150 300, 100 decisions, 2 seeds
    .venv/bin/python bench/bench_wide.py --widths 150 --decisions 200
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tasks.inputs.config import FeatureConfig  # noqa: E402

CATEGORICAL = {"housing": ["own", "mortgage", "rent"], "employment": ["salaried", "self-employed", "retired",
                                                                      "other"],
               "region": ["north", "south", "east", "west", "capital"]}
WINDOWS = (3, 6, 12, 24, 36, 48)
TRADES = ("bankcard", "retail", "auto", "student", "personal", "mortgage", "heloc", "all")


def _attribute(kind: int, variant: int, t: dict[str, np.ndarray], rng: np.random.Generator
               ) -> tuple[str, np.ndarray]:
    """One bureau attribute: archetype ``kind``, its ``variant``-th window or trade type, from latent traits ``t``
    (quality q, utilisation u, wealth w, activity a, file age f) with its own noise."""
    rows = len(t["q"])
    window = WINDOWS[variant % len(WINDOWS)]
    trade = TRADES[variant % len(TRADES)]
    noise = rng.normal(0, 0.35, rows)
    scale = np.log(window / 6)
    if kind == 0:
        return f"inquiries_{window}m_v{variant}", rng.poisson(np.exp(-0.4 + 0.6 * t["a"] + 0.5 * scale + noise))
    if kind == 1:
        return f"trades_opened_{window}m_v{variant}", rng.poisson(np.exp(-0.6 + 0.5 * t["a"] + 0.4 * scale + noise))
    if kind == 2:
        severity = 30 * (1 + variant % 3)
        rate = np.exp(-2.0 - 1.1 * t["q"] - 0.3 * (severity / 30 - 1) + 0.4 * scale + noise)
        return f"delinquencies_{severity}d_{window}m_v{variant}", rng.poisson(rate)
    if kind == 3:
        return f"utilisation_{trade}_v{variant}", np.clip(1 / (1 + np.exp(-(t["u"] + noise - 0.3))) * 1.1, 0, 1.5)
    if kind == 4:
        return f"balance_{trade}_v{variant}", np.round(np.exp(7.5 + 0.8 * t["w"] + 0.5 * t["u"] + noise), -1)
    if kind == 5:
        return f"limit_{trade}_v{variant}", np.round(np.exp(8.3 + 0.9 * t["w"] + 0.3 * t["q"] + noise), -2)
    if kind == 6:
        had = rng.random(rows) < 1 / (1 + np.exp(1.2 + 1.2 * t["q"] - noise))
        months = np.where(had, np.ceil(rng.exponential(18 + 8 * np.maximum(t["q"], -1.5), rows) + 1), np.nan)
        return f"months_since_delinquency_{trade}_v{variant}", months
    if kind == 7:
        return f"months_oldest_trade_{trade}_v{variant}", np.ceil(np.exp(4.2 + 0.6 * t["f"] + 0.3 * noise))
    return f"open_trades_{trade}_v{variant}", rng.poisson(np.exp(1.0 + 0.3 * t["a"] + 0.3 * t["f"] + noise))


def bureau_data(d: int, rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[FeatureConfig]]:
    """``(x float64 [rows, d], bad bool [rows], features)``: d - 3 numeric bureau attributes (some with gaps) and
    3 categorical fields; the outcome depends on the traits through a handful of attributes, nonlinearly."""
    rng = np.random.default_rng(seed)
    q, u, w, a, f = rng.multivariate_normal(np.zeros(5), [[1, -0.5, 0.3, -0.3, 0.4], [-0.5, 1, -0.2, 0.3, -0.2],
                                                           [0.3, -0.2, 1, 0.0, 0.3], [-0.3, 0.3, 0.0, 1, -0.3],
                                                           [0.4, -0.2, 0.3, -0.3, 1]], rows).T
    traits = {"q": q, "u": u, "w": w, "a": a, "f": f}
    columns, features = [], []
    for i in range(d - len(CATEGORICAL)):
        name, values = _attribute(i % 9, i // 9, traits, rng)
        columns.append(values.astype(np.float64))
        features.append(FeatureConfig(name=name, label=name.replace("_", " "), kind="numeric"))
    housing = np.digitize(w + rng.normal(0, 0.8, rows), [-0.5, 0.6])
    employment = rng.choice(4, rows, p=[0.65, 0.15, 0.1, 0.1])
    region = rng.choice(5, rows, p=[0.2, 0.25, 0.2, 0.2, 0.15])
    for (name, levels), values in zip(CATEGORICAL.items(), (housing, employment, region), strict=True):
        columns.append(values.astype(np.float64))
        features.append(FeatureConfig(name=name, label=name, kind="categorical", categories=levels))
    x = np.stack(columns, axis=1)
    utilisation, inquiries, delinquent = x[:, 3], x[:, 9], x[:, 2]
    score = (-2.3 - 0.9 * q + 1.8 * np.clip(utilisation - 0.5, 0, None) + 0.12 * np.minimum(inquiries, 8)
             + 0.6 * (delinquent > 0) - 0.25 * w + 0.4 * (employment == 3) + 0.3 * (housing == 2) * (u > 0.5))
    bad = rng.random(rows) < 1 / (1 + np.exp(-score))
    return x, bad, features


def build(d: int, folder: Path, rows: int, seed: int) -> dict:
    """Train the model for width ``d`` and write what a bank ships: the reference and decisions as arrays, the
    model as .ubj, the features as JSON."""
    import xgboost as xgb

    x, bad, features = bureau_data(d, rows, seed)
    train = np.arange(rows) < rows * 0.7
    model = xgb.XGBClassifier(n_estimators=300, max_depth=4, learning_rate=0.05, subsample=0.8,
                              colsample_bytree=0.5, n_jobs=2, random_state=seed)
    model.fit(x[train], bad[train])
    p = model.predict_proba(x[~train])[:, 1]
    order = np.argsort(p)
    ranks = np.empty(len(p))
    ranks[order] = np.arange(len(p))
    positives = bad[~train]
    hits, misses = positives.sum(), (~positives).sum()
    auc = (ranks[positives].sum() - hits * (hits - 1) / 2) / (hits * misses)
    path = folder / f"bureau-{d}.ubj"
    model.save_model(path)
    np.save(folder / f"reference-{d}.npy", x[train])
    np.save(folder / f"decisions-{d}.npy", x[~train])
    (folder / f"features-{d}.json").write_text(json.dumps([f.model_dump(mode="json") for f in features]))
    missing = float(np.isnan(x).mean())
    return {"d": d, "auc": float(auc), "bad_rate": float(bad.mean()), "missing": missing, "path": str(path)}


def child(d: int, folder: Path, decisions: int, seeds: int, samples: int, budget: int) -> dict:
    """Explain ``decisions`` decisions of width ``d`` under ``seeds`` seeds and the plain engine, one thread."""
    import torch

    torch.set_num_threads(1)
    from bench_matched import _review_config, adverse_with_favourable_reason, principal_sets

    from tasks.engine import BatchedLime, fit_reference
    from tasks.engine.perbin import PerBinLime
    from tasks.explain.aggregate import review_reasons
    from tasks.inputs.config import ModelConfig
    from tasks.inputs.model import load_model

    features = [FeatureConfig(**f) for f in json.loads((folder / f"features-{d}.json").read_text())]
    stats = fit_reference(np.load(folder / f"reference-{d}.npy"), features)
    x = np.load(folder / f"decisions-{d}.npy")[:decisions]
    ids = [f"B-{i:05d}" for i in range(len(x))]
    model = load_model(ModelConfig(path=folder / f"bureau-{d}.ubj", classes=["good", "bad"], explain="bad"), d)
    loaded_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    threshold = 0.3
    common = dict(stats=stats, model=model, explain_index=1, num_samples=samples, memory_budget_mb=budget)
    plain = BatchedLime(**common, stability_runs=1, deletion_check=False)
    plain.explain(x[:2], ids[:2])  # warm-up
    start = time.perf_counter()
    plain.explain(x, ids)
    plain_seconds = time.perf_counter() - start
    results, seconds = [], []
    for seed in range(seeds):
        engine = PerBinLime(**common, seed=seed, stability_runs=2, adaptive=True, adverse_threshold=threshold)
        start = time.perf_counter()
        results.append(engine.explain(x, ids))
        seconds.append(time.perf_counter() - start)
    first = results[0]
    gates = review_reasons(first, _review_config(threshold))
    layout = engine._pilot_layouts(x[:20], ids[:20]) if engine.wide else None
    sets = [principal_sets(r, threshold) for r in results]
    bad, adverse = adverse_with_favourable_reason(first, threshold, 3)
    return {
        "d": d, "decisions": len(x), "plain_s_per_decision": plain_seconds / len(x),
        "s_per_decision": [s / len(x) for s in seconds],
        "fidelity_ge_05": float(np.mean(first.fidelity >= 0.5)), "fidelity_median": float(np.median(first.fidelity)),
        "gap_median": float(np.median(np.abs(first.local_pred - first.model_pred))),
        "review": float(np.mean([bool(r) for r in gates])),
        "review_by_gate": dict(Counter(g for r in gates for g in r)),
        "same_reasons": float(np.mean([a == b for a, b in zip(sets[0], sets[-1], strict=True)])) if seeds > 1 else None,
        "declines_with_favourable_reason": f"{bad}/{adverse}",
        "samples": float(np.mean(first.num_samples)), "indicators": engine.num_columns,
        "columns": engine.design_columns,
        "expanded_features": None if layout is None else float(layout.expanded.sum(1).float().mean()),
        "rss_loaded_mb": loaded_rss, "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "budget_mb": budget,
    }


def interleaved_timing(widths: list[int], folder: Path, decisions: int, rounds: int, samples: int, budget: int
                       ) -> dict[int, float]:
    """Seconds per decision of the default engine for each width, measured in ``rounds`` interleaved rounds of
    ``decisions`` decisions each (d = 50, 150, 300, 50, 150, ...), one thread, in one process: a load that
    changes during the run then falls on every width alike, and the ratios between widths hold."""
    import torch

    torch.set_num_threads(1)
    from tasks.engine import fit_reference
    from tasks.engine.perbin import PerBinLime
    from tasks.inputs.config import ModelConfig
    from tasks.inputs.model import load_model

    engines, data = {}, {}
    for d in widths:
        features = [FeatureConfig(**f) for f in json.loads((folder / f"features-{d}.json").read_text())]
        stats = fit_reference(np.load(folder / f"reference-{d}.npy"), features)
        model = load_model(ModelConfig(path=folder / f"bureau-{d}.ubj", classes=["good", "bad"], explain="bad"), d)
        engines[d] = PerBinLime(stats=stats, model=model, explain_index=1, num_samples=samples, stability_runs=2,
                                adaptive=True, adverse_threshold=0.3, memory_budget_mb=budget)
        data[d] = np.load(folder / f"decisions-{d}.npy")
        engines[d].explain(data[d][-2:], ["warm-a", "warm-b"])
    spent = dict.fromkeys(widths, 0.0)
    for r in range(rounds):
        rows = slice(r * decisions, (r + 1) * decisions)
        for d in widths:
            x = data[d][rows]
            start = time.perf_counter()
            engines[d].explain(x, [f"T-{r}-{i}" for i in range(len(x))])
            spent[d] += time.perf_counter() - start
    return {d: spent[d] / (rounds * decisions) for d in widths}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", type=int, nargs="+", default=[50, 150, 300])
    parser.add_argument("--decisions", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--rows", type=int, default=20000, help="portfolio size (70%% reference, 30%% decisions)")
    parser.add_argument("--budget", type=int, default=1024, help="memory_budget_mb (the CPU default: 1024)")
    parser.add_argument("--rounds", type=int, default=0,
                        help="then time every width in this many interleaved rounds of 10 decisions, in one process")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--timing", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.timing:
        print(json.dumps(interleaved_timing(args.widths, args.folder, 10, args.rounds, args.samples, args.budget)))
        return
    if args.child:
        print(json.dumps(child(args.child, args.folder, args.decisions, args.seeds, args.samples, args.budget)))
        return
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        for d in args.widths:
            built = build(d, folder, args.rows, seed=0)
            print(f"d = {d}: XGBoost 300 trees depth 4 on {int(args.rows * 0.7):,} applications, bad rate "
                  f"{built['bad_rate']:.1%}, held-out AUC {built['auc']:.3f}, {built['missing']:.1%} of values missing",
                  flush=True)
            out = subprocess.run([sys.executable, __file__, "--child", str(d), "--folder", str(folder),
                                  "--decisions", str(args.decisions), "--seeds", str(args.seeds),
                                  "--samples", str(args.samples), "--budget", str(args.budget)],
                                 check=True, stdout=subprocess.PIPE, text=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            times = ", ".join(f"{s:.2f}" for s in r["s_per_decision"])
            print(f"  time per decision {times} s (plain engine {r['plain_s_per_decision']:.3f} s) | fidelity >= 0.5 "
                  f"{r['fidelity_ge_05']:.1%}, median {r['fidelity_median']:.3f} | gap median {r['gap_median']:.3f} | "
                  f"review {r['review']:.1%} {r['review_by_gate']} | same reasons 2 seeds "
                  f"{'-' if r['same_reasons'] is None else format(r['same_reasons'], '.1%')} | "
                  f"declines with a "
                  f"favourable reason {r['declines_with_favourable_reason']}")
            print(f"  samples {r['samples']:,.0f} | indicators {r['indicators']}, columns per decision {r['columns']}, "
                  f"features with per-value columns {r['expanded_features'] or 'all'} | RSS loaded "
                  f"{r['rss_loaded_mb']:.0f} MB, peak {r['rss_peak_mb']:.0f} MB, budget {r['budget_mb']} MB",
                  flush=True)
        if args.rounds:
            out = subprocess.run([sys.executable, __file__, "--timing", "--folder", str(folder), "--rounds",
                                  str(args.rounds), "--samples", str(args.samples), "--budget", str(args.budget),
                                  "--widths", *map(str, args.widths)], check=True, stdout=subprocess.PIPE, text=True)
            timing = {int(d): t for d, t in json.loads(out.stdout.strip().splitlines()[-1]).items()}
            first = args.widths[0]
            print(f"interleaved, {args.rounds} rounds of 10 decisions: " + ", ".join(
                f"d = {d}: {t:.2f} s per decision ({t / timing[first]:.2f}x d = {first}, d {d / first:.0f}x)"
                for d, t in timing.items()))


if __name__ == "__main__":
    main()
