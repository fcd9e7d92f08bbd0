"""Stability, adaptive sample size and the deletion check (docs/method.md, "Explanation quality")."""

import numpy as np
import pytest
import torch

from tasks.engine import BatchedLime
from tasks.engine.deletion import DeletionCheck
from tasks.engine.stability import (
    BLOCKS,
    combine,
    critical_value,
    flatten,
    index_groups,
    jackknife_z,
    replicate_agreement,
    selection_margin,
)
from tasks.engine.surrogate import WeightedMoments, kernel_moments, ridge_on, select_features


def engine(demo, **overrides) -> BatchedLime:
    settings = dict(stats=demo.stats, model=demo.model, explain_index=1, num_samples=1200, top_k=3, seed=11,
                    stability_runs=2, adaptive=True, max_samples_factor=4)
    settings.update(overrides)
    return BatchedLime(**settings)


class CountingModel:
    def __init__(self, model) -> None:
        self.model, self.device, self.description, self.rows = model, model.device, "counting model", 0

    def __call__(self, rows):
        self.rows += len(rows)
        return self.model(rows)


def test_groups_pool_to_the_plain_engines_fit(demo) -> None:
    """Stream 0 (S/R = 600 samples) split into blocks and pooled again is exactly the sample set and fit of the
    plain engine with S = 600."""
    x, ids = demo.decisions[:6], demo.ids[:6]
    plain = engine(demo, num_samples=600, stability_runs=1, adaptive=False, deletion_check=False).explain(x, ids)
    stable = engine(demo)
    keys, own_rows, decisions = stable._inputs(x, ids)
    same_bin, target = stable._draw(decisions, own_rows, ids, keys, 600, 0)
    groups = stable._block_moments(same_bin, target)
    assert groups.total_weight.shape == (6, BLOCKS)
    pooled = flatten(combine(groups, torch.ones(1, BLOCKS, dtype=torch.float64)))
    direct = WeightedMoments(*kernel_moments(same_bin, target, demo.stats.kernel_width))
    for name in ("total_weight", "mean_z", "mean_y", "czz", "czy", "syy"):
        torch.testing.assert_close(getattr(pooled, name), getattr(direct, name), atol=1e-9, rtol=1e-9)
    fit = ridge_on(pooled, select_features(pooled, 3, "auto"))
    order = torch.argsort(fit.coef.abs(), dim=1, descending=True, stable=True)
    np.testing.assert_array_equal(fit.features.gather(1, order).numpy(), plain.feature_index)
    np.testing.assert_allclose(fit.coef.gather(1, order).numpy(), plain.weights, atol=1e-9)


def test_selection_test_gives_the_same_bits_in_any_batch(demo) -> None:
    """Pooling and the jackknife treat each decision on its own: the same moments give the same margin and z,
    to the last bit, alone or in a batch (a decision's row must not depend on its shard)."""
    stable = engine(demo)
    groups, _ = stable.first_round_groups(demo.decisions[:5], demo.ids[:5])

    def margin_and_z(g):
        count = g.total_weight.shape[1]
        pooled = flatten(combine(g, torch.ones(1, count, dtype=torch.float64)))
        chosen = select_features(pooled, 3, "forward_selection")
        margin = selection_margin(pooled, chosen, "forward_selection")
        return margin, jackknife_z(g, chosen, margin, "forward_selection")

    batch_margin, batch_z = margin_and_z(groups)
    for i in range(5):
        alone_margin, alone_z = margin_and_z(index_groups(groups, slice(i, i + 1)))
        assert alone_margin.item() == batch_margin[i].item() and alone_z.item() == batch_z[i].item()


def test_stability_columns(demo) -> None:
    out = engine(demo, adaptive=False).explain(demo.decisions[:40], demo.ids[:40])
    assert set(np.unique(out.stability)) <= {0.0, 1.0} and out.num_samples.tolist() == [1200] * 40
    crit = critical_value(0.95, 2 * BLOCKS)
    np.testing.assert_array_equal(out.stable, (out.stability == 1.0) & (out.selection_z >= crit))
    assert out.order_agrees[out.stability < 1].sum() == 0  # different sets cannot have the same order
    assert 0 < out.stable.sum() < 40  # at 2 x 600 samples some decisions are stable, some are not
    assert out.deletion_delta.shape == (40,) and out.deletion_holds.dtype == bool
    plain = engine(demo, stability_runs=1).explain(demo.decisions[:5], demo.ids[:5])
    assert plain.stable is None and plain.stability is None and plain.num_samples.tolist() == [1200] * 5


