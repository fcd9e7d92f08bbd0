"""Explanation-quality benchmark: stability across seeds, adaptive sample size, deletion check, review gate.

On the demo portfolio and model, and on the Statlog German credit data (bench/data) with two models trained
here (gradient-boosted trees, the usual kind of credit model, and a small torch MLP, a hard case for LIME), it
explains the same decisions with two independent seeds, side by side in one process:
- the plain engine as lime runs it: one stream of S independent samples (`design = "random"`);
- the plain engine on the Sobol design (`[explain] design` default);
- stability + adaptation ([explain] defaults: Sobol design, 2 streams of S/2, doubling up to 16 x S);
and prints:
- the share of decisions whose top-k SET is the same under both seeds, for each (and, after adaptation, among
  the decisions both runs call stable);
- the average samples spent per decision, and the throughput against the plain engine, with their ratio;
- the share of decisions whose deletion check holds, and how many the review gate sends to a human, by reason.

    .venv/bin/python bench/bench_quality.py                               # CPU, 200 decisions per case
    .venv/bin/python bench/bench_quality.py --device cuda --decisions 0   # every decision (400 and 1,000)
    .venv/bin/python bench/bench_quality.py --calibration   # is the selection test's standard error right?
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tasks.demo import FEATURES, build_demo, model_inputs  # noqa: E402
from tasks.engine import BatchedLime, Explanations, ReferenceStats, fit_reference  # noqa: E402
from tasks.engine.explainer import selection_method  # noqa: E402
from tasks.engine.stability import combine, flatten, jackknife_z, selection_margin  # noqa: E402
from tasks.engine.surrogate import select_features  # noqa: E402
from tasks.explain.aggregate import review_reasons  # noqa: E402
from tasks.inputs.config import ExplainConfig, FeatureConfig, ModelConfig, ReviewConfig, stream_samples  # noqa: E402
from tasks.inputs.model import load_model  # noqa: E402

GERMAN = Path(__file__).resolve().parent / "data" / "german_credit.csv.gz"


@dataclass
class Case:
    name: str
    stats: ReferenceStats
    model: object  # LoadedModel-like: .device, .description, __call__(float32 [n, d]) -> probabilities [n, C]
    explain_index: int
    x: np.ndarray
    ids: list[str]


class TorchModel:
    """A trained nn.Module behind the engine's model interface."""

    def __init__(self, module: nn.Module, device: torch.device, description: str) -> None:
        self.module, self.device, self.description = module.eval().to(device), device, description

    @torch.no_grad()
    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.module(rows.to(self.device)), dim=1)


class GermanMLP(nn.Module):
    """Numeric columns standardised, categorical codes one-hot, two hidden layers: good/bad credit risk."""

    def __init__(self, numeric: list[int], categorical: list[tuple[int, int]], mean, std) -> None:
        super().__init__()
        self.numeric, self.categorical = numeric, categorical
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
        width = len(numeric) + sum(levels for _, levels in categorical)
        self.net = nn.Sequential(nn.Linear(width, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 2))

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        parts = [(rows[:, self.numeric] - self.mean) / self.std]
        for column, levels in self.categorical:
            code = rows[:, column].round().long().clamp(0, levels - 1)
            parts.append(nn.functional.one_hot(code, levels).to(rows.dtype))
        return self.net(torch.cat(parts, dim=1))


@dataclass
class GermanData:
    x: np.ndarray  # float64 [1000, 20], categoricals as codes
    target: np.ndarray  # 1 = bad credit risk
    features: list[FeatureConfig]
    train: np.ndarray  # 800 applicants
    test: np.ndarray  # 200 held out


