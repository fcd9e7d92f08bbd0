"""Counting over a run's explanation rows for the run summary, in numbers rather than by hashing the ids again
and again: at a million decisions the table has three million rows, and each ``groupby`` on the id column costs
seconds. The decisions are numbered once (:func:`decision_codes`); the counts below use those numbers and give
what the pandas idioms they replace gave (``drop_duplicates``, ``groupby(...).nunique()``), so older runs'
summaries keep their bytes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def decision_codes(ids: pd.Series) -> np.ndarray:
    """One number per row, the same for the rows of one decision, in the order of first appearance (a missing
    id is a value of its own, as for ``drop_duplicates``)."""
    return pd.factorize(ids, use_na_sentinel=False)[0]


def first_rows(codes: np.ndarray) -> np.ndarray:
    """Positions of each decision's first row, ascending: what ``drop_duplicates(id)`` keeps. The codes count up
    in the order of first appearance, so a first row is one whose code exceeds every code before it."""
    if not len(codes):
        return np.zeros(0, dtype=np.int64)
    before = np.maximum.accumulate(codes)
    return np.flatnonzero(np.concatenate(([True], codes[1:] > before[:-1])))


def _distinct(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct values and their counts, by sorting (numpy's hash-based ``unique`` is slower here)."""
    ordered = np.sort(values)
    if not len(ordered):
        return ordered, np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    return ordered[starts], np.diff(np.append(starts, len(ordered)))


def distinct_per_group(codes: np.ndarray, factored: list[tuple[np.ndarray, pd.Index]],
                       valid: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Distinct decisions per combination of keys (``factored``: ``pd.factorize`` of each key column; rows with a
    missing key or ``valid`` false are left out, as ``groupby(keys)[id].nunique()`` leaves them): the
    combinations present, as one array of values per key, and their counts."""
    keep = valid.copy()
    for key_codes, _ in factored:
        keep &= key_codes >= 0
    combo = np.zeros(len(codes), dtype=np.int64)
    for key_codes, uniques in factored:
        combo = combo * max(len(uniques), 1) + key_codes
    span = int(codes.max()) + 1 if len(codes) else 1
    pairs, _ = _distinct(combo[keep] * span + codes[keep])
    groups, counts = _distinct(pairs // span)
    values = []
    rest = groups
    for _, uniques in reversed(factored):
        size = max(len(uniques), 1)
        values.append(np.asarray(uniques, dtype=object)[rest % size])
        rest = rest // size
    return values[::-1], counts
