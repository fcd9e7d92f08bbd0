"""The batched engine against the real lime package, and its own guarantees (shard invariance, OOM)."""

import logging

import numpy as np
import pytest
import torch

from tasks.engine import BatchedLime, make_explainer
from tasks.engine.reference import LimeReference
from tasks.inputs.config import parse_config

AGREEMENT_DECISIONS = 100


def engine(demo, **overrides) -> BatchedLime:
    settings = dict(stats=demo.stats, model=demo.model, explain_index=1, num_samples=5000, top_k=3, seed=11)
    settings.update(overrides)
    return BatchedLime(**settings)


def top_sets(feature_index: np.ndarray) -> list[frozenset[int]]:
    return [frozenset(int(f) for f in row) for row in feature_index]


def set_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of decisions whose top-k feature SET is the same in two explanations."""
    return float(np.mean([x == y for x, y in zip(top_sets(a), top_sets(b), strict=True)]))


@pytest.fixture(scope="module")
def lime_runs(demo):
    """lime 0.2.0.1 itself, twice with independent seeds, on the demo's decisions."""
    x, ids = demo.decisions[:AGREEMENT_DECISIONS], demo.ids[:AGREEMENT_DECISIONS]
    first = LimeReference(stats=demo.stats, model=demo.model, explain_index=1, seed=101).explain(x, ids)
    second = LimeReference(stats=demo.stats, model=demo.model, explain_index=1, seed=202).explain(x, ids)
    return first, second


@pytest.mark.parametrize("design", ["sobol", "random"])
def test_top3_agrees_with_lime_as_often_as_lime_with_itself(demo, lime_runs, design) -> None:
    """Both sampling designs draw lime's distribution: the engine agrees with lime as often as lime with itself."""
    first, second = lime_runs
    ours = engine(demo, design=design).explain(demo.decisions[:AGREEMENT_DECISIONS], demo.ids[:AGREEMENT_DECISIONS])
    lime_self = set_agreement(first.feature_index, second.feature_index)
    ours_vs_lime = (
        set_agreement(ours.feature_index, first.feature_index) + set_agreement(ours.feature_index, second.feature_index)
    ) / 2
    print(f"top-3 set agreement: lime vs lime {lime_self:.3f}, engine vs lime {ours_vs_lime:.3f}")
    assert ours_vs_lime >= lime_self - 0.03
    fidelity_gap = np.abs(ours.fidelity - first.fidelity).mean()
    lime_fidelity_gap = np.abs(second.fidelity - first.fidelity).mean()
    print(f"mean |fidelity - lime score| {fidelity_gap:.4f} (lime vs lime {lime_fidelity_gap:.4f})")
    assert fidelity_gap <= max(0.02, 1.5 * lime_fidelity_gap)
    np.testing.assert_allclose(ours.model_pred, first.model_pred, atol=1e-6)
    local_gap = np.abs(ours.local_pred - first.local_pred).mean()
    lime_local_gap = np.abs(second.local_pred - first.local_pred).mean()
    print(f"mean |local_pred - lime local_pred| {local_gap:.4f} (lime vs lime {lime_local_gap:.4f})")
    assert local_gap <= max(0.01, 1.5 * lime_local_gap)


def test_shard_invariance_batches_and_order(demo) -> None:
    x, ids = demo.decisions[:48], demo.ids[:48]
    whole = engine(demo, num_samples=1000).explain(x, ids)
    order = np.random.default_rng(0).permutation(len(ids))
    shuffled = engine(demo, num_samples=1000, memory_budget_mb=16).explain(x[order], [ids[i] for i in order])
    assert engine(demo, num_samples=1000, memory_budget_mb=16).decisions_per_chunk() < len(ids)
    pieces = [engine(demo, num_samples=1000).explain(x[i : i + 5], ids[i : i + 5]) for i in range(0, 48, 5)]
    for other, index in ((shuffled, np.argsort(order)), (pieces, None)):
        if isinstance(other, list):
            feature_index = np.concatenate([p.feature_index for p in other])
            weights = np.concatenate([p.weights for p in other])
            fidelity = np.concatenate([p.fidelity for p in other])
        else:
            feature_index, weights, fidelity = (
                other.feature_index[index], other.weights[index], other.fidelity[index]
            )
        np.testing.assert_array_equal(feature_index, whole.feature_index)
        np.testing.assert_allclose(weights, whole.weights, atol=1e-5)
        np.testing.assert_allclose(fidelity, whole.fidelity, atol=1e-5)


