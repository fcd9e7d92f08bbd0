"""Kernel-matched LIME against lime's method, side by side in one process (issue 11's targets).

For each case (the demo; German credit with gradient-boosted trees and with an MLP; a synthetic consumer-loan
portfolio with gradient-boosted trees, built here) it explains the same decisions with
- `method = "lime"`, the plain lime-faithful engine (one stream of S, no stability), and
- `method = "kernel-matched"` with its defaults, under two seeds,
and prints, per method: held-out fidelity (share >= 0.5, median; lime's is its in-sample score, flagged),
median |local_pred - model_pred|, adverse letters whose principal reasons include a factor that lowered the
probability, the share of decisions whose principal-reason set is the same under both seeds, the share sent
to review at the default gates, samples per decision, and the time against the plain engine.

    .venv/bin/python bench/bench_matched.py --decisions 100            # every case, 100 decisions each
    .venv/bin/python bench/bench_matched.py --case loan --decisions 200
    .venv/bin/python bench/bench_matched.py --case demo --ceiling      # what the binary representation can hold
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_quality import (  # noqa: E402
    Case,
    SklearnModel,
    _auc,
    demo_case,
    german_gbm_case,
    german_mlp_case,
)
from truth import loan_data, loan_features  # noqa: E402

from tasks.engine import BatchedLime, Explanations, fit_reference  # noqa: E402
from tasks.engine.matched import KernelMatchedLime  # noqa: E402
from tasks.engine.perbin import PerBinLime  # noqa: E402
from tasks.explain.aggregate import factor_roles, review_reasons  # noqa: E402
from tasks.inputs.config import ReviewConfig  # noqa: E402


def loan_case(device: torch.device, seed: int = 0, rows: int = 6000) -> Case:
    """A synthetic consumer-loan portfolio with a realistic structure (9 numeric, 4 categorical fields; skewed
    incomes, integer counts with many zeros, ratios, interactions, a bad rate near 20%: ``truth.loan_data``, without
    gaps) and a gradient-boosted model, the usual kind of credit model."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    x, bad = loan_data(seed, rows, gaps=False)
    features = loan_features()
    train, test = np.arange(rows) < rows * 0.75, np.arange(rows) >= rows * 0.75
    estimator = HistGradientBoostingClassifier(max_iter=300, learning_rate=0.05, max_leaf_nodes=15,
                                               categorical_features=[9, 10, 11, 12], random_state=seed)
    estimator.fit(x[train], bad[train])
    auc = _auc(estimator.predict_proba(x[test])[:, 1], bad[test].astype(int))
    print(f"consumer loans (synthetic): gradient-boosted trees on {train.sum()} applications, bad rate "
          f"{bad.mean():.1%}, held-out AUC {auc:.3f}")
    return Case("consumer loans (synthetic), gradient-boosted trees", fit_reference(x[train], features),
                SklearnModel(estimator, device, "loan GBM"), 1, x[test], [f"L-{i:05d}" for i in range(test.sum())])


def _review_config(threshold: float):
    from types import SimpleNamespace

    return SimpleNamespace(review=ReviewConfig(), report=SimpleNamespace(decision_threshold=threshold))


def principal_sets(result: Explanations, threshold: float) -> list[frozenset[int]]:
    sets = []
    for b in range(len(result.ids)):
        roles = factor_roles(result.feature_index[b], result.weights[b], bool(result.model_pred[b] >= threshold))
        sets.append(frozenset(j for j, _, role in roles if role != "favourable"))
    return sets


def adverse_with_favourable_reason(result: Explanations, threshold: float, k: int) -> tuple[int, int]:
    """Adverse decisions whose first k factors by the engine's order (the letter's 'principal reasons' before
    roles) include one that lowered the probability; and the adverse count."""
    adverse = result.model_pred >= threshold
    first = [result.weights[b, :k][result.feature_index[b, :k] >= 0] for b in np.flatnonzero(adverse)]
    bad = sum(bool((weights < 0).any()) for weights in first)
    return int(bad), int(adverse.sum())


def report(name: str, results: list[Explanations], seconds: list[float], plain_seconds: float, threshold: float,
           k: int, held_out: bool) -> None:
    first = results[0]
    gap = np.abs(first.local_pred - first.model_pred)
    fid = first.fidelity
    bad, adverse = adverse_with_favourable_reason(first, threshold, k)
    sets = [principal_sets(r, threshold) for r in results]
    same = np.mean([a == b for a, b in zip(sets[0], sets[1], strict=True)]) if len(sets) > 1 else float("nan")
    gates = review_reasons(first, _review_config(threshold))
    review = np.mean([bool(r) for r in gates])
    by_reason = Counter(r for rs in gates for r in rs)
    kind = "held out" if held_out else "in-sample (lime's score)"
    print(f"  {name:16s} fidelity {kind}: >= 0.5 {np.mean(fid >= 0.5):6.1%}, median {np.median(fid):.3f} | "
          f"gap median {np.median(gap):.3f} | adverse letters with a favourable factor as reason {bad}/{adverse} | "
          f"same reasons under 2 seeds {same:6.1%} | review {review:6.1%} | samples "
          f"{np.mean(first.num_samples):,.0f} | time {np.mean(seconds):.1f} s = "
          f"{np.mean(seconds) / plain_seconds:.2f}x plain")
    print("  " + " " * 16 + " review by check: " + (", ".join(f"{k} {v}" for k, v in sorted(by_reason.items()))
                                                   or "none"))
    if first.kernel_width is not None:
        scale = np.round(first.kernel_width / math.sqrt(first.all_weights.shape[1]), 3)
        values, counts = np.unique(scale, return_counts=True)
        print("  " + " " * 16 + " widths chosen (x sqrt d): "
              + ", ".join(f"{v:g}: {c}" for v, c in zip(values[::-1], counts[::-1], strict=True))
              + f" | held-out fidelity at lime's width: median {np.median(first.fidelity_widest):.3f}, >= 0.5 "
              f"{np.mean(first.fidelity_widest >= 0.5):.1%} | same width under 2 seeds "
              f"{np.mean(results[0].kernel_width == results[-1].kernel_width):.1%}")
    if first.tied is not None:
        print("  " + " " * 16 + f" decisions naming k + 1 tied reasons: {int(first.tied.sum())}")


