"""A known-truth case: a credit model that is exactly additive in log-odds, with its exact per-feature truth.

- :func:`loan_data`: the synthetic consumer-loan portfolio of ``bench/bench_matched.py``'s ``loan_case`` (the same
  draws: 9 numeric and 4 categorical fields, a bad rate near 20%), optionally with gaps (an undeclared income,
  no utilisation), so the missing slot is covered too.
- :func:`train_additive`: an Explainable Boosting Machine (``interpret-core``, main effects only, ``interactions=0``)
  trained on it and exported to plain per-feature look-up tables (:class:`AdditiveModel`): cut points and a score
  per bin (numeric), a score per category (categorical), a score for a missing value. The model is
  ``f(x) = sigmoid(b + sum_j g_j(x_j))``: learned, realistic shape functions, exactly additive in log-odds. The
  export is checked against the EBM's own ``decision_function`` when it is built.
- :func:`additive_case`: the above as a ``bench_quality.Case`` (reference statistics from ``fit_reference`` on the
  training rows, the held-out rows as decisions).
- :func:`true_contrasts`: the truth for feature j of decision x, in probability,

      truth_j(x) = f(x) - mean over reference rows r with bin_j(r) != bin_j(x) of f(x with x_j := r_j),

  the bins being ``stats.discretize``'s (quartile bin, category, missing slot): what feature j's own value does
  to the decision compared with where lime's representation moves it, everything else kept. It is model-agnostic
  (one model call per feature per chunk); on an additive model it is exact and needs no sampling.
- :func:`truth_metrics`: how the engine's listed reasons of the declined decisions compare with the truth.

Bench scripts put ``bench/`` on ``sys.path`` and import it as ``truth`` (``bench/bench_truth.py``); the test
``tests/engine/test_truth.py`` does the same.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_quality import Case, _auc  # noqa: E402

from tasks.engine import ReferenceStats, fit_reference  # noqa: E402
from tasks.inputs.config import FeatureConfig  # noqa: E402

NUMERIC = ["income", "age", "years_in_job", "debt_to_income", "utilisation", "delinquencies", "inquiries",
           "loan_amount", "open_accounts"]
CATEGORICAL = {"home": ["own", "mortgage", "rent"], "purpose": ["debt", "car", "home", "other"],
               "employment": ["salaried", "self_employed", "unemployed"], "adverse_records": ["no", "yes"]}
GAPS = {"income": 0.05, "utilisation": 0.07}
"""With ``gaps=True``: the share of applications missing each field, blanked at random after the outcome is
drawn (an undeclared income, no revolving credit to measure utilisation on)."""


def loan_features() -> list[FeatureConfig]:
    return [FeatureConfig(name=n, label=n.replace("_", " "), kind="numeric") for n in NUMERIC] + [
        FeatureConfig(name=n, label=n.replace("_", " "), kind="categorical", categories=levels)
        for n, levels in CATEGORICAL.items()
    ]


def loan_data(seed: int = 0, rows: int = 6000, gaps: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(x float64 [rows, 13], bad bool [rows])``: ``loan_case``'s portfolio (bench/bench_matched.py), the same
    draws for the same seed and rows; with ``gaps`` some incomes and utilisations are then blanked (NaN) at the
    rates of :data:`GAPS`, from a separate stream, so the applications and outcomes are unchanged."""
    rng = np.random.default_rng(seed)
    income = np.exp(rng.normal(10.4, 0.5, rows))
    age = rng.integers(19, 75, rows).astype(float)
    years_job = np.minimum(rng.exponential(5, rows), age - 18)
    dti = np.clip(rng.beta(2, 5, rows) * 0.9, 0, 0.9)
    utilisation = np.clip(rng.beta(1.5, 3, rows), 0, 1)
    delinquencies = rng.poisson(0.35, rows).astype(float)
    inquiries = rng.poisson(1.2, rows).astype(float)
    amount = np.round(np.exp(rng.normal(8.8, 0.7, rows)), -2)
    accounts = rng.poisson(4, rows).astype(float) + 1
    home = rng.choice(3, rows, p=[0.35, 0.4, 0.25])  # own, mortgage, rent
    purpose = rng.choice(4, rows, p=[0.4, 0.2, 0.25, 0.15])  # debt, car, home, other
    employment = rng.choice(3, rows, p=[0.7, 0.2, 0.1])  # salaried, self-employed, unemployed
    adverse_records = rng.choice(2, rows, p=[0.9, 0.1])  # no, yes
    score = (-3.6 + 3.0 * dti + 1.6 * utilisation ** 2 + 0.7 * delinquencies + 0.15 * inquiries
             - 0.6 * (np.log(income) - 10.4) + 0.4 * np.log(amount / income * 10 + 1) - 0.03 * years_job
             + 0.5 * (home == 2) + 0.9 * (employment == 2) + 1.1 * adverse_records
             + 0.8 * (delinquencies > 0) * (utilisation > 0.7) - 0.01 * (age - 40))
    bad = rng.random(rows) < 1 / (1 + np.exp(-score))
    x = np.column_stack([income, age, years_job, dti, utilisation, delinquencies, inquiries, amount, accounts,
                         home, purpose, employment, adverse_records]).astype(np.float64)
    if gaps:
        blank = np.random.default_rng([seed, 1])
        for name, share in GAPS.items():
            x[blank.random(rows) < share, NUMERIC.index(name)] = np.nan
    return x, bad


