"""Held-out evaluation of personalised concepts (OmniPBench-style metrics), free of any data source.

    from omnipersona.evaluation import evaluate_concept
    metrics = evaluate_concept(persona, eval_set, judge)

Eval sets and picture judges plug in (`plugins.py`): the procedural world's live in
`omnipersona.world.eval_sets` and `omnipersona.pretrain.probe`. Torch-free.
"""
from .eval_set import QA, ConceptEvalSet, EditCase, EvalOptions, PargCase, fill_name
from .harness import FeatureExtractor, GeneratedImages, ImageJudge, aggregate, evaluate_concept, unchanged_edit_metrics
from .metrics import bootstrap_interval

__all__ = [
    "QA", "ConceptEvalSet", "EditCase", "EvalOptions", "FeatureExtractor", "GeneratedImages", "ImageJudge",
    "PargCase", "aggregate", "bootstrap_interval", "evaluate_concept", "fill_name", "unchanged_edit_metrics",
]