def german_data(seed: int = 0) -> GermanData:
    frame = pd.read_csv(GERMAN)
    target = (frame.pop("creditability") == "bad").to_numpy(dtype=np.int64)
    features, columns = [], []
    for name in frame.columns:
        if frame[name].dtype.kind in "iuf":
            features.append(FeatureConfig(name=name, label=name, kind="numeric", decimals=0))
            columns.append(frame[name].to_numpy(dtype=np.float64))
        else:
            levels = sorted(frame[name].astype(str).unique())
            features.append(FeatureConfig(name=name, label=name, kind="categorical", categories=levels))
            columns.append(frame[name].astype(str).map({v: i for i, v in enumerate(levels)}).to_numpy(np.float64))
    order = np.random.default_rng(seed).permutation(len(frame))
    return GermanData(np.column_stack(columns), target, features, order[:800], order[800:])


def german_mlp_case(device: torch.device, seed: int = 0) -> Case:
    """A small torch MLP: a hard case for LIME (its output has strong interactions off the data)."""
    g = german_data(seed)
    x, features = g.x, g.features
    numeric = [j for j, f in enumerate(features) if f.kind == "numeric"]
    categorical = [(j, len(f.categories or [])) for j, f in enumerate(features) if f.kind == "categorical"]
    torch.manual_seed(seed)
    module = GermanMLP(numeric, categorical, x[g.train][:, numeric].mean(0), x[g.train][:, numeric].std(0) + 1e-9)
    optimiser = torch.optim.Adam(module.parameters(), lr=3e-3, weight_decay=1e-3)
    inputs = torch.as_tensor(x[g.train], dtype=torch.float32)
    labels = torch.as_tensor(g.target[g.train])
    for _ in range(300):
        optimiser.zero_grad()
        loss = nn.functional.cross_entropy(module(inputs), labels)
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        scores = torch.softmax(module(torch.as_tensor(x[g.test], dtype=torch.float32)), 1)[:, 1].numpy()
    print(f"german credit: MLP trained on 800 applicants, held-out AUC {_auc(scores, g.target[g.test]):.3f}")
    return Case("german credit (UCI Statlog), MLP", fit_reference(x[g.train], features),
                TorchModel(module, device, "german MLP"), 1, x, german_ids(len(x)))


class SklearnModel:
    """A fitted scikit-learn classifier behind the engine's model interface (it runs on the CPU)."""

    def __init__(self, estimator, device: torch.device, description: str) -> None:
        self.estimator, self.device, self.description = estimator, device, description

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        probabilities = self.estimator.predict_proba(rows.cpu().numpy().astype(np.float64))
        return torch.as_tensor(probabilities, device=self.device)