@dataclass(frozen=True)
class Shape:
    """One feature's shape function g_j as a look-up table, as the EBM holds it: ``scores[0]`` for a missing
    value, ``scores[1 : len(cuts) + 2]`` for the bins of a numeric feature (bin ``searchsorted(cuts, v, 'right')``,
    the EBM's rule: a value equal to a cut point belongs to the bin above it), ``scores[index[code]]`` for a
    category, and ``scores[-1]`` for a category the EBM never saw."""

    name: str
    kind: str  # "numeric" or "categorical"
    cuts: np.ndarray  # float64, ascending (numeric only)
    scores: np.ndarray  # float64 log-odds contributions
    index: dict[int, int]  # categorical: code -> position in scores

    def __call__(self, values: np.ndarray) -> np.ndarray:
        """g_j(values), float64, in numpy (the reference implementation of :class:`AdditiveModel`'s torch one)."""
        values = np.asarray(values, dtype=np.float64)
        missing = np.isnan(values)
        if self.kind == "numeric":
            slot = np.searchsorted(self.cuts, np.where(missing, 0.0, values), side="right") + 1
        else:
            slot = np.array([self.index.get(int(v), len(self.scores) - 1) if not m else 0
                             for v, m in zip(values, missing, strict=True)], dtype=np.int64)
        return self.scores[np.where(missing, 0, slot)]


class AdditiveModel:
    """``f(x) = sigmoid(intercept + sum_j g_j(x_j))`` behind the engine's model interface (``bench_quality``'s
    ``SklearnModel``/``TorchModel``): float32 rows [n, d] (categoricals as codes, NaN = missing) -> probabilities
    float64 [n, 2], class 1 = bad (declined). Evaluated with torch look-ups on the model's device."""

    def __init__(self, intercept: float, shapes: list[Shape], device: torch.device, description: str) -> None:
        self.intercept, self.shapes, self.device, self.description = float(intercept), shapes, device, description
        self._cuts, self._scores, self._codes = [], [], []
        for shape in shapes:
            self._scores.append(torch.as_tensor(shape.scores, dtype=torch.float64, device=device))
            if shape.kind == "numeric":
                self._cuts.append(torch.as_tensor(shape.cuts, dtype=torch.float64, device=device))
                self._codes.append(None)
            else:
                table = np.full(max(shape.index, default=0) + 1, len(shape.scores) - 1, dtype=np.int64)
                for code, position in shape.index.items():
                    table[code] = position
                self._cuts.append(None)
                self._codes.append(torch.as_tensor(table, device=device))

    def contributions(self, rows: torch.Tensor) -> torch.Tensor:
        """g_j(x_j) for every row and feature, float64 [n, d]."""
        rows = rows.to(self.device, torch.float64)
        out = torch.empty(rows.shape, dtype=torch.float64, device=self.device)
        for j, (cuts, scores, codes) in enumerate(zip(self._cuts, self._scores, self._codes, strict=True)):
            column = rows[:, j]
            missing = torch.isnan(column)
            present = torch.where(missing, torch.zeros_like(column), column)
            if cuts is not None:
                slot = torch.searchsorted(cuts, present, right=True) + 1
            else:
                code = present.round().long()
                known = (code >= 0) & (code < len(codes))
                slot = torch.where(known, codes[code.clamp(0, len(codes) - 1)], len(scores) - 1)
            out[:, j] = scores[torch.where(missing, torch.zeros_like(slot), slot)]
        return out

    def logits(self, rows: torch.Tensor) -> torch.Tensor:
        return self.intercept + self.contributions(rows).sum(dim=1)

    @torch.no_grad()
    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(self.logits(rows))
        return torch.stack([1 - p, p], dim=1)


