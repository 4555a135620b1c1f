"""Held-out evaluation of personalised concepts (OmniPBench-style metrics) and the promotion gate.

No Ray or MLflow here: the job's evaluate stage calls these functions and logs what they return.

    from pipelines.evaluate import ensure_probe, eval_set_from_manifest, evaluate_concept, WORLD_BASE_GATE
    probe = ensure_probe()
    metrics = evaluate_concept(persona, eval_set_from_manifest("<eval_root>/<tenant>/<concept>"), probe)
    decision = WORLD_BASE_GATE.evaluate(metrics)
"""
from .gate import WORLD_BASE_GATE, EvaluationGate, GateResult, gate_concepts
from .harness import (
    ConceptEvalSet,
    EvalOptions,
    FeatureExtractor,
    aggregate,
    eval_set_from_manifest,
    eval_set_from_world,
    evaluate_concept,
)
from .probe import ProbeConfig, WorldProbe, ensure_probe, probe_accuracy

__all__ = [
    "WORLD_BASE_GATE", "ConceptEvalSet", "EvalOptions", "EvaluationGate", "FeatureExtractor", "GateResult",
    "ProbeConfig", "WorldProbe", "aggregate", "ensure_probe", "eval_set_from_manifest", "eval_set_from_world",
    "evaluate_concept", "gate_concepts", "probe_accuracy",
]
