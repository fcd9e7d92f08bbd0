"""A letter after human review: the context and attachment of tasks/report/letter.py revised by a resolution.

- **accept**: the letter keeps the explanation's reasons; the banner goes, the status reads "reviewed by staff", and
  a note says which checks failed and that a member of staff confirmed the reasons on the review date.
- **override**: the reasons the reviewer gave replace the explanation's, in the reviewer's order, each with the
  customer's own value and a sentence that says it was established on review. The chart, the favourable factors
  and the fidelity section describe the automated explanation the reviewer set aside, so they are left out; the
  annex keeps the factors as computed (marked as replaced) for the audit.

The reviewer's id and justification are not printed: Regulation B asks the notice for the specific principal
reasons (12 CFR 1002.9(b)(2)); why a reviewer changed them is the creditor's record, kept in the review log
(``review-log.jsonl``) that the manifest covers (docs/review.md). The letter depends only on the run, the
decision and the resolution (never on when it was applied), so ``limelight rerender`` rebuilds it byte for byte.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tasks.report.letter import RunTexts, _is_missing
from tasks.report.review import Resolution
from tasks.report.text import clean_text, display_value, fill


def _reviewed_reasons(resolution: Resolution, values: Mapping[str, Any], shared: RunTexts,
                      adverse: bool) -> list[dict[str, Any]]:
    texts, language = shared.texts, shared.config.report.language
    tr = texts["review"]
    reasons = []
    for rank, name in enumerate(resolution.reasons, start=1):
        feature = shared.features[name]
        entry = shared.catalog.features.get(name)
        label = clean_text(entry.label if entry is not None and entry.label else feature.label, limit=120)
        raw = values.get(name)
        value = texts["customer"]["not_provided"] if _is_missing(raw) else display_value(raw, feature, entry)
        in_sentence = label[0].lower() + label[1:] if language == "en" and label[1:2].islower() else label
        sentence = fill(tr["reason_adverse" if adverse else "reason"], label=in_sentence, value=value,
                        outcome=shared.outcome_noun)
        reasons.append({"rank": rank, "feature": name, "label": label, "value": value,
                        "raw_value": None if _is_missing(raw) else clean_text(raw, limit=200),
                        "sentence": clean_text(sentence, limit=1200)})
    return reasons


def revise(context: dict[str, Any], attachment: dict[str, Any], resolution: Resolution,
           values: Mapping[str, Any], shared: RunTexts) -> None:
    """Revise one letter's ``context`` and ``attachment`` (in place) for ``resolution``. ``values``: the decision's
    own feature values (the decisions file's columns), for the reasons an override names."""
    tc, tr = shared.texts["customer"], shared.texts["review"]
    date = resolution.time[:10]
    failed = "; ".join(tc.get("reason_" + g.replace("-", "_"), g)  # the failed checks, as the banner named them
                       for g in attachment["quality"]["review_reasons"] or ["low-fidelity"])
    adverse = any(f["role"] != "factor" for f in context["factors"]) or bool(context["fewer_note"])
    override = resolution.action == "override"
    reasons = _reviewed_reasons(resolution, values, shared, adverse) if override else []
    context["needs_review"] = False
    context["reviewed"] = {
        "override": override,
        "status": tr["status"],
        "heading": tr["heading"],
        "note": fill(tr["note_override" if override else "note_accept"], checks=failed, date=date),
        "annex": fill(tr["annex_override"], date=date, features="; ".join(r["label"] for r in reasons)),
    }
    record: dict[str, Any] = {"action": resolution.action, "time": resolution.time, "log": "review-log.jsonl"}
    if override:
        context["reasons"] = reasons
        context["favourable"] = []
        context["fewer_note"] = None
        context["tie_note"] = None  # a tie between the explanation's reasons: not the reviewer's
        context["reasons_intro"] = fill(tr["intro_adverse" if adverse else "intro"], outcome=shared.outcome_noun)
        record["reasons"] = [{"rank": r["rank"], "feature": r["feature"], "label": r["label"],
                              "value": r["raw_value"], "reason": r["sentence"]} for r in reasons]
    if context.get("withheld") and not override:  # the statement is final now: the note no longer promises review
        context["fewer_note"] = fill(tc["reasons_withheld_reviewed"], count=len(context["reasons"]))
    attachment["review"] = record
