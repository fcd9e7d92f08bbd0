"""The demo's synthetic UK consumer-credit portfolio: the features, the applications, their gaps, their outcomes.

The portfolio is generated from a few latent drivers (age, income, financial stress) so the features are
correlated the way a lender would expect: credit history and time in employment grow with age, retired and
unemployed applicants earn less, outright owners are older and mortgage holders richer, high card utilisation
comes with missed payments and a high debt-to-income ratio. Most applicants have no missed payments, exactly as
in real bureau data, which makes LIME's quartile bins of ``delinquencies_2y`` degenerate (all quartiles are 0).
The outcome (:func:`simulate_outcomes`) is a latent default risk with non-linear effects, interactions and
unobserved noise, so the model's held-out AUC is realistic (about 0.82), not perfect.

The files have the gaps real applications have (:func:`add_gaps`): credit utilisation is empty where the applicant
has no revolving credit (there is no limit to use), some applicants did not declare their income (the
self-employed and lower earners more often; an undeclared income adds to the risk, ``UNDECLARED_INCOME_RISK``), and
a few housing statuses were not recorded.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit

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


def derived_seed(seed: int, stream: int) -> int:
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