def test_adaptation_re_explains_only_unstable_decisions_with_more_samples(demo) -> None:
    counting = CountingModel(demo.model)
    x, ids = demo.decisions[:40], demo.ids[:40]
    first = engine(demo, adaptive=False).explain(x, ids)
    adapted = engine(demo, model=counting, deletion_check=False).explain(x, ids)
    stable_at_s = first.stable
    np.testing.assert_array_equal(adapted.num_samples[stable_at_s], 1200)  # stable ones: never re-explained
    np.testing.assert_array_equal(adapted.feature_index[stable_at_s], first.feature_index[stable_at_s])
    assert (adapted.num_samples[~stable_at_s] > 1200).all()  # unstable ones got more samples
    assert set(adapted.num_samples.tolist()) <= {1200, 2400, 4800}  # doubling, capped at 4 x S
    assert (adapted.num_samples[~adapted.stable] == 4800).all()  # still unstable: only at the cap
    # model rows: every sample behind each reported fit, plus one row 0 per stream and extra round, nothing else
    rounds = np.log2(adapted.num_samples / 1200)
    assert counting.rows == int(adapted.num_samples.sum() + 2 * rounds.sum())
    assert adapted.stable.mean() > first.stable.mean()


def test_reproducible_across_batches_and_order(demo) -> None:
    x, ids = demo.decisions[:20], demo.ids[:20]
    whole = engine(demo, deletion_check=False).explain(x, ids)
    order = np.random.default_rng(1).permutation(20)
    small = engine(demo, memory_budget_mb=16, deletion_check=False)
    assert small.decisions_per_chunk(2400) < 20
    shuffled = small.explain(x[order], [ids[i] for i in order])
    back = np.argsort(order)
    pieces = [engine(demo, deletion_check=False).explain(x[i : i + 7], ids[i : i + 7]) for i in range(0, 20, 7)]
    assert whole.stable.sum() > 0 and (whole.num_samples > 1200).any()  # both paths are exercised
    for feature_index, weights, samples, stable in (
        (shuffled.feature_index[back], shuffled.weights[back], shuffled.num_samples[back], shuffled.stable[back]),
        tuple(np.concatenate([getattr(p, n) for p in pieces]) for n in ("feature_index", "weights", "num_samples",
                                                                         "stable")),
    ):
        np.testing.assert_array_equal(feature_index, whole.feature_index)
        np.testing.assert_array_equal(samples, whole.num_samples)
        np.testing.assert_array_equal(stable, whole.stable)
        np.testing.assert_allclose(weights, whole.weights, atol=1e-5)


def test_other_seed_agrees_more_after_adaptation(demo) -> None:
    x, ids = demo.decisions[:40], demo.ids[:40]
    def sets(out):
        return [frozenset(r.tolist()) for r in out.feature_index]
    def agreement(a, b):
        return np.mean([p == q for p, q in zip(sets(a), sets(b), strict=True)])
    plain = [engine(demo, seed=s, stability_runs=1, deletion_check=False).explain(x, ids) for s in (1, 2)]
    adapted = [engine(demo, seed=s, deletion_check=False).explain(x, ids) for s in (1, 2)]
    both = adapted[0].stable & adapted[1].stable
    print(f"top-3 set agreement across seeds: plain {agreement(*plain):.3f}, adapted {agreement(*adapted):.3f}")
    assert agreement(*adapted) > agreement(*plain)
    assert np.mean([sets(adapted[0])[i] == sets(adapted[1])[i] for i in np.flatnonzero(both)]) >= 0.95


