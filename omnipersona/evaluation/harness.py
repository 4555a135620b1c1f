"""OmniPBench-style evaluation of one personalised concept on its held-out set.

    metrics = evaluate_concept(persona, eval_set, judge)

`persona` is anything with the `omnipersona.infer.engine.Persona` methods `understand`,
`recognition_yes_probability`, `generate` and `edit`, with the concept loaded under
`eval_set.name`. Metrics the harness computes itself (all in [0, 1], higher is better):

    recognition_accuracy     weighted yes/no accuracy (positives 1/2, hard + random negatives 1/2)
    text_qa_accuracy         text-only questions in held-out wording (judge 0/.5/1), and
                             text_qa_<group> for each of the set's `text_qa_groups`
    vqa_accuracy             questions about held-out views
    parg_recall              with replay: did replay recall the fact a PARG request needs
    <extractor name>         mean feature cosine of generations to the held-out views (clip_i, dino_i, ...)

What the generated, PARG and edited pictures show is the `judge`'s to say (an `ImageJudge`, e.g.
the world-trained probe: generation_probe, parg, edit_score). Without one those metrics are left
out, and `extractors` (CLIP / DINO / face embedders) still give the feature cosines.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image

from .eval_set import ConceptEvalSet
from .metrics import answer_score, mean, mean_pairwise_cosine, weighted_recognition_accuracy

FeatureExtractor = Callable[[Sequence[Image.Image]], np.ndarray]


@dataclass(frozen=True)
class GeneratedImages:
    """What the persona drew for an eval set, aligned with its cases."""

    generated: list[Image.Image]  # one per `eval_set.generation_prompts`
    parg: list[Image.Image]  # one per `eval_set.parg`
    edited: list[Image.Image]  # one per `eval_set.edits`


class ImageJudge(Protocol):
    """Scores pictures against an eval set's expectations (the plug-in that knows what pictures show)."""

    def feature_extractors(self) -> Mapping[str, FeatureExtractor]:
        """Feature cosines this judge provides by default (the caller's extractors of the same name win)."""

    def score(self, eval_set: ConceptEvalSet, images: GeneratedImages) -> dict[str, float]:
        """Metrics of the pictures, e.g. whether they show the concept, the PARG item, the edit."""


def evaluate_concept(
    persona,
    eval_set: ConceptEvalSet,
    judge: ImageJudge | None = None,
    extractors: Mapping[str, FeatureExtractor] | None = None,
    *,
    replay: bool = True,
    max_new_tokens: int = 12,
    keep_images: bool = False,
) -> dict[str, float]:
    """Every metric of one concept (see the module docstring). `replay=False` is the no-replay
    ablation (generation and editing from the raw request). With `keep_images`, generated images
    are attached as `persona.last_eval_images` for inspection."""
    es, name = eval_set, eval_set.name
    out: dict[str, float] = {}

    # Understanding
    p_yes = lambda images: [persona.recognition_yes_probability(name, im) for im in images]  # noqa: E731
    out.update(weighted_recognition_accuracy(p_yes(es.views), p_yes(es.hard_negatives), p_yes(es.random_negatives)))
    text = [(q, persona.understand(q.question, concepts=[name], max_new_tokens=max_new_tokens).text) for q in es.text_qa]
    out["text_qa_accuracy"] = mean(answer_score(a, q.answer) for q, a in text)
    for group in es.text_qa_groups:
        out[f"text_qa_{group}"] = mean(answer_score(a, q.answer) for q, a in text if q.group == group)
    out["vqa_accuracy"] = mean(
        answer_score(persona.understand(q.question, image=q.image, max_new_tokens=max_new_tokens).text, q.answer) for q in es.vqa
    )

    # Generation, PARG, editing
    generated = [persona.generate(name, p, replay=replay).image for p in es.generation_prompts]
    parg_runs = [persona.generate(name, c.request, replay=replay) for c in es.parg]
    edited = [persona.edit(name, e.source, e.instruction, replay=replay).image for e in es.edits]
    if replay and parg_runs:
        out["parg_recall"] = mean(answer_score(r.replay.answer if r.replay else "", c.answer) for r, c in zip(parg_runs, es.parg))
    extractors = dict(extractors or {})
    if judge is not None:
        for metric, extract in judge.feature_extractors().items():
            extractors.setdefault(metric, extract)
        out.update(judge.score(es, GeneratedImages(generated, [g.image for g in parg_runs], edited)))
    for metric, extract in extractors.items():
        if generated and es.views:
            out[metric] = mean_pairwise_cosine(np.asarray(extract(generated)), np.asarray(extract(es.views)))
    if keep_images:
        persona.last_eval_images = {"generated": generated, "parg": [g.image for g in parg_runs], "edited": edited}
    return out


def aggregate(per_concept: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Mean of every metric over concepts (NaN-free: a metric missing for a concept is skipped)."""
    keys = sorted({k for m in per_concept.values() for k in m})
    return {k: mean(m[k] for m in per_concept.values() if k in m and not np.isnan(m[k])) for k in keys}