def german_gbm_case(device: torch.device, seed: int = 0) -> Case:
    """Gradient-boosted trees (scikit-learn's HistGradientBoostingClassifier, native categoricals): the kind of
    model most credit scorecards are built with today."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    g = german_data(seed)
    categorical = [j for j, f in enumerate(g.features) if f.kind == "categorical"]
    estimator = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, max_depth=3,
                                               categorical_features=categorical, random_state=seed)
    estimator.fit(g.x[g.train], g.target[g.train])
    auc = _auc(estimator.predict_proba(g.x[g.test])[:, 1], g.target[g.test])
    print(f"german credit: gradient-boosted trees trained on 800 applicants, held-out AUC {auc:.3f}")
    return Case("german credit (UCI Statlog), gradient-boosted trees", fit_reference(g.x[g.train], g.features),
                SklearnModel(estimator, device, "german GBM"), 1, g.x, german_ids(len(g.x)))


def german_ids(count: int) -> list[str]:
    return [f"G-{i:04d}" for i in range(count)]


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    ranks = pd.Series(scores).rank().to_numpy()
    positives = labels == 1
    n_pos, n_neg = positives.sum(), (~positives).sum()
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def demo_case(device: torch.device) -> Case:
    artifacts = build_demo(Path(__file__).resolve().parent.parent / ".cache" / "demo")
    features = [FeatureConfig(**f) for f in FEATURES]
    reference = model_inputs(pd.read_parquet(artifacts.reference)).astype(np.float64)
    table = pd.read_parquet(artifacts.decisions)
    model = load_model(
        ModelConfig(path=artifacts.model, classes=["approved", "declined"], explain="declined"), len(features),
        device=str(device),
    )
    return Case("demo portfolio", fit_reference(reference, features), model, 1,
                model_inputs(table).astype(np.float64), table["customer_id"].astype(str).tolist())


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(case: Case, x: np.ndarray, ids: list[str], seed: int, quality: bool, args,
        design: str | None = None) -> tuple[Explanations, float]:
    defaults = ExplainConfig()
    engine = BatchedLime(
        stats=case.stats, model=case.model, explain_index=case.explain_index, num_samples=args.samples,
        top_k=args.top_k, seed=seed, memory_budget_mb=args.memory_mb, deletion_check=True,
        stability_runs=args.runs if quality else 1, adaptive=quality,
        max_samples_factor=args.factor, confidence=args.confidence or defaults.confidence,
        design=design or args.design,
    )
    synchronize(case.model.device)
    start = time.perf_counter()
    out = engine.explain(x, ids)
    synchronize(case.model.device)
    return out, time.perf_counter() - start


def agreement(a: Explanations, b: Explanations, mask: np.ndarray | None = None) -> float:
    same = np.array([set(p.tolist()) == set(q.tolist()) for p, q in zip(a.feature_index, b.feature_index,
                                                                           strict=True)])
    if mask is not None:
        same = same[mask]
    return float(same.mean()) if len(same) else float("nan")


def report(case: Case, args) -> None:
    x, ids = case.x, case.ids
    if args.decisions:
        x, ids = x[: args.decisions], ids[: args.decisions]
    n = len(ids)
    run(case, x[:8], ids[:8], 1, True, args)  # warm-up (allocations, kernels)
    plain_a, t_plain_a = run(case, x, ids, args.seed, False, args, "random")
    design_a, t_design_a = run(case, x, ids, args.seed, False, args)
    stable_a, t_stable_a = run(case, x, ids, args.seed, True, args)
    plain_b, t_plain_b = run(case, x, ids, args.seed + 1, False, args, "random")
    design_b, t_design_b = run(case, x, ids, args.seed + 1, False, args)
    stable_b, t_stable_b = run(case, x, ids, args.seed + 1, True, args)
    t_plain, t_stable = (t_plain_a + t_plain_b) / 2, (t_stable_a + t_stable_b) / 2
    t_design = (t_design_a + t_design_b) / 2
    first_round = stream_samples(args.samples, args.runs) * args.runs
    both = stable_a.stable & stable_b.stable
    k = args.top_k
    print(f"\n== {case.name}: {n} decisions, S = {args.samples}, top-{k}, {args.runs} streams of S/{args.runs}, "
          f"cap {args.factor} x S, {args.design} design, device {case.model.device}")
    print(f"same top-{k} set across two seeds: plain engine as lime (random design) {agreement(plain_a, plain_b):.1%}"
          f"; plain engine, {args.design} design {agreement(design_a, design_b):.1%}; stability+adaptive "
          f"{agreement(stable_a, stable_b):.1%} (among the {both.mean():.1%} stable in both runs: "
          f"{agreement(stable_a, stable_b, both):.1%})")
    samples = np.concatenate([stable_a.num_samples, stable_b.num_samples])
    values, counts = np.unique(samples, return_counts=True)
    spread = ", ".join(f"{v:,}: {c / len(samples):.1%}" for v, c in zip(values, counts, strict=True))
    print(f"samples per decision: plain {args.samples:,}; stability+adaptive mean {samples.mean():,.0f} "
          f"({samples.mean() / args.samples:.2f} x; {spread})")
    print(f"stable at S (before adaptation): {(stable_a.num_samples == first_round).mean():.1%} of "
          f"decisions needed no extra samples; stable after adaptation: {stable_a.stable.mean():.1%}")
    print(f"throughput: plain {n / t_plain:,.1f} decisions/s (random design), {n / t_design:,.1f} ({args.design}); "
          f"stability+adaptive {n / t_stable:,.1f} decisions/s: cost {t_stable / t_design:.2f} x the plain engine "
          f"({t_stable / t_plain:.2f} x the random design; same process, interleaved)")
    print(f"deletion check holds: plain {plain_a.deletion_holds.mean():.1%}, stability+adaptive "
          f"{stable_a.deletion_holds.mean():.1%}")
    config = SimpleNamespace(review=ReviewConfig())
    for label, out in (("plain", plain_a), ("stability+adaptive", stable_a)):
        reasons = review_reasons(out, config)  # type: ignore[arg-type]
        gated = sum(1 for r in reasons if r)
        by_reason = {name: sum(1 for r in reasons if name in r) for name in
                     ("low-fidelity", "prediction-gap", "unstable", "deletion-fails")}
        print(f"review gate ({label}, [review] defaults): {gated} of {n} ({gated / n:.1%}) {by_reason}")


def calibration(case: Case, args, decisions: int = 60, seeds: int = 8) -> None:
    """Is the selection test's standard error right? For each design, the first round's selection margin M of
    a fixed top-k set (seed 0's) under ``seeds`` seeds: the jackknife's standard error of M against the spread
    of M across the seeds (the real one). A ratio above 1 makes the test stricter than its stated confidence."""
    x, ids = case.x[:decisions], case.ids[:decisions]
    method = selection_method("auto", args.top_k)
    print(f"\n== {case.name}: jackknife standard error of the selection margin against its spread across "
          f"{seeds} seeds ({decisions} decisions, S = {args.samples}, {args.runs} streams, first round only)")
    for design in ("sobol", "random"):
        margins, errors, chosen = [], [], None
        for seed in range(seeds):
            engine = BatchedLime(stats=case.stats, model=case.model, explain_index=case.explain_index,
                                 num_samples=args.samples, top_k=args.top_k, seed=seed, stability_runs=args.runs,
                                 design=design, deletion_check=False)
            groups, _ = engine.first_round_groups(x, ids)
            count = groups.total_weight.shape[1]
            pooled = flatten(combine(groups, torch.ones(1, count, dtype=torch.float64)))
            if chosen is None:
                chosen = select_features(pooled, args.top_k, method)
            margin = selection_margin(pooled, chosen, method)
            margins.append(margin.numpy())
            errors.append((margin / jackknife_z(groups, chosen, margin, method)).numpy())
        spread = np.std(margins, axis=0, ddof=1)
        error = np.mean(errors, axis=0)
        usable = np.isfinite(error) & (spread > 0)
        ratio = np.median(error[usable] / spread[usable])
        print(f"{design} design: median (jackknife standard error / spread across seeds) = {ratio:.2f} "
              f"over {int(usable.sum())} decisions")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=["demo", "german-gbm", "german-mlp", "all"], default="all")
    parser.add_argument("--decisions", type=int, default=200, help="decisions per dataset (0: all)")
    parser.add_argument("--samples", type=int, default=ExplainConfig().num_samples)
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--runs", type=int, default=ExplainConfig().stability_runs)
    parser.add_argument("--factor", type=int, default=ExplainConfig().max_samples_factor)
    parser.add_argument("--confidence", type=float, default=None)
    parser.add_argument("--design", choices=["sobol", "random"], default=ExplainConfig().design,
                        help="sampling design of the stability+adaptive engine")
    parser.add_argument("--seed", type=int, default=20261122)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (CPU)")
    parser.add_argument("--memory-mb", type=int, default=None, help="engine memory budget per chunk")
    parser.add_argument("--calibration", action="store_true",
                        help="only check the selection test's standard error against the spread across seeds")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.calibration:
        calibration(demo_case(device), args)
        calibration(german_gbm_case(device), args)
        return
    if args.dataset in ("demo", "all"):
        report(demo_case(device), args)
    if args.dataset in ("german-gbm", "all"):
        report(german_gbm_case(device), args)
    if args.dataset in ("german-mlp", "all"):
        report(german_mlp_case(device), args)


if __name__ == "__main__":
    main()
