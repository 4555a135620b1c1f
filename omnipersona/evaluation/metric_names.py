"""The names of the metrics an evaluation can produce, so that a job config that gates on a metric
no evaluation computes fails when it is read, not after training.

Static on purpose (a config is checked in well under a second, without torch): tests compute the
metrics with the real code and check their names against these lists.
"""
from __future__ import annotations

import difflib
import re

RECOGNITION = ("recognition_accuracy", "recognition_positive", "recognition_hard_negative", "recognition_random_negative")
# The held-out ingest epoch (`omnipersona.tasks` held-out checks): recognition, `<task>_accuracy`.
HELDOUT = RECOGNITION + ("vqa_accuracy", "text_qa_accuracy")
# The held-out eval-set harness (`omnipersona.evaluation.harness`), before any judge.
HARNESS = RECOGNITION + ("text_qa_accuracy", "vqa_accuracy", "parg_recall")
HARNESS_PATTERNS = (re.compile(r"text_qa_[a-z0-9_]+"),)  # one per text-QA group of an eval set
# The judges a config can name by short name, and what each adds (scores and feature cosines).
NAMED_JUDGES = {"world": ("generation_probe", "parg", "edit_applied", "edit_kept", "edit_score", "clip_i")}


def known_metrics(eval_sets: bool, judge: str | None) -> tuple[set[str], tuple[re.Pattern, ...]] | None:
    """(names, patterns) a job with this evaluation can compute; None when a plug-in judge may add any."""
    if judge is not None and judge not in NAMED_JUDGES:
        return None
    names = set(HELDOUT)
    patterns: tuple[re.Pattern, ...] = ()
    if eval_sets:
        names |= set(HARNESS) | set(NAMED_JUDGES.get(judge, ()))
        patterns = HARNESS_PATTERNS
    return names, patterns


def unknown_metric(name: str, eval_sets: bool, judge: str | None) -> str | None:
    """Why `name` cannot be computed (with the nearest known name), or None when it can."""
    known = known_metrics(eval_sets, judge)
    if known is None:
        return None
    names, patterns = known
    if name in names or any(p.fullmatch(name) for p in patterns):
        return None
    close = difflib.get_close_matches(name, sorted(names), n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    if not eval_sets and (name in HARNESS or any(name in m for m in NAMED_JUDGES.values())):
        hint += "it needs evaluation.eval_sets_uri (and a judge for picture metrics); "
    return f"no evaluation of this job computes it ({hint}known: {', '.join(sorted(names))})"
