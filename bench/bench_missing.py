"""Missing values: do decisions with gaps fail, and what do gaps cost the engine? (docs/method.md, "Missing values")

For each data set, the same model and engine settings on the complete data and on the data with gaps, side by
side in one run (interleaved repetitions; the engine's CPU time, the least of the repetitions, so that other
processes on a shared machine do not count; wall time beside it):

- demo portfolio: the demo's TorchScript model (it imputes inside); complete = ``build_demo(gaps=False)``'s files,
  gaps = the demo's own realistic gaps, and the complete data with 10% of all feature values blanked at random;
- German credit (UCI Statlog, bench/data): gradient-boosted trees (scikit-learn's HistGradientBoostingClassifier,
  which takes NaN natively), complete vs. 10% of all feature values blanked at random (reference and decisions).

Printed per case: decisions failing for a missing value (the run's own row checks, ``tasks.inputs.checks.row_problems``,
plus any decision the engine could not explain), decisions with a gap, and the engine's seconds per decision,
plain (lime's method, ``stability_runs = 1``: a fixed S per decision, so the ratio is the per-sample cost) and as
configured by default (the kernel-matched method: widths tried, two streams, adaptive; the ratio also includes any
change in the samples the width search and adaptation spend); and the same
ratio without the CPU time spent inside the model (the engine's own cost: sampling, kernel, surrogate, checks).

    .venv/bin/python bench/bench_missing.py                      # CPU, 1 torch thread (as a worker)
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_quality import SklearnModel, german_data  # noqa: E402

from tasks.demo import FEATURES, build_demo, model_inputs  # noqa: E402
from tasks.engine import BatchedLime, ReferenceStats, fit_reference  # noqa: E402
from tasks.engine.matched import KernelMatchedLime  # noqa: E402
from tasks.inputs.checks import row_problems  # noqa: E402
from tasks.inputs.config import ExplainConfig, FeatureConfig, ModelConfig  # noqa: E402
from tasks.inputs.model import check_missing_contract, load_model  # noqa: E402

CACHE = Path(__file__).resolve().parent.parent / ".cache"


class TimedModel:
    """The model, counting the CPU seconds spent in it: the engine's own cost is the rest."""

    def __init__(self, model) -> None:
        self.model, self.seconds = model, 0.0

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        started = time.process_time()
        try:
            return self.model(rows)
        finally:
            self.seconds += time.process_time() - started


@dataclass
class Variant:
    name: str
    stats: ReferenceStats
    x: np.ndarray  # decisions, float64, NaN where missing


def blank(x: np.ndarray, share: float, seed: int) -> np.ndarray:
    """``x`` with ``share`` of all its values set to NaN, uniformly at random."""
    out = x.copy()
    out[np.random.default_rng(seed).random(out.shape) < share] = np.nan
    return out


def as_table(x: np.ndarray, features: list[FeatureConfig]) -> pa.Table:
    """Decisions as the Parquet input holds them: numbers, category texts, nulls for gaps."""
    columns = {}
    for j, feature in enumerate(features):
        if feature.kind == "categorical":
            columns[feature.name] = pa.array([None if np.isnan(v) else feature.categories[int(v)] for v in x[:, j]],
                                             pa.string())
        else:
            columns[feature.name] = pa.array(x[:, j], pa.float64(), from_pandas=True)
    return pa.table(columns)


def engine(stats: ReferenceStats, model, args, plain: bool) -> BatchedLime:
    """The plain engine (lime's method, one stream of S), or the default one: the kernel-matched method with
    every [explain] default."""
    defaults = ExplainConfig()
    if plain:
        return BatchedLime(stats=stats, model=model, explain_index=1, num_samples=args.samples, stability_runs=1,
                           adaptive=False, design=defaults.design, seed=defaults.seed)
    return KernelMatchedLime(stats=stats, model=model, explain_index=1, num_samples=args.samples,
                             stability_runs=defaults.stability_runs, adaptive=defaults.adaptive,
                             max_samples_factor=defaults.max_samples_factor, design=defaults.design,
                             seed=defaults.seed, width_grid=defaults.width_grid,
                             target_fidelity=defaults.target_fidelity,
                             min_effective_share=defaults.min_effective_share, min_contrasts=defaults.min_contrasts)


