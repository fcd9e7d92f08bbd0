"""Known truth: the engine's reasons on a credit model that is exactly additive in log-odds (issue 19).

The case (``bench/truth.py``): the synthetic consumer-loan portfolio of ``bench_matched.py``'s ``loan_case``, with
gaps in income and utilisation, and an Explainable Boosting Machine with main effects only, exported to look-up
tables, so f(x) = sigmoid(b + sum_j g_j(x_j)) exactly. The truth for feature j of decision x is
f(x) - mean f(x with x_j from the reference rows in another bin than x_j's), in probability (``true_contrasts``).

It explains the first ``--decisions`` test rows (declined and approved mixed; the metrics are over the declined
ones, model_pred >= ``--threshold``) with each method of :data:`METHODS` under two seeds, and prints per method and
seed: (a) the share of declines whose every listed reason truly raises the decline, (b) whose first reason is the
true first, (c) whose reason set is the true top-k (strict; near-ties tolerated; without near-ties), (d) listed sets
shorter than k where the truth has k positive; the share of decisions with fidelity >= 0.5 (held out for the
kernel-matched method, lime's in-sample score for lime's), the share sent to review at the [review] defaults, the
share whose reason set is the same under both seeds, and seconds.

    .venv/bin/python bench/bench_truth.py                  # 200 decisions, both methods, seeds 1 and 2
    .venv/bin/python bench/bench_truth.py --misses         # and every decline whose reasons miss the truth

(from a git worktree using the main checkout's venv: ``PYTHONPATH=$PWD /work/main/.venv/bin/python
bench/bench_truth.py``; the script puts the repository root on ``sys.path`` itself). CPU, one torch thread.

A new method is one line of :data:`METHODS`: its label, its engine class and its keyword arguments.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from truth import additive_case, format_metrics, listed_reasons, true_contrasts, truth_metrics  # noqa: E402

from tasks.engine import BatchedLime  # noqa: E402
from tasks.engine.matched import KernelMatchedLime
from tasks.engine.perbin import PerBinLime  # noqa: E402
from tasks.explain.aggregate import review_reasons  # noqa: E402
from tasks.inputs.config import ReviewConfig  # noqa: E402


def matched_defaults(threshold: float) -> dict:
    """The engine's current default method as bench_matched.py runs it."""
    return dict(stability_runs=2, adaptive=True, adverse_threshold=threshold, deletion_check=False)


METHODS = [
    # (label, engine class, keyword arguments given the decision threshold, fidelity is held out)
    ("per-bin log-odds (default)", PerBinLime, lambda threshold: dict(matched_defaults(threshold), target="log-odds"),
     True),
    ("per-bin probability", PerBinLime, lambda threshold: dict(matched_defaults(threshold), target="probability"),
     True),
    ("kernel-matched (binary)", KernelMatchedLime, matched_defaults, True),
    ("lime (plain)", BatchedLime, lambda threshold: dict(stability_runs=1, deletion_check=False), False),
]


def make_engine(cls, case, seed: int, samples: int, k: int, **kwargs):
    """An engine of class ``cls`` on the case: the common arguments plus the method's own ``kwargs``."""
    return cls(stats=case.stats, model=case.model, explain_index=case.explain_index, num_samples=samples, top_k=k,
               seed=seed, **kwargs)


