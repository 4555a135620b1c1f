"""The promotion gate: the one type the job config, the registry and the benchmarks share.

Free of MLflow (the job config imports it, and its arithmetic is unit-tested on its own). The job
evaluates a concept, asks the gate, and hands the registry the decision; `champion` moves to a
new version only when the gate passed.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field


class GateResult(BaseModel):
    passed: bool
    reasons: list[str] = Field(default_factory=list)


class Gate(BaseModel):
    """Every listed metric must be present, finite and within its bound.

    YAML: ``{minimums: {recognition_accuracy: 0.7}, maximums: {loss_text: 2.0}, minimum_gains: {text_qa_accuracy: 0.2}}``
    `minimum_gains` bound how far a concept must beat its untrained-tokens baseline (callers that
    have one: the benchmarks). An empty gate passes everything.
    """

    model_config = ConfigDict(extra="forbid")
    minimums: dict[str, float] = Field(default_factory=dict)  # metric >= bound
    maximums: dict[str, float] = Field(default_factory=dict)  # metric <= bound
    minimum_gains: dict[str, float] = Field(default_factory=dict)  # metric - baseline[metric] >= gain

    @property
    def metric_names(self) -> set[str]:
        return set(self.minimums) | set(self.maximums) | set(self.minimum_gains)

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


def gate_concepts(
    per_concept: Mapping[str, Mapping[str, float]],
    gate: Gate,
    baselines: Mapping[str, Mapping[str, float]] | None = None,
) -> dict[str, GateResult]:
    """One gate decision per concept (baselines keyed like `per_concept`, when gains are gated)."""
    return {name: gate.evaluate(m, (baselines or {}).get(name)) for name, m in per_concept.items()}
