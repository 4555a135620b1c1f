"""The evaluate stage's benchmark: a concept's held-out eval set, scored by the library's harness.

Where eval sets come from and who judges the pictures are plug-ins the job config names
(`evaluation.eval_set_reader`, `evaluation.judge`; see `omnipersona.evaluation.plugins`), loaded
when the stage runs: this module knows nothing of what they read or judge.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from omnipersona.evaluation import EvalOptions, ImageJudge, evaluate_concept
from omnipersona.evaluation.plugins import load_plugin
from omnipersona.identity import ConceptId
from pipelines.storage import StorageConfig, filesystem_for

if TYPE_CHECKING:
    from pipelines.config import EvaluationSettings


def load_judge(settings: EvaluationSettings, image_size: int, log: Callable[[str], None] = print) -> ImageJudge | None:
    """The configured judge of generated pictures, made once per job; None without eval sets or judge."""
    if not (settings.eval_sets_uri and settings.judge):
        return None
    return load_plugin("judge", settings.judge)(image_size, log)


def benchmark_metrics(
    settings: EvaluationSettings, storage: StorageConfig, persona, concept: ConceptId, image_size: int, judge: ImageJudge | None = None
) -> dict[str, float]:
    """The harness' metrics on `<eval_sets_uri>/<tenant>/<concept>` ({} when the concept has no eval set there)."""
    if not settings.eval_sets_uri:
        return {}
    fs, root = filesystem_for(f"{settings.eval_sets_uri.rstrip('/')}/{concept.key}", storage)
    read = load_plugin("eval_set_reader", settings.eval_set_reader)
    eval_set = read(fs, root, concept, EvalOptions(image_size=image_size))
    if eval_set is None:
        return {}
    return evaluate_concept(persona, eval_set, judge)