def print_misses(out, truth: np.ndarray, declined: np.ndarray, names: list[str], k: int, near_tie: float) -> None:
    """Each decline whose first reason is not the true first or whose set is not the true top-k: its listed reasons
    (weight, truth) against the truth's top k + 1, with the kernel width, fidelity and stability."""
    listed = listed_reasons(out.feature_index, out.weights, k)
    for b in np.flatnonzero(declined):
        t, reasons = truth[b], listed[b]
        order = np.argsort(-t, kind="stable")
        top = {int(j) for j in order[:k] if t[j] > 0}
        if reasons and reasons[0] == order[0] and set(reasons) == top:
            continue
        tie = t[order[k - 1]] > 0 and t[order[k - 1]] - t[order[k]] < near_tie * t[order[k - 1]]
        weight = dict(zip(out.feature_index[b].tolist(), out.weights[b].tolist(), strict=True))
        width = (f"width {out.kernel_width[b] / math.sqrt(truth.shape[1]):.2f} x sqrt d, "
                 if out.kernel_width is not None else "")
        stable = f", stable {bool(out.stable[b])}" if out.stable is not None else ""
        print(f"      {out.ids[b]} p {out.model_pred[b]:.3f}{' (near-tie)' if tie else ''}: listed "
              + ", ".join(f"{names[j]} (w {weight[j]:+.3f}, truth {t[j]:+.3f})" for j in reasons)
              + " | truth " + ", ".join(f"{names[j]} {t[j]:+.3f}" for j in order[: k + 1])
              + f" | {width}fidelity {out.fidelity[b]:.2f}{stable}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--decisions", type=int, default=200, help="the first N test rows, declined and approved")
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--threshold", type=float, default=0.3, help="decision threshold (declined: p >= it)")
    parser.add_argument("--near-tie", type=float, default=0.05, help="relative near-tie tolerance (truth_metrics)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--misses", action="store_true", help="print every decline whose reasons miss the truth")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    k = 3
    case = additive_case(torch.device("cpu"))
    x, ids = case.x[: args.decisions], case.ids[: args.decisions]
    start = time.perf_counter()
    truth = true_contrasts(case.model, case.stats, x, case.stats.data)
    print(f"truth for {len(ids)} decisions in {time.perf_counter() - start:.1f} s")
    pred = case.model(torch.as_tensor(x, dtype=torch.float32))[:, case.explain_index].numpy()
    declined = pred >= args.threshold
    log_odds = true_contrasts(case.model, case.stats, x, case.stats.data, scale="log-odds")
    top = [[frozenset(np.argsort(-t, kind="stable")[:k].tolist()) for t in truths[declined]]
           for truths in (truth, log_odds)]
    first = [np.argmax(truths[declined], axis=1) for truths in (truth, log_odds)]
    print(f"the truth in probability and in log-odds (g_j(x_j) - mean g_j over the other bins) name the same top-{k} "
          f"set for {np.mean([a == b for a, b in zip(*top, strict=True)]):.1%} of the declines, the same first for "
          f"{np.mean(first[0] == first[1]):.1%}; the metrics below use the probability truth")
    positive = (truth[declined] > 0).sum(axis=1)
    print(f"{case.name}: {len(ids)} decisions, {int(declined.sum())} declined (p >= {args.threshold}), S = "
          f"{args.samples}, top-{k}, seeds {args.seeds}; declines whose truth has fewer than {k} features raising "
          f"it: {int((positive < k).sum())}")
    review_config = SimpleNamespace(review=ReviewConfig(), report=SimpleNamespace(decision_threshold=args.threshold))
    for label, cls, kwargs, held_out in METHODS:
        reason_sets = []
        for seed in args.seeds:
            engine = make_engine(cls, case, seed, args.samples, k, **kwargs(args.threshold))
            start = time.perf_counter()
            out = engine.explain(x, ids)
            seconds = time.perf_counter() - start
            metrics = truth_metrics(out.feature_index, out.weights, out.model_pred, truth, args.threshold, k,
                                    near_tie=args.near_tie)
            gates = review_reasons(out, review_config)
            review = np.mean([bool(r) for r in gates])
            by_check = ", ".join(f"{c} {n}" for c, n in sorted(Counter(r for rs in gates for r in rs).items()))
            reason_sets.append([frozenset(r) for r in listed_reasons(out.feature_index[declined],
                                                                     out.weights[declined], k)])
            fidelity = "held out" if held_out else "in-sample"
            samples = np.mean(out.num_samples) if out.num_samples is not None else args.samples
            print(f"  {label}, seed {seed}: {format_metrics(metrics)}")
            print(f"  {' ' * len(label)}         fidelity ({fidelity}) >= 0.5 {np.mean(out.fidelity >= 0.5):.1%} | "
                  f"review {review:.1%} ({by_check or 'none'}) | samples {samples:,.0f} | {seconds:.1f} s")
            if args.misses:
                print_misses(out, truth, declined, case.stats.feature_names, k, args.near_tie)
        if len(reason_sets) > 1:
            same = np.mean([a == b for a, b in zip(reason_sets[0], reason_sets[1], strict=True)])
            print(f"  {label}: declines whose listed reasons are the same under seeds {args.seeds[0]} and "
                  f"{args.seeds[1]}: {same:.1%}")


if __name__ == "__main__":
    main()
