"""Judging generated world pictures: from what a reader sees in them to OmniPBench's image metrics.

A reader of world pictures (the trained probe, `omnipersona.pretrain.probe.WorldProbe`, or a test's
oracle) says per picture whether an object is there and its visible attributes, the scene and the
item shown (`Reading`). `WorldJudge` turns those readings into the harness' image metrics:

    generation_probe   share of the concept's visible attributes read on its generations (0 if no object)
    parg               the PARG picture shows the concept's private item
    edit_applied       the instruction happened (object gone / scene changed / accessory given)
    edit_kept          what should stay did (the background after a removal; the other attributes)
    edit_score         mean of the two
    clip_i             (a feature extractor) the reader's image features, the CLIP-I analogue
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from omnipersona.evaluation.eval_set import ConceptEvalSet
from omnipersona.evaluation.harness import FeatureExtractor, GeneratedImages
from omnipersona.evaluation.metrics import mean
from omnipersona.world.attributes import VISIBLE_ATTRIBUTES

IDENTITY_ATTRIBUTES = ("shape", "colour", "pattern", "accessory")


@dataclass(frozen=True)
class Reading:
    """What a reader sees in one image (strings in the world's vocabulary)."""

    present: bool
    shape: str
    colour: str
    pattern: str
    accessory: str  # "red hat" / "none", the form of `visible_attributes`
    background: str
    item: str  # item kind ("excavator", "teddy bear", ...) or "none"

    def visible(self) -> dict[str, str]:
        return {"shape": self.shape, "colour": self.colour, "pattern": self.pattern, "accessory": self.accessory}

    def as_dict(self) -> dict[str, str]:
        """Every reading as strings (`present` is 'yes' / 'no'), the form `edit_outcome` compares."""
        return {**self.visible(), "background": self.background, "present": "yes" if self.present else "no", "item": self.item}


def attribute_match(read: Mapping[str, str], expected: Mapping[str, str], keys: Sequence[str]) -> float:
    """Share of `keys` on which a reading agrees with the expected attributes."""
    keys = [k for k in keys if k in expected]
    if not keys:
        return float("nan")
    return float(np.mean([read.get(k) == expected[k] for k in keys]))


def edit_outcome(kind: str, before: Mapping[str, str], after: Mapping[str, str], requested: Mapping[str, str]) -> tuple[float, float]:
    """(applied, kept) of one edit from readings of the source (`before`) and result (`after`).

    - remove: applied = the object is gone; kept = the background stayed.
    - background: applied = the requested background; kept = share of the identity attributes
      (shape, colour, pattern, accessory) that match the concept.
    - accessory / recolour: applied = the requested accessory / colour; kept = share of the other
      identity attributes that match the concept.
    `requested` holds the concept's attributes and the requested values (`background`, `accessory`,
    `colour`); `present` is 'yes'/'no' in readings.
    """
    if kind == "remove":
        return float(after.get("present") == "no"), float(after.get("background") == before.get("background"))
    if kind == "background":
        return float(after.get("background") == requested["background"]), attribute_match(after, requested, IDENTITY_ATTRIBUTES)
    if kind in ("accessory", "recolour"):
        changed = "accessory" if kind == "accessory" else "colour"
        others = [k for k in IDENTITY_ATTRIBUTES if k != changed]
        return float(after.get(changed) == requested[changed]), attribute_match(after, requested, others)
    raise ValueError(f"unknown edit kind {kind!r}")


class WorldJudge:
    """An `omnipersona.evaluation.ImageJudge` made of a reader of world pictures.

    A reader subclasses it and implements `read(images) -> list[Reading]` and `features(images) -> [N, D]`.
    """

    def read(self, images) -> list[Reading]:
        raise NotImplementedError

    def features(self, images):
        raise NotImplementedError

    def feature_extractors(self) -> dict[str, FeatureExtractor]:
        return {"clip_i": self.features}

    def score(self, eval_set: ConceptEvalSet, images: GeneratedImages) -> dict[str, float]:
        es, out = eval_set, {}
        visible = {k: es.attributes[k] for k in VISIBLE_ATTRIBUTES if k in es.attributes}
        readings = self.read(images.generated) if images.generated else []
        out["generation_probe"] = mean(
            (sum(r.visible()[k] == v for k, v in visible.items()) / len(visible)) if r.present else 0.0 for r in readings
        )
        if images.parg:
            out["parg"] = mean(float(r.item == c.item_kind) for r, c in zip(self.read(images.parg), es.parg))
        if images.edited:
            before = [r.as_dict() for r in self.read([e.source for e in es.edits])]
            after = [r.as_dict() for r in self.read(images.edited)]
            outcomes = [edit_outcome(e.kind, b, a, e.requested) for e, b, a in zip(es.edits, before, after)]
            out["edit_applied"] = mean(a for a, _ in outcomes)
            out["edit_kept"] = mean(k for _, k in outcomes)
            out["edit_score"] = 0.5 * (out["edit_applied"] + out["edit_kept"])
        return out
