"""Prohibited bases: which features a config marks protected, and which names or labels suggest one unmarked.

Regulation B (12 CFR 1002.6(b)) keeps marital status, sex, race, colour, religion, national origin and the receipt
of public assistance out of any credit scoring system, and allows age in an empirically derived system only where
an elderly applicant (62 or older, 1002.2(o)) is not assigned a negative factor or value (1002.6(b)(2)(ii)). A
feature marked ``protected`` is never stated on a letter; docs/reports.md, "Prohibited bases".
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from tasks.inputs.config import Config, FeatureConfig

PROTECTED_GATE = "protected-basis"
"""The review gate of a decision where a protected feature would rank among its principal reasons."""

#: Prohibited basis -> words of a feature's name or label that suggest it (whole words, lower case).
BASES: dict[str, tuple[str, ...]] = {
    "marital status": ("marital", "married", "marriage", "spouse", "spousal", "divorced", "widowed",
                       "personal status"),
    "sex": ("sex", "gender", "female", "male"),
    "race": ("race", "racial", "ethnic", "ethnicity"),
    "colour": ("colour", "color", "skin"),
    "religion": ("religion", "religious", "faith", "creed"),
    "national origin": ("nationality", "national", "citizenship", "citizen", "foreign", "immigrant", "immigration",
                        "migrant", "ethnic origin"),
    "public assistance": ("welfare", "assistance", "tanf", "snap", "medicaid", "benefits"),
    "age": ("age", "aged", "dob", "birth", "birthdate", "birthday", "born", "elderly"),
}


def _words(text: str) -> list[str]:
    """'personal.status.and.sex' -> [personal, status, and, sex]; 'DateOfBirth' -> [date, of, birth]."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", text)
    return [w for w in re.split(r"[^0-9A-Za-z]+", spaced.lower()) if w]


def suggested_basis(name: str, label: str = "") -> str | None:
    """The prohibited bases a feature's name or label suggests, e.g. "marital status, sex", or None. A cue of two
    words matches them in sequence (German credit's ``personal_status_and_sex`` is marital status and sex)."""
    texts = [" ".join(_words(name)), " ".join(_words(label))]
    found = [basis for basis, cues in BASES.items()
             if any(f" {cue} " in f" {text} " for cue in cues for text in texts)]
    return ", ".join(found) or None


def suggested_mark(basis: str) -> str:
    """The TOML line that marks a feature of that basis: ``protected = "age"`` for age, else ``protected = true``."""
    return 'protected = "age"' if basis == "age" else "protected = true"  # age with another basis: never stated


def unmarked_warnings(features: Sequence[FeatureConfig], source: object = "config") -> list[str]:
    """One line per feature whose name or label suggests a prohibited basis and that sets no ``protected``."""
    lines = []
    for number, feature in enumerate(features, start=1):
        if feature.protected is not None:
            continue
        basis = suggested_basis(feature.name, feature.label)
        if basis is not None:
            lines.append(f"{source}: [[features]] #{number} {feature.name!r} (label {feature.label!r}): the name "
                         f"suggests a prohibited basis ({basis}); mark it {suggested_mark(basis)}, or "
                         "protected = false if it is not one (docs/reports.md, Prohibited bases)")
    return lines


def protected_features(config: Config) -> list[FeatureConfig]:
    """The features a config marks protected (true or "age"), in its order."""
    return [f for f in config.features if f.protected]


def review_gates(config: Config, base: Sequence[str]) -> tuple[str, ...]:
    """The review gates a run reports: ``base`` and, in a run with protected features, the protected-basis gate.
    Runs without them (every run before this gate) keep exactly ``base``, so their summaries keep their bytes."""
    return (*base, PROTECTED_GATE) if protected_features(config) else tuple(base)
