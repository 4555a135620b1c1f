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

A persona with the batched methods (`recognition_yes_probability_batch`, `understand_batch`)
answers the understanding cases as batches (`Persona.batch_size` requests a forward): recognition
over all views and negatives, then text QA with VQA. Yes-probabilities and greedy answers equal the
one-at-a-time ones (within 2e-7, `tests/unit/test_batched_inference.py`), so these metrics are the
same. Pictures are still drawn one at a time: a batched picture may round a few pixels to the
neighbouring 0-255 value (its float values agree within 1e-5), which moved a pixel-feature cosine
by 6e-5 when generation was batched here too (`small` config) and could flip a judge's reading. A
persona without the batched methods is asked one case at a time.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image

from ..infer.requests import Understand
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
    groups = (es.views, es.hard_negatives, es.random_negatives)
    out.update(weighted_recognition_accuracy(*_split(_yes_probabilities(persona, name, [im for g in groups for im in g]), groups)))
    text_said, vqa_said = _split(_answers(persona, [Understand(q.question, concepts=[name], max_new_tokens=max_new_tokens) for q in es.text_qa]
                                          + [Understand(q.question, image=q.image, max_new_tokens=max_new_tokens) for q in es.vqa]),
                                 (es.text_qa, es.vqa))
    text = list(zip(es.text_qa, text_said))
    out["text_qa_accuracy"] = mean(answer_score(a, q.answer) for q, a in text)
    for group in es.text_qa_groups:
        out[f"text_qa_{group}"] = mean(answer_score(a, q.answer) for q, a in text if q.group == group)
    out["vqa_accuracy"] = mean(answer_score(a, q.answer) for q, a in zip(es.vqa, vqa_said))

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


def unchanged_edit_metrics(eval_set: ConceptEvalSet, judge: ImageJudge) -> dict[str, float]:
    """The edit metrics (`edit_*`) of a no-op editor, one that returns every source unchanged: the
    floor an edit score should be read against (it keeps everything and applies nothing)."""
    scored = judge.score(eval_set, GeneratedImages([], [], [e.source for e in eval_set.edits]))
    return {k: v for k, v in scored.items() if k.startswith("edit_")}


def _split(results: list, groups: Sequence[Sequence]) -> list[list]:
    """Results of the concatenated groups, cut back into one list per group."""
    ends = np.cumsum([0] + [len(g) for g in groups]).tolist()
    return [results[a:b] for a, b in zip(ends, ends[1:])]


def _yes_probabilities(persona, name: str, images: list) -> list[float]:
    batch = getattr(persona, "recognition_yes_probability_batch", None)
    if batch is not None:
        return list(batch([(name, image) for image in images]))
    return [persona.recognition_yes_probability(name, image) for image in images]


def _answers(persona, requests: list[Understand]) -> list[str]:
    batch = getattr(persona, "understand_batch", None)
    if batch is not None:
        return [a.text for a in batch(requests)]
    return [persona.understand(r.question, image=r.image, concepts=r.concepts, max_new_tokens=r.max_new_tokens).text for r in requests]


def aggregate(per_concept: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Mean of every metric over concepts (NaN-free: a metric missing for a concept is skipped)."""
    keys = sorted({k for m in per_concept.values() for k in m})
    return {k: mean(m[k] for m in per_concept.values() if k in m and not np.isnan(m[k])) for k in keys}
