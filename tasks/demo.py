"""The embedded demo: a synthetic UK consumer-credit portfolio and a small torch credit model.

``build_demo`` writes three files that ``config/demo.toml`` points at:

- ``decisions.parquet``: the loan applications to explain (ids, names, decision dates, the 12 features),
- ``reference.parquet``: the bank's "training sample" (features only) that LIME draws its statistics from,
- ``model.pt``: a TorchScript MLP mapping float32 ``[n, 12]`` (``FEATURES`` order, categoricals as codes) to
  the probabilities of ``["approved", "declined"]``.

Everything is deterministic for a given seed, runs in seconds on one CPU thread, never touches CUDA nor the
network, and is cached on disk: a ``demo.json`` records the generator version and the parameters, so a changed
generator (bump ``GENERATOR_VERSION``) or other parameters rebuild the files.

The portfolio is generated from a few latent drivers (age, income, financial stress) so the features are
correlated the way a lender would expect: credit history and time in employment grow with age, retired and
unemployed applicants earn less, outright owners are older and mortgage holders richer, high card utilisation
comes with missed payments and a high debt-to-income ratio. Most applicants have no missed payments, exactly as
in real bureau data, which makes LIME's quartile bins of ``delinquencies_2y`` degenerate (all quartiles are 0).
The outcome is a latent default risk with non-linear effects, interactions and unobserved noise, so the model's
held-out AUC is realistic (about 0.82), not perfect.

The files have the gaps real applications have (:func:`add_gaps`): credit utilisation is empty where the applicant
has no revolving credit (there is no limit to use), some applicants did not declare their income (the
self-employed and lower earners more often; an undeclared income adds to the risk, ``UNDECLARED_INCOME_RISK``), and
a few housing statuses were not recorded. The model imputes inside: a missing
number gets the training mean plus a missing indicator, a missing category no one-hot bit (docs/method.md,
"Missing values"). ``build_demo(gaps=False)`` writes the complete portfolio and the model without indicators.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.special import expit
from scipy.stats import rankdata
from torch import nn

#: Bump whenever the generator, the outcome or the model changes: cached demos then rebuild.
GENERATOR_VERSION = 2

CLASSES = ["approved", "declined"]
EMPLOYMENT_TYPES = ["salaried", "self_employed", "contract", "unemployed", "retired"]
HOUSING = ["own", "mortgage", "rent", "other"]
LOAN_PURPOSES = ["debt_consolidation", "home_improvement", "car", "education", "medical", "other"]

#: The demo's ``[[features]]``, in model-input order: the single source that config/demo.toml must match.
#: Labels follow config/reasons/en.toml. Ratios are fractions (0.42, not 42) and the renderer appends a unit
#: without scaling, so they have none; year counts carry "(years)" in the label because the reason sentences
#: already say "{value} years".
FEATURES: list[dict[str, Any]] = [
    {"name": "annual_income", "label": "Annual income", "kind": "numeric", "unit": "GBP", "decimals": 0},
    {"name": "debt_to_income", "label": "Debt-to-income ratio", "kind": "numeric", "decimals": 2},
    {"name": "credit_utilization", "label": "Credit utilisation", "kind": "numeric", "decimals": 2},
    {"name": "delinquencies_2y", "label": "Late or missed payments (last 2 years)", "kind": "numeric",
     "decimals": 0},
    {"name": "credit_history_years", "label": "Length of credit history (years)", "kind": "numeric",
     "decimals": 1},
    {"name": "recent_inquiries_6m", "label": "Credit searches (last 6 months)", "kind": "numeric", "decimals": 0},
    {"name": "loan_amount", "label": "Amount requested", "kind": "numeric", "unit": "GBP", "decimals": 0},
    {"name": "employment_years", "label": "Time in employment (years)", "kind": "numeric", "decimals": 1},
    {"name": "open_accounts", "label": "Open credit accounts", "kind": "numeric", "decimals": 0},
    {"name": "employment_type", "label": "Employment status", "kind": "categorical",
     "categories": EMPLOYMENT_TYPES},
    {"name": "housing", "label": "Housing status", "kind": "categorical", "categories": HOUSING},
    {"name": "loan_purpose", "label": "Purpose of the loan", "kind": "categorical", "categories": LOAN_PURPOSES},
]
FEATURE_NAMES: list[str] = [f["name"] for f in FEATURES]
NUMERIC_FEATURES: list[str] = [f["name"] for f in FEATURES if f["kind"] == "numeric"]
CATEGORICAL_FEATURES: list[str] = [f["name"] for f in FEATURES if f["kind"] == "categorical"]
#: Heavy-tailed money columns: the model takes their log1p before standardising.
MONEY_FEATURES = ("annual_income", "loan_amount")

#: Gaps (:func:`add_gaps`): income not declared (self-employed, others), housing status not recorded.
UNDECLARED_INCOME = (0.10, 0.025)
UNRECORDED_HOUSING = 0.02
#: Log-odds of a decline added for an undeclared income (the lender cannot verify affordability).
UNDECLARED_INCOME_RISK = 0.8
#: Numeric features that can be missing in the demo: the model gets a missing indicator for each.
GAP_FEATURES = ("annual_income", "credit_utilization")

#: The decisions are taken over one working week (the explanation run is on Sunday 22 Nov 2026).
FIRST_DECISION_DAY = date(2026, 11, 16)
DECISION_DAYS = 5

TRAINING_ROWS = 20_000
HOLDOUT_SHARE = 0.2
TRAINING_STEPS = 200
BATCH_SIZE = 1024
LEARNING_RATE = 3e-3
WEIGHT_DECAY = 1e-2
HIDDEN = 64

_MEDIAN_INCOME = 38_000.0

# Names: (given names, family names, weight). Family names stay within their group so full names are coherent.
_NAME_GROUPS: list[tuple[list[str], list[str], float]] = [
    (
        ["Oliver", "Amelia", "George", "Olivia", "Harry", "Isla", "Jack", "Emily", "Thomas", "Sophie", "James",
         "Charlotte", "William", "Grace", "Daniel", "Lucy", "Matthew", "Hannah", "Samuel", "Ella", "Zoë", "Chloe",
         "Renée", "Anna-Lena", "Margaret", "Peter", "Susan", "David", "Linda", "Michael"],
        ["Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Johnson", "Davies", "Robinson", "Wright",
         "Thompson", "Evans", "Walker", "White", "Roberts", "Green", "Hall", "Wood", "Jackson", "Clarke", "Brontë",
         "Fitzgerald-Montgomery", "Ashworth", "Pemberton"],
        0.58,
    ),
    (
        ["Siobhán", "Aoife", "Seán", "Niamh", "Ciarán", "Eilidh", "Rhys", "Carys", "Iain", "Mairead", "Dafydd"],
        ["O'Connor", "Murphy", "O'Brien", "MacDonald", "Campbell", "O'Sullivan", "Llewellyn", "Jones", "Kelly"],
        0.1,
    ),
    (
        ["Aarav", "Priya", "Mohammed", "Aisha", "Rohan", "Fatima", "Imran", "Anjali", "Harpreet", "Zainab"],
        ["Patel", "Khan", "Singh", "Ahmed", "Sharma", "Hussain", "Rahman", "Chaudhry", "Gill", "Iqbal"],
        0.12,
    ),
    (
        ["Łukasz", "Agnieszka", "Piotr", "Małgorzata", "José", "María", "João", "Inês", "Björn", "Chloé", "François",
         "Jürgen"],
        ["Wójcik", "Mazur", "Nowak", "Núñez", "García", "Fernández", "Gonçalves", "Åkesson", "Lefèvre", "Müller",
         "Łuczak"],
        0.07,
    ),
    (
        ["Chinedu", "Adaeze", "Kwame", "Abena", "Oluwaseun", "Folake", "Kofi", "Amara"],
        ["Okafor", "Mensah", "Adeyemi", "Boateng", "Okonkwo", "Asante", "Eze", "Owusu"],
        0.06,
    ),
]
# Names written in their own script, family name first, used whole.
_NATIVE_SCRIPT_NAMES = ["王芳", "李娜", "张伟", "陈静", "刘洋", "黄敏", "김민준"]
_NATIVE_SCRIPT_SHARE = 0.015
#: The first applicants of every portfolio, so the reports' Unicode handling is exercised on page one.
SHOWCASE_NAMES = ["Zoë Brontë", "José Núñez", "王芳"]


@dataclass(frozen=True)
class DemoArtifacts:
    """The demo's input files (what config/demo.toml points at)."""

    decisions: Path
    reference: Path
    model: Path