def train_additive(x: np.ndarray, bad: np.ndarray, features: list[FeatureConfig], device: torch.device,
                   seed: int = 0, outer_bags: int = 8, max_bins: int = 256) -> AdditiveModel:
    """An EBM with main effects only (``interactions=0``; one thread, seeded, so deterministic), exported to
    look-up tables and checked against the EBM's own log-odds on the training rows and on every cut point."""
    from interpret.glassbox import ExplainableBoostingClassifier

    kinds = ["continuous" if f.kind == "numeric" else "nominal" for f in features]
    ebm = ExplainableBoostingClassifier(feature_names=[f.name for f in features], feature_types=kinds,
                                        interactions=0, outer_bags=outer_bags, max_bins=max_bins, n_jobs=1,
                                        random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Missing values detected")
        ebm.fit(x, bad.astype(int))
    assert all(len(term) == 1 for term in ebm.term_features_), "main effects only"
    shapes = []
    for j, feature in enumerate(features):
        term = ebm.term_features_.index((j,))
        scores = np.asarray(ebm.term_scores_[term], dtype=np.float64)
        bins = ebm.bins_[j][0]
        if feature.kind == "numeric":
            shapes.append(Shape(feature.name, "numeric", np.asarray(bins, dtype=np.float64), scores, {}))
        else:
            index = {int(float(label)): int(position) for label, position in bins.items()}
            shapes.append(Shape(feature.name, "categorical", np.zeros(0), scores, index))
    model = AdditiveModel(float(ebm.intercept_[0]), shapes, device, f"EBM, main effects only ({outer_bags} bags)")
    _check_export(ebm, model, x)
    return model


def _check_export(ebm, model: AdditiveModel, x: np.ndarray) -> None:
    """The exported tables give the EBM's own log-odds: on the rows, on every cut point (and just below it), on
    missing values and on every category."""
    probe = [x]
    for j, shape in enumerate(model.shapes):
        values = (np.concatenate([shape.cuts, np.nextafter(shape.cuts, -np.inf), [np.nan]]) if shape.kind == "numeric"
                  else np.array([*shape.index, np.nan]))
        rows = np.repeat(x[:1], len(values), axis=0)
        rows[:, j] = values
        probe.append(rows)
    rows = np.concatenate(probe)
    ours = model.logits(torch.as_tensor(rows)).cpu().numpy()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Missing values detected")
        theirs = ebm.decision_function(rows)
    error = float(np.max(np.abs(ours - theirs)))
    if error > 1e-9:
        raise AssertionError(f"the exported EBM differs from the EBM by {error:.3g} in log-odds")


def additive_case(device: torch.device, seed: int = 0, rows: int = 6000, gaps: bool = True, outer_bags: int = 8,
                  reference_rows: int | None = None) -> Case:
    """The known-truth case: ``loan_data`` (75% train / 25% test, as ``loan_case``), an EBM with main effects only
    trained on the training rows and exported (:class:`AdditiveModel`), reference statistics from the training
    rows (the first ``reference_rows`` of them, when given), the test rows as decisions. ``case.stats.data`` holds
    the reference (``fit_reference`` keeps it), for :func:`true_contrasts`."""
    x, bad = loan_data(seed, rows, gaps)
    features = loan_features()
    train, test = np.arange(rows) < rows * 0.75, np.arange(rows) >= rows * 0.75
    model = train_additive(x[train], bad[train], features, device, seed, outer_bags)
    auc = _auc(model(torch.as_tensor(x[test], dtype=torch.float32))[:, 1].cpu().numpy(), bad[test].astype(int))
    reference = x[train][:reference_rows]
    print(f"consumer loans (synthetic{', with gaps' if gaps else ''}): EBM with main effects only, exactly additive "
          f"in log-odds, on {train.sum()} applications, bad rate {bad.mean():.1%}, held-out AUC {auc:.3f}; "
          f"reference {len(reference)} rows")
    return Case("consumer loans (synthetic), additive EBM", fit_reference(reference, features), model, 1, x[test],
                [f"A-{i:05d}" for i in range(test.sum())])


def true_contrasts(model_fn, stats: ReferenceStats, x: np.ndarray, reference: np.ndarray, explain_index: int = 1,
                   chunk_rows: int = 1 << 18, scale: str = "probability") -> np.ndarray:
    """The truth, float64 [B, d], in probability of class ``explain_index``:

        truth[b, j] = f(x_b) - mean over reference rows r with bin_j(r) != bin_j(x_b) of f(x_b with x_bj := r_j)

    bins being ``stats.discretize``'s (quartile bin, category, missing slot). 0 where x_b's bin holds the whole
    reference for j. ``model_fn`` has the engine's model interface (float32 torch rows [n, d] -> [n, C]). The
    reference's distinct values of feature j are evaluated once each and weighted by their counts: one model call
    per feature per chunk of decisions.

    ``scale = "log-odds"`` takes f as the log-odds log(p / (1 - p)) instead; on an additive model that is exactly
    g_j(x_j) - mean g_j(r_j) over the other bins' rows, whatever the other features. The two truths rank features
    alike except where a feature's other bins spread widely (the mean of probabilities is not the probability of
    the mean log-odds): ``bench_truth.py`` counts how often their top-k sets differ."""
    if scale not in ("probability", "log-odds"):
        raise ValueError(f"scale must be 'probability' or 'log-odds', got {scale!r}")
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    reference = np.asarray(reference, dtype=np.float64)
    n, d = x.shape

    def f(rows: np.ndarray) -> np.ndarray:
        out = model_fn(torch.as_tensor(rows, dtype=torch.float32))
        p = np.asarray(out[:, explain_index].detach().cpu().numpy(), dtype=np.float64)
        return p if scale == "probability" else np.log(p) - np.log1p(-p)

    own = f(x)
    x_bins, ref_bins = stats.discretize(x), stats.discretize(reference)
    truth = np.zeros((n, d))
    for j in range(d):
        column = reference[:, j]
        gaps = np.isnan(column)
        values, counts = np.unique(column[~gaps], return_counts=True)
        if gaps.any():
            values, counts = np.append(values, np.nan), np.append(counts, gaps.sum())
        value_bins = stats.discretize(np.tile(values[:, None], (1, d)))[:, j]
        assert np.array_equal(np.sort(np.repeat(value_bins, counts)), np.sort(ref_bins[:, j]))
        step = max(1, chunk_rows // len(values))
        for a in range(0, n, step):
            b = min(n, a + step)
            rows = np.repeat(x[a:b], len(values), axis=0)
            rows[:, j] = np.tile(values, b - a)
            moved = f(rows).reshape(b - a, len(values))
            weight = counts[None, :] * (value_bins[None, :] != x_bins[a:b, j, None])
            total = weight.sum(axis=1)
            mean = np.divide((weight * moved).sum(axis=1), total, out=np.zeros(b - a), where=total > 0)
            truth[a:b, j] = np.where(total > 0, own[a:b] - mean, 0.0)
    return truth


NEAR_TIE = 0.05
"""Default relative tolerance of a near-tie: two features whose truths differ by less than 5% of the larger
(positive) one are tied; see :func:`truth_metrics`."""


def listed_reasons(feature_index: np.ndarray, weights: np.ndarray, k: int) -> list[list[int]]:
    """Per decision, the principal reasons an adverse letter lists: the shown factors with weight > 0, in the
    engine's order (``tasks.explain.aggregate.factor_roles``), at most k."""
    return [[int(j) for j, w in zip(row_f, row_w, strict=True) if j >= 0 and w > 0][:k]
            for row_f, row_w in zip(feature_index, weights, strict=True)]


def truth_metrics(feature_index: np.ndarray, weights: np.ndarray, model_pred: np.ndarray, truth: np.ndarray,
                  threshold: float, k: int, near_tie: float = NEAR_TIE) -> dict:
    """The engine's listed reasons against the truth, over the declined decisions (``model_pred >= threshold``).

    ``feature_index``/``weights`` are the engine's shown factors ([B, m], -1 = empty); the listed reasons are those
    with weight > 0, in order (:func:`listed_reasons`). ``truth`` is :func:`true_contrasts`'s [B, d]. With
    ``t_(1) >= t_(2) >= ...`` a decision's sorted truths, the true top-k set T is the features among the k largest
    whose truth is > 0 (fewer than k when fewer raise the decline).

    Near-ties, stated: features whose truths differ by less than ``tol = near_tie * t_(k)`` are tied. A decision is
    a **near-tie** when ``0 < t_(k)`` and ``t_(k) - t_(k+1) < tol``: which of the tied features completes the set is
    then a coin toss. Its listed set L is counted as **tie-tolerant correct** when it has |T| members and none of
    the features left out beats a listed one by ``tol`` or more (``min_L t >= max_not-L t - tol``): L equals T up to
    swapping near-tied features. For a decision that is no near-tie this is exactly L == T. The first reason
    likewise, with ``tol_1 = near_tie * t_(1)``.

    Returns a dict of counts and shares:
    - ``declined``: the decisions scored; ``no_reason``: those with no listed reason;
    - ``all_raise`` (a): share whose every listed reason has truth > 0 (vacuously true with no reason);
      ``false_reasons``: listed reasons with truth <= 0, in all;
    - ``first`` (b): share whose first listed reason is the true first (argmax of truth), strictly;
      ``first_tolerant``: the same, a near-tied first place counted as correct;
    - ``set_exact`` (c): share whose listed set equals T, strictly, over all declined decisions;
      ``set_tolerant``: near-ties counted as correct when L is T up to swapping the tied features;
      ``near_ties``: how many declined decisions are near-ties; ``set_excluding_ties``: share of L == T among the
      others (the figure the test asserts), over ``declined - near_ties`` decisions;
    - ``short`` (d): listed sets of fewer than k where the truth has k positive.
    """
    declined = np.flatnonzero(np.asarray(model_pred) >= threshold)
    listed = listed_reasons(np.asarray(feature_index)[declined], np.asarray(weights)[declined], k)
    all_raise, first, first_tol, exact, tolerant, ties, exact_untied, short, false, empty = ([] for _ in range(10))
    for b, reasons in zip(declined, listed, strict=True):
        t = truth[b]
        order = np.argsort(-t, kind="stable")
        top = set(int(j) for j in order[:k] if t[j] > 0)
        kth = t[order[k - 1]] if k <= len(t) else -np.inf
        after = t[order[k]] if k < len(t) else -np.inf
        tie = bool(kth > 0 and kth - after < near_tie * kth)
        chosen = set(reasons)
        empty.append(not reasons)
        false.append(sum(t[j] <= 0 for j in reasons))
        all_raise.append(all(t[j] > 0 for j in reasons))
        first.append(bool(reasons) and reasons[0] == int(order[0]) and t[order[0]] > 0)
        first_tol.append(bool(reasons) and t[order[0]] > 0 and t[reasons[0]] > t[order[0]] * (1 - near_tie))
        exact.append(chosen == top)
        outside = [t[j] for j in range(len(t)) if j not in chosen]
        best_out = max(outside) if outside else -np.inf
        tolerant.append(chosen == top or (tie and len(chosen) == len(top)
                                          and min(t[j] for j in chosen) > best_out - near_tie * kth))
        ties.append(tie)
        if not tie:
            exact_untied.append(chosen == top)
        short.append(len(reasons) < k and int((t > 0).sum()) >= k)
    count = len(declined)

    def share(values: list) -> float:
        return float(np.mean(values)) if values else float("nan")

    return {
        "declined": count, "no_reason": int(sum(empty)), "all_raise": share(all_raise),
        "false_reasons": int(sum(false)),
        "first": share(first), "first_misses": int(count - sum(first)), "first_tolerant": share(first_tol),
        "set_exact": share(exact), "set_tolerant": share(tolerant), "near_ties": int(sum(ties)),
        "set_excluding_ties": share(exact_untied), "set_misses_excluding_ties": int(len(exact_untied)
                                                                                    - sum(exact_untied)),
        "short": int(sum(short)), "near_tie": near_tie, "k": k,
    }


def format_metrics(m: dict) -> str:
    return (f"declined {m['declined']} (no reason listed: {m['no_reason']}) | (a) every reason truly raises "
            f"{m['all_raise']:.1%} ({m['false_reasons']} false reasons) | (b) first = true first {m['first']:.1%} "
            f"({m['first_misses']} misses; near-tie tolerant {m['first_tolerant']:.1%}) | (c) set = true top-{m['k']}: "
            f"{m['set_exact']:.1%} strict, {m['set_tolerant']:.1%} near-ties tolerated, "
            f"{m['set_excluding_ties']:.1%} of the {m['declined'] - m['near_ties']} without a near-tie "
            f"({m['near_ties']} near-ties at {m['near_tie']:.0%}) | (d) fewer than {m['k']} listed where the truth has "
            f"{m['k']}: {m['short']}")
