"""The wide model's column layout (tasks/engine/columns.py): main effects and the columns they buy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from tasks.engine.columns import column_layout, main_effects


def test_main_effects_are_the_between_value_sums_of_squares_less_their_expectation() -> None:
    rng = np.random.default_rng(0)
    row_features = torch.tensor([0, 0, 0, 1, 1])  # feature 0 has 3 values, feature 1 two
    n = 400
    value = np.stack([rng.integers(0, 3, n), rng.integers(3, 5, n)], axis=1)  # the row each sample took
    own = np.array([0, 3])  # the applicant's own rows: no indicator
    design = np.zeros((1, n, 5), dtype=np.float32)
    for j in range(2):
        moved = value[:, j] != own[j]
        design[0, np.flatnonzero(moved), value[moved, j]] = 1.0
    y = 0.5 * (value[:, 0] == 2) + rng.normal(0, 0.1, n)
    got = main_effects(torch.as_tensor(design), torch.as_tensor(y[None]), row_features, 2)[0].numpy()
    frame = pd.DataFrame({"a": value[:, 0], "b": value[:, 1], "y": y})
    variance = y.var(ddof=1)
    for j, column in enumerate("ab"):
        groups = frame.groupby(column)["y"]
        between = float((groups.count() * (groups.mean() - y.mean()) ** 2).sum())
        assert np.isclose(got[j], between - (groups.ngroups - 1) * variance)
    assert got[0] > 10 * abs(got[1])


def test_columns_go_to_the_largest_effects_while_they_fit() -> None:
    row_features = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2])  # 3 features with 3, 4 and 2 values: P = 9
    effects = torch.tensor([[1.0, 5.0, 0.0], [0.0, 0.0, 9.0]])
    layout = column_layout(effects, row_features, columns=6)  # d = 3: 3 extra columns
    # decision 0: feature 1 (3 extra) fits, feature 0 (2 more) does not
    assert layout.expanded[0].tolist() == [False, True, False]
    assert layout.column_of_row[0].tolist() == [0, 0, 0, 1, 2, 3, 4, 5, 5]
    assert layout.column_feature[0].tolist() == [0, 1, 1, 1, 1, 2]
    # decision 1: feature 2 (1 extra) first, then feature 0 (2 extra); feature 1 (3) no longer fits
    assert layout.expanded[1].tolist() == [True, False, True]
    assert layout.column_of_row[1].tolist() == [0, 1, 2, 3, 3, 3, 3, 4, 5]
    assert layout.column_feature[1].tolist() == [0, 0, 0, 1, 2, 2]
