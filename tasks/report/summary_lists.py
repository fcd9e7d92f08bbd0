"""The run summary's lists at any scale (summary layouts 2 and 3): the most severe decisions in review and the first
failures as short tables, counts by check and by stage, and a sentence naming the Parquet file with the full list
(``review.parquet``, ``failures.parquet``). The summary's pages do not grow with the number of decisions.

Layout 1 (runs recorded before it) listed up to ``[report] review_list_limit`` review ids and embedded every one
in the JSON attachment; such a run records no ``layout`` with its ``summary.pdf`` in the manifest and re-renders
with layout 1 (tasks/report/rerender.py), byte for byte.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from tasks.report.text import clean_text, fidelity_text, fill, threshold_text

#: The summary layout new runs record (``outputs["summary.pdf"]["layout"]`` in the manifest); absent: 1. Layout 3
#: is layout 2 claiming PDF/UA-1 besides PDF/A-3 (tagged runs; tests/report/test_render_conformance.py), so a
#: run recorded with layout 2 re-renders without the claim, byte for byte.
SUMMARY_LAYOUT = 3
#: The first layout whose summary claims PDF/UA-1 (when tagged).
ACCESSIBLE_LAYOUT = 3
#: Rows of each top-N table at most (``[report] review_list_limit`` can ask for fewer).
TOP = 20
REVIEW_FILE = "review.parquet"
FAILURES_FILE = "failures.parquet"


def summary_layout(manifest: Mapping[str, Any]) -> int:
    """The layout a published run's summary was rendered with: what its manifest records, else 1."""
    described = (manifest.get("outputs") or {}).get("summary.pdf") or {}
    return int(described.get("layout", 1)) if isinstance(described, Mapping) else 1


def _checks(reasons: pd.Series) -> pd.Series:
    """Number of failed checks in each ``review_reasons`` value (comma-separated, '' or null for none)."""
    text = reasons.fillna("").astype(str)
    return text.str.count(",") + (text != "").astype(int)


def review_top(firsts: pd.DataFrame, id_column: str, review_ids: Sequence[str], limit: int) -> pd.DataFrame:
    """The ``limit`` most severe decisions in review: most checks failed first, then the lowest fidelity, then
    the explanations' order. ``firsts``: one row per decision (rank 1). Columns: id, fidelity, review_reasons."""
    if "needs_review" in firsts.columns:
        flagged = firsts[firsts["needs_review"].fillna(False).astype(bool).to_numpy()]
    else:  # a table without the quality columns: the review ids given
        flagged = firsts[firsts[id_column].astype(str).isin(set(review_ids)).to_numpy()]
    reasons = flagged["review_reasons"] if "review_reasons" in flagged.columns else pd.Series("", index=flagged.index)
    fidelity = pd.to_numeric(flagged["fidelity"], errors="coerce").to_numpy(dtype=float)
    order = np.lexsort((np.arange(len(flagged)), np.nan_to_num(fidelity, nan=np.inf), -_checks(reasons).to_numpy()))
    top = order[: max(limit, 0)]
    return pd.DataFrame({"id": flagged[id_column].astype(str).to_numpy()[top], "fidelity": fidelity[top],
                         "review_reasons": reasons.fillna("").astype(str).to_numpy()[top]})


def review_section(firsts: pd.DataFrame, id_column: str, review_ids: Sequence[str], limit: int, min_fidelity: float,
                   texts: Mapping[str, Any]) -> dict[str, Any]:
    """The review table's rows and sentences, and what the JSON attachment records of it."""
    ts, tl = texts["summary"], texts["summary_lists"]
    count = (int(firsts["needs_review"].fillna(False).astype(bool).sum()) if "needs_review" in firsts.columns
             else len(review_ids))
    top = review_top(firsts, id_column, review_ids, min(limit, TOP))
    rows = [{"id": clean_text(i, limit=120),
             "fidelity": fidelity_text(f, min_fidelity) if np.isfinite(f) else "—",
             "checks": ", ".join(ts.get("gate_" + r.replace("-", "_"), clean_text(r, 40)) for r in g.split(",") if r)}
            for i, f, g in zip(top["id"], top["fidelity"], top["review_reasons"], strict=True)]
    return {
        "rows": rows,
        "intro": fill(tl["review_intro"], min=threshold_text(min_fidelity), shown=f"{len(rows):,}",
                      count=f"{count:,}") if rows else fill(ts["review_intro"], min=threshold_text(min_fidelity)),
        "file": fill(tl["review_file"], count=f"{count:,}") if count else None,
        "record": {"count": count, "file": REVIEW_FILE, "shown": [str(i) for i in top["id"]]},
    }


def failures_section(failures: Path | None, id_column: str, limit: int, texts: Mapping[str, Any]) -> dict[str, Any]:
    """The first failures (the file's order: the selection's), their count by stage, and the attachment's record.
    ``failures``: the run's ``failures.parquet`` (None or absent: none failed)."""
    tl = texts["summary_lists"]
    if failures is None or not Path(failures).is_file():
        table = pd.DataFrame({id_column: [], "stage": [], "error": []})
    else:
        table = pq.read_table(failures).to_pandas()
    count = len(table)
    by_stage = {str(k): int(v) for k, v in sorted(table["stage"].astype(str).value_counts().items())}
    top = table.head(min(limit, TOP))
    rows = [{"id": clean_text(str(i), limit=120), "stage": tl.get(f"stage_{s}", clean_text(str(s), 40)),
             "error": clean_text(str(e), limit=160)}
            for i, s, e in zip(top[table.columns[0]], top["stage"], top["error"], strict=True)]
    stages = ", ".join(fill(tl["stage_item"], stage=tl.get(f"stage_{s}", s), count=f"{n:,}")
                       for s, n in by_stage.items())
    return {
        "rows": rows,
        "intro": fill(tl["failures_intro"], count=f"{count:,}", stages=stages, shown=f"{len(rows):,}")
        if count else None,
        "file": fill(tl["failures_file"], count=f"{count:,}") if count else None,
        "record": {"count": count, "by_stage": by_stage, "file": FAILURES_FILE,
                   "shown": [str(i) for i in top[table.columns[0]]]},
    }