def measure(title: str, model, features: list[FeatureConfig], variants: list[Variant], args) -> None:
    print(f"\n{title}  ({len(variants[0].x)} decisions, S = {args.samples}, {torch.get_num_threads()} torch thread)")
    for variant in variants:
        check_missing_contract(model, *variant.stats.missing_probe())  # as a worker does on load
    ids = [f"D-{i:05d}" for i in range(len(variants[0].x))]
    for plain in (True, False):
        times: dict[str, list[float]] = {v.name: [] for v in variants}  # CPU seconds of this process
        walls: dict[str, list[float]] = {v.name: [] for v in variants}
        own: dict[str, list[float]] = {v.name: [] for v in variants}  # ... less those spent in the model
        results = {}
        for _ in range(args.repeats if plain else args.default_repeats):
            for variant in variants:  # interleaved: a busy machine slows all variants alike
                timed = TimedModel(model)
                lime = engine(variant.stats, timed, args, plain)
                cpu, wall = time.process_time(), time.perf_counter()
                results[variant.name] = lime.explain(variant.x, ids)
                times[variant.name].append(time.process_time() - cpu)
                walls[variant.name].append(time.perf_counter() - wall)
                own[variant.name].append(times[variant.name][-1] - timed.seconds)
        base, base_own = min(times[variants[0].name]), min(own[variants[0].name])
        label = "plain (R = 1)" if plain else "default (kernel-matched)"
        for variant in variants:
            out = results[variant.name]
            seconds = min(times[variant.name])
            unexplained = int((~np.isfinite(out.fidelity) | ~np.isfinite(out.weights).all(1)).sum())
            row_failures = len(row_problems(as_table(variant.x, features), features))
            gaps = int(np.isnan(variant.x).any(1).sum())
            print(f"  {label:26s} {variant.name:40s} decisions with a gap {gaps:4d}  failed for a missing value "
                  f"{row_failures + unexplained:2d}  CPU {seconds / len(ids) * 1e3:7.2f} ms/decision  "
                  f"x{seconds / base:5.3f} vs complete  (wall {min(walls[variant.name]) / len(ids) * 1e3:7.2f} ms)  "
                  f"engine without the model x{min(own[variant.name]) / base_own:5.3f}  "
                  f"samples/decision {np.mean(out.num_samples):6.0f}  CPU per 1,000 samples "
                  f"x{seconds / np.sum(out.num_samples) / (base / np.sum(results[variants[0].name].num_samples)):5.3f}")


def demo_case(args) -> None:
    features = [FeatureConfig(**f) for f in FEATURES]
    gappy = build_demo(CACHE / "demo")  # the demo's files, with its gaps, and its model
    complete = build_demo(CACHE / "demo-complete", gaps=False)
    model = load_model(ModelConfig(path=gappy.model, classes=["approved", "declined"], explain="declined"),
                       len(features))

    def read(path: Path) -> np.ndarray:
        return model_inputs(pd.read_parquet(path)).astype(np.float64)

    reference, decisions = read(complete.reference), read(complete.decisions)[: args.decisions]
    variants = [
        Variant("complete", fit_reference(reference, features), decisions),
        Variant("demo gaps (income, utilisation, housing)", fit_reference(read(gappy.reference), features),
                read(gappy.decisions)[: args.decisions]),
        Variant("10% blanked at random", fit_reference(blank(reference, 0.1, 1), features),
                blank(decisions, 0.1, 2)),
    ]
    measure("demo portfolio, TorchScript MLP imputing inside", model, features, variants, args)


def german_case(args) -> None:
    from sklearn.ensemble import HistGradientBoostingClassifier

    g = german_data(0)
    categorical = [j for j, f in enumerate(g.features) if f.kind == "categorical"]
    estimator = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, max_depth=3,
                                               categorical_features=categorical, random_state=0)
    estimator.fit(blank(g.x[g.train], 0.1, 3), g.target[g.train])  # trained with gaps, as a bank's model would be
    model = SklearnModel(estimator, torch.device("cpu"), "german GBM")
    reference = g.x[g.train]
    decisions = np.concatenate([g.x[g.test]] * -(-args.decisions // len(g.test)))[: args.decisions]
    variants = [
        Variant("complete", fit_reference(reference, g.features), decisions),
        Variant("10% blanked at random", fit_reference(blank(reference, 0.1, 4), g.features),
                blank(decisions, 0.1, 5)),
    ]
    measure("German credit, gradient-boosted trees (NaN native)", model, g.features, variants, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=200)
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repetitions of the plain engine")
    parser.add_argument("--default-repeats", type=int, default=2, help="... of the default (adaptive) engine")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from threadpoolctl import threadpool_limits

    threadpool_limits(args.threads)  # scikit-learn's OpenMP too: one thread, as a worker runs it
    demo_case(args)
    german_case(args)


if __name__ == "__main__":
    main()