def test_outputs_are_consistent(demo) -> None:
    out = engine(demo, num_samples=2000).explain(demo.decisions[:20], demo.ids[:20])
    assert out.feature_index.shape == (20, 3) and out.weights.shape == (20, 3)
    assert np.all(np.diff(np.abs(out.weights), axis=1) <= 0)  # ordered by |weight|
    assert all(len(set(row)) == 3 for row in out.feature_index)
    np.testing.assert_allclose(out.local_pred, out.intercept + out.weights.sum(1), atol=1e-12)
    assert np.all((out.fidelity <= 1) & (out.fidelity > -1))
    assert out.all_weights is not None and out.all_weights.shape == (20, len(demo.features))
    probabilities = demo.model(torch.as_tensor(demo.decisions[:20], dtype=torch.float32))[:, 1].numpy()
    np.testing.assert_allclose(out.model_pred, probabilities, atol=1e-7)


def test_seed_changes_samples_not_semantics(demo) -> None:
    a = engine(demo, seed=1).explain(demo.decisions[:30], demo.ids[:30])
    b = engine(demo, seed=2).explain(demo.decisions[:30], demo.ids[:30])
    assert not np.allclose(a.weights, b.weights)
    assert set_agreement(a.feature_index, b.feature_index) > 0.6


class ThreeClassModel:
    """approved / referred / declined: the demo model's approval split by a non-linear referral rule."""

    def __init__(self, model) -> None:
        self.model, self.device, self.description = model, model.device, "three-class demo model"

    def __call__(self, rows):
        declined = self.model(rows)[:, 1]
        refer_share = torch.sigmoid(3.0 * (rows[:, 1] - 0.35) + 2.0 * (rows[:, 2] - 0.5))  # DTI and utilisation
        approved = (1 - declined) * (1 - refer_share)
        return torch.stack([approved, (1 - declined) * refer_share, declined], dim=1)


def lime_run(explainer, predict, row, labels):
    state = np.random.RandomState(42)
    explainer.random_state = state
    explainer.discretizer.random_state = state
    return explainer.explain_instance(row, predict, labels=labels, num_features=3, num_samples=3000)


def test_deviation_fidelity_belongs_to_the_explained_class(demo) -> None:
    """lime 0.2.0.1 keeps score and local_pred of the LAST label it explains (lime #173/#506); limelight's
    belong to the explained class. Asked for labels (declined, approved) on the same samples, lime returns
    approved's local_pred (1 - declined's); with three classes its score is another class's too."""
    reference = LimeReference(stats=demo.stats, model=demo.model, explain_index=1, seed=5)
    declined = demo.model(torch.as_tensor(demo.decisions[:50], dtype=torch.float32))[:, 1]
    pick = int(declined.argmax())  # a clear decline, so declined's and approved's local_pred are far apart
    row = demo.decisions[pick]
    declined_only = lime_run(reference.explainer, reference.predict, row, (1,))
    both = lime_run(reference.explainer, reference.predict, row, (1, 0))
    assert both.local_exp[1] == declined_only.local_exp[1]  # same samples, same weights for 'declined'
    assert both.local_pred[0] == pytest.approx(1 - declined_only.local_pred[0], abs=1e-6)  # approved's
    ours = engine(demo, num_samples=3000).explain(row[None, :], [demo.ids[pick]])
    assert ours.local_pred[0] == pytest.approx(declined_only.local_pred[0], abs=0.05)
    assert abs(ours.local_pred[0] - both.local_pred[0]) > 0.2

    three = ThreeClassModel(demo.model)
    reference3 = LimeReference(stats=demo.stats, model=three, explain_index=2, seed=5)
    declined3 = lime_run(reference3.explainer, reference3.predict, row, (2,))
    mixed3 = lime_run(reference3.explainer, reference3.predict, row, (2, 0))
    assert mixed3.local_exp[2] == declined3.local_exp[2]
    assert mixed3.score != pytest.approx(declined3.score, abs=1e-3)  # lime: approved's score under 'declined'
    ours3 = engine(demo, model=three, explain_index=2, num_samples=3000).explain(row[None, :], [demo.ids[pick]])
    assert ours3.fidelity[0] == pytest.approx(declined3.score, abs=0.1)


