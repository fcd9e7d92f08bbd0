"""The demo's credit model: a small torch MLP trained on fresh synthetic applications (tasks/demo/portfolio.py).

:class:`CreditModel` maps float32 ``[n, 12]`` (``FEATURES`` order, categoricals as codes, :func:`model_inputs`) to
the probabilities of ``CLASSES``; the preprocessing is inside the module. The model imputes inside: a missing
number gets the training mean plus a missing indicator, a missing category no one-hot bit (docs/method.md,
"Missing values"). :func:`train_model` is seeded, single-threaded and deterministic: the same weights on every run.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pandas as pd
import torch
from scipy.stats import rankdata
from torch import nn

from tasks.demo.portfolio import (
    FEATURES,
    GAP_FEATURES,
    MONEY_FEATURES,
    add_gaps,
    default_logit,
    derived_seed,
    generate_portfolio,
    simulate_outcomes,
)

#: The model's outputs, in order (config/demo.toml ``[model] classes``).
CLASSES = ["approved", "declined"]

#: Training (:func:`train_model`): fresh applications, the held-out share, AdamW's schedule, the hidden width.
TRAINING_ROWS = 20_000
HOLDOUT_SHARE = 0.2
TRAINING_STEPS = 200
BATCH_SIZE = 1024
LEARNING_RATE = 3e-3
WEIGHT_DECAY = 1e-2
HIDDEN = 64


def model_inputs(portfolio: pd.DataFrame) -> np.ndarray:
    """The model's float32 ``[n, 12]`` input: ``FEATURES`` order, categoricals as their index in ``categories``,
    NaN for a missing value."""
    columns = []
    for feature in FEATURES:
        values = portfolio[feature["name"]]
        if feature["kind"] == "categorical":
            codes = pd.Categorical(values, categories=feature["categories"]).codes
            if ((codes < 0) & values.notna().to_numpy()).any():
                raise ValueError(f"column {feature['name']!r}: values outside {feature['categories']}")
            columns.append(np.where(codes < 0, np.nan, codes.astype(np.float64)))
        else:
            columns.append(values.to_numpy(dtype=np.float64))
    return np.column_stack(columns).astype(np.float32)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half)."""
    labels = np.asarray(labels).astype(bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        raise ValueError("roc_auc needs both classes")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


class CreditModel(nn.Module):
    """float32 ``[n, 12]`` (``FEATURES`` order, categoricals as codes) -> ``[n, 2]`` class probabilities.

    Preprocessing is inside the module, with constants baked in as buffers: log1p of the money columns,
    standardisation of the numeric columns, one-hot of the category codes (an unknown code gives all zeros).
    Missing values (NaN), when ``gap_features`` are given: a number is imputed by the training mean (0 after
    standardising) and each of ``gap_features`` gets a missing indicator input; a missing category gives all
    zeros. Without them (the complete demo, as before) a NaN number propagates to the output.
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, gap_features: tuple[str, ...] = ()) -> None:
        super().__init__()
        numeric = [i for i, f in enumerate(FEATURES) if f["kind"] == "numeric"]
        gaps = [numeric.index(i) for i, f in enumerate(FEATURES) if f["name"] in gap_features]
        cat_columns: list[int] = []
        cat_levels: list[float] = []
        for i, feature in enumerate(FEATURES):
            if feature["kind"] == "categorical":
                cat_columns += [i] * len(feature["categories"])
                cat_levels += [float(k) for k in range(len(feature["categories"]))]
        self.register_buffer("numeric_columns", torch.tensor(numeric, dtype=torch.long))
        self.register_buffer("log_mask", torch.tensor([FEATURES[i]["name"] in MONEY_FEATURES for i in numeric]))
        self.register_buffer("mean", mean.to(torch.float32))
        self.register_buffer("std", std.to(torch.float32))
        self.register_buffer("cat_columns", torch.tensor(cat_columns, dtype=torch.long))
        self.register_buffer("cat_levels", torch.tensor(cat_levels, dtype=torch.float32))
        self.register_buffer("gap_columns", torch.tensor(gaps, dtype=torch.long))
        self.impute: bool = bool(gaps)
        self.net = nn.Sequential(
            nn.Linear(len(numeric) + len(gaps) + len(cat_levels), HIDDEN), nn.ReLU(),
            nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
            nn.Linear(HIDDEN, len(CLASSES)),
        )

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32)
        numeric = x.index_select(1, self.numeric_columns)
        numeric = torch.where(self.log_mask, torch.log1p(numeric.clamp_min(0.0)), numeric)
        numeric = (numeric - self.mean) / self.std
        missing = torch.isnan(numeric.index_select(1, self.gap_columns)).to(torch.float32)
        if self.impute:
            numeric = torch.nan_to_num(numeric, nan=0.0)
        one_hot = (torch.round(x.index_select(1, self.cat_columns)) == self.cat_levels).to(torch.float32)
        return self.net(torch.cat([numeric, missing, one_hot], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(x), dim=1)


@contextmanager
def _deterministic_torch(seed: int) -> Iterator[None]:
    """Seeded, single-threaded, deterministic CPU torch; the caller's global torch state is restored after."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_num_threads(1)
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
            torch.set_num_threads(threads)


def train_model(seed: int, gaps: bool = True) -> tuple[CreditModel, dict[str, float]]:
    """Train the demo's credit model on ``TRAINING_ROWS`` fresh synthetic applications (with the demo's gaps in
    its inputs, :func:`add_gaps`, unless not ``gaps``; the outcomes follow the complete applications).

    AdamW on the cross-entropy, ``TRAINING_STEPS`` mini-batches drawn from seeded epoch permutations, one CPU
    thread, deterministic algorithms: the same weights on every run, in about a second. The short schedule and
    the weight decay are the regularisation (longer training overfits: held-out loss rises after ~15 epochs).
    Returns the model (eval mode) and held-out metrics (AUC, decline rate, the AUC of the true latent risk).
    """
    portfolio = generate_portfolio(TRAINING_ROWS, derived_seed(seed, 2))
    observed = add_gaps(portfolio, derived_seed(seed, 6)) if gaps else portfolio
    undeclared = observed["annual_income"].isna().to_numpy() if gaps else None
    labels = simulate_outcomes(portfolio, derived_seed(seed, 3), undeclared)
    x = model_inputs(observed)
    n_train = int(round(TRAINING_ROWS * (1.0 - HOLDOUT_SHARE)))

    numeric = [i for i, f in enumerate(FEATURES) if f["kind"] == "numeric"]
    scaled = x[:n_train, numeric].astype(np.float64)
    for j, i in enumerate(numeric):
        if FEATURES[i]["name"] in MONEY_FEATURES:
            scaled[:, j] = np.log1p(scaled[:, j])
    if np.isnan(scaled).any():  # over the present values
        mean, std = torch.tensor(np.nanmean(scaled, axis=0)), torch.tensor(np.maximum(np.nanstd(scaled, axis=0), 1e-6))
    else:
        mean, std = torch.tensor(scaled.mean(axis=0)), torch.tensor(np.maximum(scaled.std(axis=0), 1e-6))

    with _deterministic_torch(derived_seed(seed, 4)):
        model = CreditModel(mean, std, GAP_FEATURES if gaps else ())
        features = torch.from_numpy(x[:n_train])
        targets = torch.from_numpy(labels[:n_train])
        shuffle = torch.Generator().manual_seed(derived_seed(seed, 5))
        optimiser = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
        loss_fn = nn.CrossEntropyLoss()
        model.train()
        order, position = torch.randperm(n_train, generator=shuffle), 0
        for _ in range(TRAINING_STEPS):
            if position + BATCH_SIZE > n_train:
                order, position = torch.randperm(n_train, generator=shuffle), 0
            batch = order[position:position + BATCH_SIZE]
            position += BATCH_SIZE
            optimiser.zero_grad()
            loss_fn(model.logits(features[batch]), targets[batch]).backward()
            optimiser.step()
        model.eval()
        with torch.no_grad():
            train_loss = loss_fn(model.logits(features), targets).item()
            held_out = model(torch.from_numpy(x[n_train:]))[:, CLASSES.index("declined")].numpy()

    y_held_out = labels[n_train:]
    metrics = {
        "holdout_auc": round(roc_auc(y_held_out, held_out), 4),
        "true_risk_auc": round(roc_auc(y_held_out, default_logit(portfolio.iloc[n_train:])), 4),
        "decline_rate": round(float(labels.mean()), 4),
        "train_loss": round(train_loss, 4),
        "training_rows": TRAINING_ROWS,
    }
    return model, metrics