def test_selection_margin_and_agreement_on_known_moments() -> None:
    # two decisions, three features, uncorrelated: gains are czy^2 / czz
    czz = torch.diag_embed(torch.ones(2, 3, dtype=torch.float64))
    czy = torch.tensor([[3.0, 2.0, 1.0], [1.0, 1.0, 0.5]], dtype=torch.float64)
    m = WeightedMoments(torch.ones(2, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.float64),
                        torch.zeros(2, dtype=torch.float64), czz, czy, torch.full((2,), 20.0, dtype=torch.float64))
    chosen = torch.tensor([[0], [0]])
    margin = selection_margin(m, chosen, "forward_selection")
    torch.testing.assert_close(margin, torch.tensor([(9 - 4) / 20, 0.0], dtype=torch.float64))
    share, order = replicate_agreement(torch.tensor([[[0, 1], [1, 0]], [[0, 1], [0, 2]]]))
    assert share.tolist() == [1.0, 0.0] and order.tolist() == [False, False]


class Linear:
    """p(declined) = 0.5 + 0.02 * x0 - 0.03 * x1: effects known exactly."""

    device, description = torch.device("cpu"), "linear"

    def __call__(self, rows):
        p = 0.5 + 0.02 * rows[:, 0] - 0.03 * rows[:, 1]
        return torch.stack([1 - p, p], dim=1)


def test_deletion_check_direction_on_a_linear_model() -> None:
    from tasks.engine import fit_reference
    from tasks.inputs.config import FeatureConfig

    rng = np.random.default_rng(0)
    reference = np.column_stack([rng.uniform(0, 10, 400), rng.integers(0, 3, 400)]).astype(float)
    features = [FeatureConfig(name="a", label="A", kind="numeric"),
                FeatureConfig(name="c", label="C", kind="categorical", categories=["x", "y", "z"])]
    stats = fit_reference(reference, features)
    check = DeletionCheck(stats)
    x = np.array([[9.5, 0.0]])  # top bin of a (raises p), category x (code 0: the lowest penalty, lowers p)
    model = Linear()
    def predict(rows):
        return model(rows)[:, 1].double()
    model_pred = predict(torch.as_tensor(x, dtype=torch.float32)).numpy()
    fa, ca = stats.features[0], stats.features[1]
    others = [b for b in fa.values if b != fa.bin_of(9.5)]
    p = np.array([fa.frequencies[fa.values.index(b)] for b in others])
    mean_a = float(np.dot(p / p.sum(), [fa.means[b] for b in others]))
    q = np.array([ca.frequencies[ca.values.index(c)] for c in (1, 2)])
    mean_c = float(np.dot(q / q.sum(), [1.0, 2.0]))
    expected = 0.02 * (mean_a - 9.5) - 0.03 * mean_c  # both removals lower p
    delta, holds = check.run(predict, torch.device("cpu"), x, np.array([[0, 1]]), np.array([[0.1, 0.05]]), model_pred)
    assert delta[0] == pytest.approx(expected, abs=1e-5) and delta[0] < 0
    assert holds[0]  # the factors were stated to raise p (net +0.15); removing them lowers it
    _, wrong = check.run(predict, torch.device("cpu"), x, np.array([[0, 1]]), np.array([[-0.1, 0.02]]), model_pred)
    assert not wrong[0]  # stated net effect "lowers": removal should raise p, but it lowers it


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_and_cuda_agree_with_stability_and_adaptation(demo) -> None:
    from tasks.inputs.config import ModelConfig
    from tasks.inputs.model import load_model

    cuda_model = load_model(
        ModelConfig(path=demo.model_path, classes=["approved", "declined"], explain="declined"), len(demo.features),
        "cuda",
    )
    x, ids = demo.decisions[:48], demo.ids[:48]
    on_cpu = engine(demo).explain(x, ids)
    on_gpu = engine(demo, model=cuda_model).explain(x, ids)
    for name in ("feature_index", "num_samples", "stable", "deletion_holds"):
        np.testing.assert_array_equal(getattr(on_gpu, name), getattr(on_cpu, name))
    np.testing.assert_allclose(on_gpu.weights, on_cpu.weights, atol=1e-5)
