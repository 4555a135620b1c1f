"""The promotion gate over evaluation metrics, with the schema of `pipelines.register.GateConfig`.

`EvaluationGate` has the same `minimums` / `maximums` fields as the registry's `GateConfig` (so
one YAML block configures both: `GateConfig(**gate.model_dump(include={"minimums", "maximums"}))`),
plus `minimum_gains`: how far a concept must beat its untrained-tokens baseline on a metric. It
is kept here, free of MLflow, so the gate's arithmetic is unit-testable.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field


class GateResult(BaseModel):
    passed: bool
    reasons: list[str] = Field(default_factory=list)


class EvaluationGate(BaseModel):
    """Every listed metric must be present, finite and within its bound.

    YAML: ``{minimums: {recognition_accuracy: 0.7}, maximums: {}, minimum_gains: {text_qa_accuracy: 0.2}}``
    An empty gate passes everything.
    """

    model_config = ConfigDict(extra="forbid")
    minimums: dict[str, float] = Field(default_factory=dict)  # metric >= bound
    maximums: dict[str, float] = Field(default_factory=dict)  # metric <= bound
    minimum_gains: dict[str, float] = Field(default_factory=dict)  # metric - baseline[metric] >= gain

    def evaluate(self, metrics: Mapping[str, float], baseline: Mapping[str, float] | None = None) -> GateResult:
        reasons: list[str] = []

        def value(key: str, source: Mapping[str, float], what: str) -> float | None:
            v = source.get(key)
            if v is None or not math.isfinite(float(v)):
                reasons.append(f"{key} missing{what}")
                return None
            return float(v)

        for key, bound in sorted(self.minimums.items()):
            v = value(key, metrics, f" (needs >= {bound})")
            if v is not None and v < bound:
                reasons.append(f"{key}={v:.4g} < {bound}")
        for key, bound in sorted(self.maximums.items()):
            v = value(key, metrics, f" (needs <= {bound})")
            if v is not None and v > bound:
                reasons.append(f"{key}={v:.4g} > {bound}")
        if self.minimum_gains:
            if baseline is None:
                reasons.append("minimum_gains set but no baseline metrics given")
            else:
                for key, gain in sorted(self.minimum_gains.items()):
                    v = value(key, metrics, f" (needs a gain of {gain})")
                    b = value(key, baseline, " in the baseline")
                    if v is not None and b is not None and v - b < gain:
                        reasons.append(f"{key} gained {v - b:+.4g} over the untrained baseline ({b:.4g}), needs +{gain}")
        return GateResult(passed=not reasons, reasons=reasons)

    def registry_config(self) -> dict[str, dict[str, float]]:
        """Keyword arguments for `pipelines.register.GateConfig` (absolute bounds only)."""
        return {"minimums": dict(self.minimums), "maximums": dict(self.maximums)}


# Bounds for concepts trained on the world base with the default recipe, chosen on the dev split
# (5 of 6 OmniPersona concepts pass there, 1 of 6 with untrained tokens); on the test split of
# docs/evaluation.md 3 of 6 OmniPersona concepts pass and none with untrained tokens.
WORLD_BASE_GATE = EvaluationGate(
    minimums={
        "recognition_accuracy": 0.65,
        "text_qa_accuracy": 0.4,
        "vqa_accuracy": 0.6,
    },
)


def gate_concepts(
    per_concept: Mapping[str, Mapping[str, float]],
    gate: EvaluationGate,
    baselines: Mapping[str, Mapping[str, float]] | None = None,
) -> dict[str, GateResult]:
    """One gate decision per concept (baselines keyed like `per_concept`, when gains are gated)."""
    return {name: gate.evaluate(m, (baselines or {}).get(name)) for name, m in per_concept.items()}