def representation_ceiling(case: Case, decisions: int = 20, samples: int = 5000) -> None:
    """In-sample R² of least squares on the same kernel-matched samples with lime's binary representation (one
    'same bin' indicator per feature) and with one indicator per bin drawn: how much of the model's local
    variance the representation itself can hold."""
    from tasks.engine.matched import kernel_tilt
    from tasks.engine.rng import decision_keys
    from tasks.engine.sampler import QuartileSampler

    stats, d = case.stats, case.stats.num_features
    sampler = QuartileSampler(stats, "cpu", design="sobol")
    x, ids = case.x[:decisions], case.ids[:decisions]
    own = torch.as_tensor(sampler.own_rows(stats.discretize(x)))
    keys = torch.as_tensor(decision_keys(1, ids))

    def r2(columns: np.ndarray, y: np.ndarray) -> float:
        design = np.column_stack([np.ones(len(y)), columns])
        beta, *_ = np.linalg.lstsq(design, y, rcond=None)
        return float(1 - (y - design @ beta).var() / y.var()) if y.var() > 0 else 1.0

    for scale in (0.35, 0.2, 0.12):
        tilt = torch.full((len(x),), kernel_tilt(scale * math.sqrt(d)), dtype=torch.float64)
        drawn = sampler.sample(torch.as_tensor(x, dtype=torch.float32), own, keys, samples, tilt=tilt)
        y = case.model(drawn.inputs.view(-1, d)).view(len(x), samples, -1)[..., case.explain_index]
        y = y.double().cpu().numpy()
        binary, per_bin = [], []
        for b in range(len(x)):
            z = drawn.same_bin[b].numpy().astype(float)
            bins = stats.discretize(drawn.inputs[b].double().numpy())
            onehot = np.column_stack([(bins[:, j] == v).astype(float) for j, f in enumerate(stats.features)
                                      for v in f.values])
            binary.append(r2(z, y[b]))
            per_bin.append(r2(onehot, y[b]))
        print(f"  width {scale} x sqrt d: median in-sample R2 with lime's same-bin indicators "
              f"{np.median(binary):.2f}, with one indicator per bin {np.median(per_bin):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", choices=["demo", "german-gbm", "german-mlp", "loan", "all"], default="all")
    parser.add_argument("--decisions", type=int, default=100)
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--method", action="append", help="only these methods (repeatable), e.g. 'per-bin log-odds'")
    parser.add_argument("--ceiling", action="store_true",
                        help="only the binary representation's ceiling on the chosen case(s) (20 decisions)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    builders = {"demo": (demo_case, 0.4), "german-gbm": (german_gbm_case, 0.5), "german-mlp": (german_mlp_case, 0.5),
                "loan": (loan_case, 0.3)}
    chosen = list(builders) if args.case == "all" else [args.case]
    k = 3
    for key in chosen:
        build, threshold = builders[key]
        case = build(device)
        if args.ceiling:
            print(f"{case.name}: the representation's ceiling")
            representation_ceiling(case)
            continue
        x, ids = case.x[: args.decisions], case.ids[: args.decisions]
        print(f"{case.name}: {len(ids)} decisions, S = {args.samples}, decision threshold {threshold}")
        common = dict(stats=case.stats, model=case.model, explain_index=case.explain_index, num_samples=args.samples,
                      top_k=k)
        start = time.perf_counter()
        plain = [BatchedLime(**common, seed=1, stability_runs=1, deletion_check=False).explain(x, ids)]
        plain_seconds = time.perf_counter() - start
        plain.append(BatchedLime(**common, seed=2, stability_runs=1, deletion_check=False).explain(x, ids))
        report("lime (plain)", plain, [plain_seconds], plain_seconds, threshold, k, held_out=False)
        for label, engine, extra in METHODS:
            if args.method and label not in args.method:
                continue
            results, seconds = [], []
            for seed in (1, 2):
                start = time.perf_counter()
                results.append(engine(**common, seed=seed, stability_runs=2, adaptive=True, adverse_threshold=threshold,
                                      deletion_check=False, **extra).explain(x, ids))
                seconds.append(time.perf_counter() - start)
            report(label, results, seconds, plain_seconds, threshold, k, held_out=True)
        print(f"  adverse decisions: {int((plain[0].model_pred >= threshold).sum())} of {len(x)}")


METHODS = (
    ("kernel-matched", KernelMatchedLime, {}),
    ("per-bin prob", PerBinLime, {"target": "probability"}),
    ("per-bin log-odds", PerBinLime, {"target": "log-odds"}),
)
"""The methods compared with lime's plain engine: the binary kernel-matched method (the default before per-bin) and
the per-bin method on each target."""


if __name__ == "__main__":
    main()
