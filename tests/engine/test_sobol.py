"""The Sobol design: the right sequence, shifted per decision and stream, continued across rounds, less noise."""

import numpy as np
import pytest
import torch
from scipy.stats import qmc

from tasks.engine import BatchedLime
from tasks.engine.rng import decision_keys
from tasks.engine.sampler import QuartileSampler
from tasks.engine.sobol import MAX_FEATURES, SobolTable, digital_shifts, sobol_rows


def test_rows_are_scipys_unscrambled_sobol_sequence() -> None:
    """Row t is point t - 1 of the Sobol sequence (Joe-Kuo direction numbers), as scipy generates it."""
    rows = sobol_rows(1025, 7).numpy()
    expected = np.floor(qmc.Sobol(7, scramble=False).random(1024) * 2**24).astype(np.int64)
    assert (rows[0] == 0).all()
    np.testing.assert_array_equal(rows[1:], expected)


def test_shifted_points_fill_every_stratum_once() -> None:
    """A digital shift keeps the net: the first 2**m points of a stream put exactly one point in each of the 2**m
    equal intervals of every feature, and a shift is different for every decision and stream."""
    keys = torch.as_tensor(decision_keys(7, ["A", "B"]))
    points = sobol_rows(1 + 256, 5)[1:]
    for stream in (0, 1):
        shifted = points.unsqueeze(0) ^ digital_shifts(keys, 5, stream)  # [2, 256, 5]
        strata = (shifted >> (24 - 8)).numpy()
        for b in range(2):
            for j in range(5):
                assert sorted(strata[b, :, j]) == list(range(256))
    first, second = digital_shifts(keys, 5, 0), digital_shifts(keys, 5, 1)
    assert not torch.equal(first[0], first[1])
    assert not torch.equal(first, second)


def test_adaptation_rounds_continue_the_stream(demo) -> None:
    """Rows drawn in a later round with first_row are the rows a single longer draw would have had."""
    sampler = QuartileSampler(demo.stats, "cpu")
    x = torch.as_tensor(demo.decisions[:3], dtype=torch.float32)
    own = torch.as_tensor(sampler.own_rows(demo.stats.discretize(demo.decisions[:3])))
    keys = torch.as_tensor(decision_keys(5, demo.ids[:3]))
    whole = sampler.sample(x, own, keys, 400, stream=1)
    head = sampler.sample(x, own, keys, 200, stream=1)
    tail = sampler.sample(x, own, keys, 201, stream=1, adaptation_round=1, first_row=199)
    torch.testing.assert_close(head.inputs, whole.inputs[:, :200], rtol=0, atol=0)
    torch.testing.assert_close(tail.inputs[:, 1:], whole.inputs[:, 200:], rtol=0, atol=0)
    assert torch.equal(tail.same_bin[:, 1:], whole.same_bin[:, 200:])


def test_unknown_design_and_too_many_features_are_refused(demo) -> None:
    with pytest.raises(ValueError, match="unknown sampling design 'halton'"):
        QuartileSampler(demo.stats, "cpu", design="halton")
    with pytest.raises(ValueError, match='21,201 dimensions, one per feature; this model has 21,202 features: use'):
        SobolTable(MAX_FEATURES + 1, torch.device("cpu"))


def test_sobol_design_has_less_sampling_noise_than_independent_draws(demo) -> None:
    """Same decisions, two seeds: the surrogate weights move far less between seeds with the Sobol design.
    (On the demo the spread is ~3x smaller at S = 5,000: independent draws would need ~9x the samples.)"""
    x, ids = demo.decisions[:40], demo.ids[:40]

    def spread(design: str) -> float:
        runs = [
            BatchedLime(stats=demo.stats, model=demo.model, explain_index=1, num_samples=2000, seed=seed,
                        design=design, deletion_check=False).explain(x, ids)
            for seed in (1, 2)
        ]
        return float(np.abs(runs[0].all_weights - runs[1].all_weights).mean())

    sobol, random = spread("sobol"), spread("random")
    print(f"mean |weight difference| between seeds: sobol {sobol:.5f}, random {random:.5f}")
    assert sobol < 0.5 * random