class OutOfMemoryAbove:
    """A model that, like a GPU short of memory, fails on calls larger than ``limit`` rows."""

    def __init__(self, model, limit: int) -> None:
        self.model, self.limit = model, limit
        self.device, self.description = model.device, "test model"

    def __call__(self, rows):
        if len(rows) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.model(rows)


def test_out_of_memory_halves_the_chunk_and_loses_nothing(demo, caplog) -> None:
    x, ids = demo.decisions[:16], demo.ids[:16]
    expected = engine(demo, num_samples=500).explain(x, ids)
    flaky = engine(demo, num_samples=500, model=OutOfMemoryAbove(demo.model, 3 * 500), model_rows=10**9)
    with caplog.at_level(logging.WARNING, logger="limelight.engine"):
        got = flaky.explain(x, ids)
    assert got.ids == ids
    np.testing.assert_array_equal(got.feature_index, expected.feature_index)
    np.testing.assert_allclose(got.weights, expected.weights, atol=1e-9)
    assert any("out of memory" in r.message for r in caplog.records)
    assert flaky._chunk <= 3


def test_make_explainer_picks_the_configured_engine(demo, tmp_path) -> None:
    raw = {
        "data": {"decisions": "d.parquet", "reference": "r.parquet"},
        "model": {"path": str(demo.model_path), "classes": ["approved", "declined"], "explain": "declined"},
        "explain": {"num_samples": 300, "engine": "lime"},
        "features": [f.model_dump() for f in demo.features],
    }
    lime_engine = make_explainer(parse_config(raw, tmp_path / "c.toml"), demo.stats, demo.model)
    assert isinstance(lime_engine, LimeReference)
    out = lime_engine.explain(demo.decisions[:2], demo.ids[:2])
    assert out.feature_index.shape == (2, 3) and out.all_weights is None
    raw["explain"]["engine"] = "batched"
    assert isinstance(make_explainer(parse_config(raw, tmp_path / "c.toml"), demo.stats, demo.model), BatchedLime)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_and_cuda_give_the_same_explanations(demo) -> None:
    from tasks.inputs.config import ModelConfig
    from tasks.inputs.model import load_model

    cuda_model = load_model(
        ModelConfig(path=demo.model_path, classes=["approved", "declined"], explain="declined"),
        len(demo.features),
        "cuda",
    )
    x, ids = demo.decisions[:64], demo.ids[:64]
    on_cpu = engine(demo).explain(x, ids)
    on_gpu = engine(demo, model=cuda_model).explain(x, ids)
    np.testing.assert_array_equal(on_gpu.feature_index, on_cpu.feature_index)
    np.testing.assert_allclose(on_gpu.weights, on_cpu.weights, atol=1e-5)
    np.testing.assert_allclose(on_gpu.fidelity, on_cpu.fidelity, atol=1e-5)


@pytest.mark.parametrize("design", ["sobol", "random"])
def test_compiled_kernels_give_the_same_explanations(demo, design) -> None:
    """torch.compile fuses the sampler and the moments; results match eager to float32 rounding."""
    from tasks.engine.factory import compile_enabled

    if not compile_enabled("auto", torch.device("cpu")):
        pytest.skip("no C++ compiler for torch.compile on this machine")
    x, ids = demo.decisions[:40], demo.ids[:40]
    eager = engine(demo, num_samples=1000, design=design).explain(x, ids)
    fused = engine(demo, num_samples=1000, compile=True, design=design)
    first = fused.explain(x[:13], ids[:13])  # another batch size: shapes are dynamic
    rest = fused.explain(x[13:], ids[13:])
    np.testing.assert_array_equal(np.concatenate([first.feature_index, rest.feature_index]), eager.feature_index)
    np.testing.assert_allclose(np.concatenate([first.weights, rest.weights]), eager.weights, atol=1e-6)
    assert fused.compile  # it did not fall back to eager