def default_demo_dir() -> Path:
    """``$LIMELIGHT_DEMO_DIR`` if set, else ``<repo root>/.cache/demo`` (what config/demo.toml expects)."""
    override = os.environ.get("LIMELIGHT_DEMO_DIR")
    if override:
        return Path(override).expanduser()
    return Path(__file__).resolve().parent.parent / ".cache" / "demo"


# --------------------------------------------------------------------------------------------- generator


def _derived_seed(seed: int, stream: int) -> int:
    """An independent seed for one stream (reference sample, training sample, outcomes, torch init)."""
    return int(np.random.SeedSequence([seed, stream]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _pick(rng: np.random.Generator, scores: np.ndarray) -> np.ndarray:
    """One index per row, with probabilities softmax(scores) (Gumbel-max trick)."""
    return np.argmax(scores + rng.gumbel(size=scores.shape), axis=1)


def _names(rng: np.random.Generator, n: int) -> np.ndarray:
    weights = np.array([w for _, _, w in _NAME_GROUPS])
    group = rng.choice(len(_NAME_GROUPS), size=n, p=weights / weights.sum())
    given_u, family_u = rng.random(n), rng.random(n)
    names = np.empty(n, dtype=object)
    for g, (given, family, _) in enumerate(_NAME_GROUPS):
        rows = group == g
        names[rows] = [
            f"{given[int(a * len(given))]} {family[int(b * len(family))]}"
            for a, b in zip(given_u[rows], family_u[rows], strict=True)
        ]
    native = rng.random(n) < _NATIVE_SCRIPT_SHARE
    names[native] = rng.choice(_NATIVE_SCRIPT_NAMES, size=int(native.sum()))
    shown = min(n, len(SHOWCASE_NAMES))
    names[:shown] = SHOWCASE_NAMES[:shown]
    return names


def generate_portfolio(n: int, seed: int) -> pd.DataFrame:
    """``n`` synthetic loan applications, with the raw columns stored in the demo's Parquet files.

    Columns: ``customer_id`` ("C-000123"), ``full_name``, ``decision_date`` (``datetime.date``), then the
    ``FEATURES`` in order: numeric ones as float64, categorical ones as strings.
    """
    if not 1 <= n <= 999_999:
        raise ValueError(f"generate_portfolio: n must be between 1 and 999999, the 6-digit ids (got {n})")
    rng = np.random.default_rng(seed)

    # Latent drivers. Age and financial stress are not features: the model only sees their traces.
    age = np.minimum(19.0 + rng.gamma(4.5, 5.6, n), 85.0)
    young, old = age < 30, age >= 60

    employment_scores = np.column_stack([
        np.full(n, 1.6),                                       # salaried
        -0.5 + 0.02 * (age - 40),                              # self-employed: more common later in life
        -0.2 - 0.03 * (age - 40),                              # contract: younger
        -1.6 + 0.6 * young,                                    # unemployed
        np.where(age >= 50, 0.6 * (age - 62.0), -12.0),        # retired: around the state pension age
    ])
    employment = _pick(rng, employment_scores)
    self_employed, contract, unemployed, retired = (employment == k for k in range(1, 5))
    working = ~(unemployed | retired)

    income_shift = np.select(
        [self_employed, contract, unemployed, retired], [0.02, 0.1, -1.05, -0.4], default=0.0
    )
    income_noise = np.where(self_employed, 0.6, 0.38)
    log_income = (
        np.log(_MEDIAN_INCOME) + 0.12 - 0.0006 * (age - 50.0) ** 2 + income_shift
        + income_noise * rng.standard_normal(n)
    )
    income = np.round(np.clip(np.exp(log_income), 6_000, 450_000), -2)
    income_z = (np.log(income) - np.log(_MEDIAN_INCOME)) / 0.5

    stress = rng.standard_normal(n) - 0.35 * income_z + 0.25 * young + 0.6 * unemployed - 0.3 * retired

    # Time in current employment: bounded by the working life, short for contractors, 0 when not working.
    tenure_mean = np.select([self_employed, contract], [1.2, 0.35], default=1.0) * (0.5 + 0.25 * (age - 18.0))
    tenure = rng.gamma(3.0, tenure_mean / 3.0)
    employment_years = np.where(working, np.round(np.minimum(tenure, age - 18.0), 1), 0.0)

    # Credit history grows with age; a few thin files (new to the UK, new to credit).
    thin = rng.random(n) < 0.07
    history = np.where(thin, rng.uniform(0.0, 3.0, n), (age - 18.0) * rng.beta(6.0, 2.0, n))
    credit_history_years = np.round(np.clip(history, 0.0, age - 17.0), 1)

    housing = _pick(rng, np.column_stack([
        -1.2 + 0.13 * (age - 45.0) + 0.25 * income_z,                      # own outright: older
        0.55 + 0.8 * income_z - 0.0035 * (age - 42.0) ** 2,               # mortgage: richer, middle-aged
        0.35 - 0.45 * income_z + 0.2 * stress,                             # rent
        0.2 - 0.12 * np.maximum(age - 24.0, 0.0) - 0.3 * income_z,         # other: living with family
    ]))
    owner, mortgage = housing == 0, housing == 1

    purpose = _pick(rng, np.column_stack([
        np.log(0.35) + 0.35 * stress,                                      # debt consolidation
        np.log(0.14) + np.where(owner | mortgage, 1.0, -1.8),              # home improvement
        np.full(n, np.log(0.2)),                                           # car
        np.log(0.05) + np.where(young, 1.3, np.where(age > 45, -1.5, 0.0)),  # education
        np.log(0.05) + 0.6 * old,                                          # medical
        np.full(n, np.log(0.18)),                                          # other
    ]))
    typical_amount = np.array([0.0, 14_000.0, 11_000.0, 8_000.0, 3_500.0, 5_000.0])[purpose]
    typical_amount = np.where(purpose == 0, 0.22 * income, typical_amount * (income / _MEDIAN_INCOME) ** 0.35)
    loan_amount = np.clip(np.round(typical_amount * np.exp(0.45 * rng.standard_normal(n)) / 250.0) * 250.0,
                          1_000.0, 50_000.0)

    open_rate = (1.0 + 1.9 * np.sqrt(credit_history_years) + 0.8 * mortgage) * np.exp(0.12 * stress)
    open_accounts = np.minimum(rng.poisson(open_rate), 30).astype(np.float64)

    utilisation = 1.25 * expit(-0.85 + 0.95 * stress + 0.75 * rng.standard_normal(n))
    no_revolving = (open_accounts == 0) | (rng.random(n) < 0.05)
    credit_utilization = np.where(no_revolving, 0.0, np.round(np.minimum(utilisation, 1.2), 3))

    dti = 0.9 * expit(-1.35 + 0.45 * stress - 0.3 * income_z + 0.55 * mortgage + 0.5 * rng.standard_normal(n))
    debt_to_income = np.round(np.clip(dti, 0.0, 0.9), 3)

    # Missed payments: overdispersed counts, mostly 0, driven by stress and maxed-out cards.
    missed_rate = np.exp(-2.45 + 0.9 * stress + 0.9 * (credit_utilization > 0.9)) * rng.gamma(0.7, 1 / 0.7, n)
    delinquencies_2y = np.minimum(rng.poisson(missed_rate), 12).astype(np.float64)

    inquiry_rate = np.exp(-0.25 + 0.35 * stress + 0.3 * young + 0.4 * (credit_history_years < 2.0))
    recent_inquiries_6m = np.minimum(rng.poisson(inquiry_rate * rng.gamma(2.0, 0.5, n)), 15).astype(np.float64)

    ids = np.sort(rng.choice(999_999, size=n, replace=False) + 1)
    days = np.sort(rng.integers(0, DECISION_DAYS, n))
    day_dates = [FIRST_DECISION_DAY + timedelta(days=int(d)) for d in range(DECISION_DAYS)]

    return pd.DataFrame({
        "customer_id": [f"C-{i:06d}" for i in ids],
        "full_name": _names(rng, n).astype(str),
        "decision_date": [day_dates[d] for d in days],
        "annual_income": income,
        "debt_to_income": debt_to_income,
        "credit_utilization": credit_utilization,
        "delinquencies_2y": delinquencies_2y,
        "credit_history_years": credit_history_years,
        "recent_inquiries_6m": recent_inquiries_6m,
        "loan_amount": loan_amount,
        "employment_years": employment_years,
        "open_accounts": open_accounts,
        "employment_type": np.asarray(EMPLOYMENT_TYPES)[employment],
        "housing": np.asarray(HOUSING)[housing],
        "loan_purpose": np.asarray(LOAN_PURPOSES)[purpose],
    })


def add_gaps(portfolio: pd.DataFrame, seed: int, showcase: bool = False) -> pd.DataFrame:
    """The portfolio with the gaps of real applications (a copy): ``credit_utilization`` empty where there is no
    revolving credit (stored as 0.0 by :func:`generate_portfolio`), ``annual_income`` not declared by
    ``UNDECLARED_INCOME`` of the self-employed and of the others on average, lower earners more often (so the gap
    says something about the applicant, as it does in real data), ``housing`` not recorded for
    ``UNRECORDED_HOUSING``. ``showcase``: the second applicant did not declare an income either (a gap among the
    first decisions, which the small end-to-end tests explain)."""
    rng = np.random.default_rng(seed)
    out = portfolio.copy()
    out["credit_utilization"] = out["credit_utilization"].where(out["credit_utilization"] > 0.0, np.nan)
    self_employed = (out["employment_type"] == "self_employed").to_numpy()
    income_z = (np.log(out["annual_income"].to_numpy()) - np.log(_MEDIAN_INCOME)) / 0.5
    undeclared = rng.random(len(out)) < np.where(self_employed, *UNDECLARED_INCOME) * 2 * expit(-1.5 * income_z)
    if showcase and len(out) > 1:
        undeclared[1] = True
    out["annual_income"] = out["annual_income"].where(~undeclared, np.nan)
    out["housing"] = out["housing"].where(rng.random(len(out)) >= UNRECORDED_HOUSING, None)
    return out


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


def default_logit(portfolio: pd.DataFrame) -> np.ndarray:
    """The ground-truth latent risk (log-odds of a decline) of each application, before unobserved noise."""
    p = portfolio
    dti = p["debt_to_income"].to_numpy()
    util = p["credit_utilization"].to_numpy()
    missed = p["delinquencies_2y"].to_numpy()
    history = p["credit_history_years"].to_numpy()
    inquiries = p["recent_inquiries_6m"].to_numpy()
    income = p["annual_income"].to_numpy()
    loan_to_income = p["loan_amount"].to_numpy() / income
    employment_years = p["employment_years"].to_numpy()
    open_accounts = p["open_accounts"].to_numpy()
    employment = p["employment_type"].map(
        {"salaried": 0.0, "self_employed": 0.25, "contract": 0.3, "unemployed": 1.0, "retired": -0.15}
    )
    housing = p["housing"].map({"own": -0.35, "mortgage": -0.1, "rent": 0.2, "other": 0.3})
    purpose = p["loan_purpose"].map({
        "debt_consolidation": 0.15, "home_improvement": -0.2, "car": -0.1, "education": 0.1, "medical": 0.25,
        "other": 0.1,
    })
    thin_file = history < 3.0
    return (
        -3.3
        + 2.2 * dti + 4.0 * np.maximum(dti - 0.45, 0.0)              # affordability, steeper past 45 %
        + 1.1 * util + 1.6 * np.maximum(util - 0.9, 0.0)             # maxed-out cards
        + 2.2 * dti * util                                           # both at once is worse than the sum
        + 1.2 * (missed >= 1) + 0.3 * np.minimum(missed, 5.0)        # any missed payment is a step
        + 0.12 * inquiries + 0.3 * inquiries * thin_file            # credit hungry with a thin file
        + 0.6 * (history < 1.5)
        - 0.55 * np.log(income / _MEDIAN_INCOME)
        + 1.8 * np.maximum(loan_to_income - 0.35, 0.0)
        - 0.06 * np.minimum(employment_years, 8.0)
        + 0.08 * np.maximum(open_accounts - 10.0, 0.0) + 0.3 * (open_accounts <= 1)
        + employment.to_numpy(dtype=np.float64) + housing.to_numpy(dtype=np.float64)
        + purpose.to_numpy(dtype=np.float64)
    )


def simulate_outcomes(portfolio: pd.DataFrame, seed: int, undeclared: np.ndarray | None = None) -> np.ndarray:
    """Observed outcomes (1 = "declined"-worthy, 0 = "approved"): the latent risk plus unobserved noise, plus
    ``UNDECLARED_INCOME_RISK`` for the applicants who did not declare their income (``undeclared``, bool [n]):
    an affordability the lender cannot verify."""
    rng = np.random.default_rng(seed)
    logit = default_logit(portfolio) + 0.35 * rng.standard_normal(len(portfolio))
    if undeclared is not None:
        logit = logit + UNDECLARED_INCOME_RISK * undeclared
    return (rng.random(len(portfolio)) < expit(logit)).astype(np.int64)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half)."""
    labels = np.asarray(labels).astype(bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        raise ValueError("roc_auc needs both classes")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


# ------------------------------------------------------------------------------------------------- model


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
    portfolio = generate_portfolio(TRAINING_ROWS, _derived_seed(seed, 2))
    observed = add_gaps(portfolio, _derived_seed(seed, 6)) if gaps else portfolio
    undeclared = observed["annual_income"].isna().to_numpy() if gaps else None
    labels = simulate_outcomes(portfolio, _derived_seed(seed, 3), undeclared)
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

    with _deterministic_torch(_derived_seed(seed, 4)):
        model = CreditModel(mean, std, GAP_FEATURES if gaps else ())
        features = torch.from_numpy(x[:n_train])
        targets = torch.from_numpy(labels[:n_train])
        shuffle = torch.Generator().manual_seed(_derived_seed(seed, 5))
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


# ------------------------------------------------------------------------------------------------- files


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same folder, then rename: readers never see a partial file."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        tmp.chmod(0o644)  # mkstemp makes 0600 files; workers running as another user must read them
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    _atomic_write(path, lambda tmp: frame.to_parquet(tmp, engine="pyarrow", index=False))


def _save_torchscript(model: nn.Module, path: Path) -> None:
    """Script and save ``model``; the bytes depend on the weights only (same weights, same sha256)."""
    model.requires_grad_(False)  # callers that forget torch.no_grad() build no autograd graph
    buffer = io.BytesIO()  # the zip's folder is named after the file: saving via the temp name would vary
    with warnings.catch_warnings():
        # torch 2.13 marks torch.jit deprecated; TorchScript is still the contract's portable .pt format.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(model), buffer)
    _atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))


def _cache_key(seed: int, n_decisions: int, n_reference: int, gaps: bool) -> dict[str, int]:
    return {"generator_version": GENERATOR_VERSION, "seed": seed, "n_decisions": n_decisions,
            "n_reference": n_reference, "gaps": int(gaps)}


def _cached(directory: Path, artifacts: DemoArtifacts, key: dict[str, int]) -> bool:
    """True when all three files exist and demo.json says they come from this generator and parameters."""
    if not all(p.is_file() for p in (artifacts.decisions, artifacts.reference, artifacts.model)):
        return False
    try:
        recorded = json.loads((directory / "demo.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(recorded, dict) and all(recorded.get(k) == v for k, v in key.items())


def build_demo(
    directory: Path | None = None,
    *,
    n_decisions: int = 400,
    n_reference: int = 5000,
    seed: int = 7,
    force: bool = False,
    gaps: bool = True,
) -> DemoArtifacts:
    """Write (or reuse) the demo's decisions, reference sample and model in ``directory``.

    ``directory`` defaults to :func:`default_demo_dir`. The files are reused without any work when they exist
    and ``demo.json`` matches the generator version and the parameters, unless ``force``. ``gaps``: the
    decisions and the reference have missing values (:func:`add_gaps`) and the model handles them. Writes are atomic and
    the result is a pure function of the parameters, so concurrent builds are harmless.
    """
    if n_decisions < 1 or n_reference < 1:
        raise ValueError(f"build_demo: n_decisions and n_reference must be positive "
                         f"(got {n_decisions}, {n_reference})")
    directory = Path(directory) if directory is not None else default_demo_dir()
    artifacts = DemoArtifacts(
        decisions=directory / "decisions.parquet",
        reference=directory / "reference.parquet",
        model=directory / "model.pt",
    )
    key = _cache_key(seed, n_decisions, n_reference, gaps)
    if not force and _cached(directory, artifacts, key):
        return artifacts

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "demo.json").unlink(missing_ok=True)  # the files are not a consistent set until the end

    decisions = generate_portfolio(n_decisions, seed)
    reference = generate_portfolio(n_reference, _derived_seed(seed, 1))[FEATURE_NAMES]
    if gaps:
        decisions = add_gaps(decisions, _derived_seed(seed, 7), showcase=True)
        reference = add_gaps(reference, _derived_seed(seed, 8))
    model, metrics = train_model(seed, gaps)
    with torch.no_grad():
        declined = model(torch.from_numpy(model_inputs(decisions)))[:, CLASSES.index("declined")].numpy()

    _write_parquet(decisions, artifacts.decisions)
    _write_parquet(reference, artifacts.reference)
    _save_torchscript(model, artifacts.model)
    record = {
        **key,
        "features": FEATURE_NAMES,
        "classes": CLASSES,
        "metrics": {**metrics, "decisions_declined_at_0.5": round(float((declined >= 0.5).mean()), 4)},
        "torch": torch.__version__,
    }
    _atomic_write(directory / "demo.json",
                  lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8"))
    return artifacts
