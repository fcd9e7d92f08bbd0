"""The counter-based stream: identical whatever the batch, matches a reference SplitMix64, looks uniform."""

import numpy as np
import torch
from scipy import stats

from tasks.engine.rng import decision_key, decision_keys, uniforms


def splitmix64_reference(key: int, counter: int) -> int:
    """SplitMix64's output for state key + counter * gamma (Steele, Lea & Flood 2014), in Python integers."""
    mask = (1 << 64) - 1
    z = (key + counter * 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


def test_uniforms_match_reference_splitmix64() -> None:
    key = decision_key(20261122, "C-000123")
    samples, features = 7, 3
    u = uniforms(torch.tensor([key]), samples, features)[0]
    half = (samples + 1) // 2
    for i in range(samples):
        for j in range(features):
            z = splitmix64_reference(key & ((1 << 64) - 1), j * half + i // 2 + 1)
            bits = (z >> 40) & 0xFFFFFF if i % 2 == 0 else (z >> 8) & 0xFFFFFF
            assert u[i, j].item() == bits / 2**24


def test_stream_depends_only_on_the_decision() -> None:
    ids = [f"id-{i}" for i in range(9)]
    keys = torch.as_tensor(decision_keys(1, ids))
    whole = uniforms(keys, 101, 5)
    reordered = uniforms(keys.flip(0), 101, 5).flip(0)
    alone = torch.cat([uniforms(keys[i : i + 1], 101, 5) for i in range(len(ids))])
    assert torch.equal(whole, reordered)
    assert torch.equal(whole, alone)


def test_keys_differ_by_seed_id_and_stream() -> None:
    assert decision_key(1, "a") != decision_key(2, "a")
    assert decision_key(1, "a") != decision_key(1, "b")
    key = torch.tensor([decision_key(1, "a")])
    assert not torch.equal(uniforms(key, 50, 2, stream=0), uniforms(key, 50, 2, stream=1))


def test_uniforms_are_uniform_and_uncorrelated() -> None:
    u = uniforms(torch.as_tensor(decision_keys(5, ["x", "y"])), 20000, 4).double().numpy()
    flat = u.reshape(-1)
    assert flat.min() >= 0.0 and flat.max() < 1.0
    assert stats.kstest(flat, "uniform").pvalue > 1e-3
    # neighbouring samples, features and decisions are uncorrelated
    assert abs(np.corrcoef(u[0, :-1, 0], u[0, 1:, 0])[0, 1]) < 0.03
    assert abs(np.corrcoef(u[0, :, 0], u[0, :, 1])[0, 1]) < 0.03
    assert abs(np.corrcoef(u[0, :, 0], u[1, :, 0])[0, 1]) < 0.03
