"""OmniPBench-style evaluation of one personalised concept on held-out material.

    eval_set = eval_set_from_world(concept)                 # or eval_set_from_manifest(dir)
    metrics = evaluate_concept(persona, eval_set, probe=ensure_probe())

`persona` is anything with the `omnipersona.infer.engine.Persona` methods `understand`,
`recognition_yes_probability`, `generate` and `edit`, with the concept loaded under
`eval_set.name`. Metric names (all in [0, 1], higher is better):

    recognition_accuracy     weighted yes/no accuracy (positives 1/2, hard + random negatives 1/2)
    text_qa_accuracy         text-only questions about every attribute, held-out wording (judge 0/.5/1)
    vqa_accuracy             questions about held-out views (visible attributes, scene)
    generation_probe         share of the concept's visible attributes the probe reads on generations
    clip_i                   image-feature cosine of generations to the held-out views (CLIP-I analogue;
                             the probe's features unless other extractors are given)
    parg                     "a photo of <c> with its toy": the probe sees the concept's private item
    edit_score               mean of edit_applied and edit_kept (instruction applied, identity kept)

The probe (a world-trained judge) is optional: without it the image-judged metrics are left out,
and `extractors` (e.g. CLIP / DINO / face embedders on real photos) still give the `*_i` cosines.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from omnipersona.world.attributes import (
    ACCESSORIES,
    BACKGROUND_NOUN,
    BACKGROUND_PHRASE,
    BACKGROUNDS,
    VISIBLE_ATTRIBUTES,
    accessory_words,
    with_article,
)
from omnipersona.world.concepts import WorldConcept
from omnipersona.world.items import FOODS, HOMES, TOYS

from .metrics import answer_score, edit_outcome, mean, mean_pairwise_cosine, weighted_recognition_accuracy

FeatureExtractor = Callable[[Sequence[Image.Image]], np.ndarray]
_ITEM_KINDS = sorted((*TOYS, *FOODS, *HOMES), key=len, reverse=True)


@dataclass(frozen=True)
class QA:
    question: str  # names the concept as <name>
    answer: str
    attribute: str = ""
    image: Image.Image | None = None


@dataclass(frozen=True)
class PargCase:
    attribute: str  # toy / favourite_food / home
    request: str  # "a photo of <name> with its toy"
    answer: str  # the fact replay should recall: "a black drum"
    item_kind: str  # what the probe must see: "drum"
    reference: Image.Image | None = None


@dataclass(frozen=True)
class EditCase:
    kind: str  # remove / background / accessory
    instruction: str
    source: Image.Image
    requested: dict[str, str]  # the concept's visible attributes, with the requested change applied


@dataclass
class ConceptEvalSet:
    name: str
    class_word: str
    attributes: dict[str, str]
    views: list[Image.Image]
    hard_negatives: list[Image.Image] = field(default_factory=list)
    random_negatives: list[Image.Image] = field(default_factory=list)
    text_qa: list[QA] = field(default_factory=list)
    vqa: list[QA] = field(default_factory=list)
    generation_prompts: list[str] = field(default_factory=list)
    parg: list[PargCase] = field(default_factory=list)
    edits: list[EditCase] = field(default_factory=list)

    @property
    def visible_attributes(self) -> dict[str, str]:
        return {k: self.attributes[k] for k in VISIBLE_ATTRIBUTES if k in self.attributes}


@dataclass(frozen=True)
class EvalOptions:
    views: int = 4
    hard_negatives: int = 4
    random_negatives: int = 4
    vqa_per_view: int = 5
    generations: int = 3
    edits: int = 3
    image_size: int = 32


# ------------------------------------------------------------------------- building eval sets
def _item_kind(words: str) -> str:
    for kind in _ITEM_KINDS:
        if words.endswith(kind):
            return kind
    raise ValueError(f"no known item in {words!r}")


def _vqa_for_view(image: Image.Image, background: str, attrs: Mapping[str, str], held_out: Mapping[str, QA], n: int, index: int) -> list[QA]:
    where = QA("Where is <{name}>?", BACKGROUND_PHRASE[background], "background", image)
    pool = [QA(held_out[k].question, held_out[k].answer, k, image) for k in VISIBLE_ATTRIBUTES if k in held_out] + [where]
    start = index % len(pool)  # rotate, so a small n still covers every question across views
    return [pool[(start + i) % len(pool)] for i in range(min(n, len(pool)))]


def _edits_for_views(views: Sequence[tuple[Image.Image, str]], attrs: Mapping[str, str], n: int) -> list[EditCase]:
    visible = {k: attrs[k] for k in VISIBLE_ATTRIBUTES}
    kinds = ("remove", "background", "accessory")
    out = []
    for i in range(min(n, len(views) * len(kinds))):
        image, background = views[i % len(views)]
        kind = kinds[i % len(kinds)]
        if kind == "remove":
            out.append(EditCase(kind, "remove <{name}>", image, dict(visible)))
        elif kind == "background":
            new = [b for b in BACKGROUNDS if b != background][(3 * i + 1) % (len(BACKGROUNDS) - 1)]
            out.append(EditCase(kind, f"change the background to {BACKGROUND_NOUN[new]}", image, {**visible, "background": new}))
        else:
            worn = attrs["accessory"]
            colour = attrs["colour"]
            choices = [(a, c) for a in ACCESSORIES if a != "none" for c in ("blue", "red", "yellow", "white", "black")
                       if c != colour and f"{c} {a}" != worn]
            accessory, acc_colour = choices[(7 * i + 3) % len(choices)]
            words = accessory_words(accessory, acc_colour)
            out.append(EditCase(kind, f"give <{{name}}> {with_article(words)}", image, {**visible, "accessory": words}))
    return out


def _bind(text: str, name: str) -> str:
    return text.replace("<{name}>", f"<{name}>")


def _finish(es: ConceptEvalSet) -> ConceptEvalSet:
    """Put the concept's name into every template."""
    n = es.name
    es.text_qa = [QA(_bind(q.question, n), q.answer, q.attribute, q.image) for q in es.text_qa]
    es.vqa = [QA(_bind(q.question, n), q.answer, q.attribute, q.image) for q in es.vqa]
    es.generation_prompts = [_bind(p, n) for p in es.generation_prompts]
    es.parg = [PargCase(p.attribute, _bind(p.request, n), p.answer, p.item_kind, p.reference) for p in es.parg]
    es.edits = [EditCase(e.kind, _bind(e.instruction, n), e.source, e.requested) for e in es.edits]
    return es


def eval_set_from_world(concept: WorldConcept, options: EvalOptions = EvalOptions(), name: str | None = None) -> ConceptEvalSet:
    """Held-out material of a world concept: other views, the first hard negatives (training uses
    later ones), random negatives of the eval stream, held-out wordings, PARG requests."""
    size = options.image_size
    attrs = concept.attributes()
    views = concept.held_out_views(options.views, size)
    held = {q.attribute: QA(q.question, q.answer, q.attribute) for q in concept.questions(subject="<{name}>", held_out=True)}
    vqa = [q for i, v in enumerate(views) for q in _vqa_for_view(v.image, v.spec.background, attrs, held, options.vqa_per_view, i)]
    gens = [f"a photo of <{{name}}> {BACKGROUND_PHRASE[v.spec.background]}" for v in views][: options.generations]
    parg = [
        PargCase(r.attribute, r.request, r.answer, _item_kind(attrs[r.attribute]), concept.item_view(r.attribute, size))
        for r in concept.parg_requests(subject="<{name}>")
    ]
    es = ConceptEvalSet(
        name=name or concept.name,
        class_word=concept.class_word,
        attributes=attrs,
        views=[v.image for v in views],
        hard_negatives=[n.image for n in concept.hard_negatives(options.hard_negatives, size)],
        random_negatives=[n.image for n in concept.random_negatives(options.random_negatives, size)],
        text_qa=list(held.values()),
        vqa=vqa,
        generation_prompts=gens,
        parg=parg,
        edits=_edits_for_views([(v.image, v.spec.background) for v in views], attrs, options.edits),
    )
    return _finish(es)


def eval_set_from_manifest(concept_dir: str, filesystem=None, options: EvalOptions = EvalOptions()) -> ConceptEvalSet:
    """Held-out set written by `omnipersona.world.uploads.write_eval_set` (any pyarrow filesystem)."""
    import posixpath

    from omnipersona.world.uploads import read_eval_manifest, read_image, resolve_filesystem

    fs, base = resolve_filesystem(concept_dir, filesystem)
    manifest = read_eval_manifest(base, fs)
    name = manifest.display_name
    pattern = re.compile(rf"\b{re.escape(name)}\b")

    def templ(text: str) -> str:
        return pattern.sub("<{name}>", text)

    def image(rel: str) -> Image.Image:
        return read_image(posixpath.join(base, rel), fs)

    attrs = dict(manifest.attributes)
    views = [(image(v.file), v.background, templ(v.prompt)) for v in manifest.views[: options.views]]
    held = {f.attribute: QA(templ(f.question), f.answer, f.attribute) for f in manifest.facts}
    vqa = [q for i, (im, bg, _) in enumerate(views) for q in _vqa_for_view(im, bg, attrs, held, options.vqa_per_view, i)]
    es = ConceptEvalSet(
        name=name,
        class_word=manifest.class_word,
        attributes=attrs,
        views=[im for im, _, _ in views],
        hard_negatives=[image(n.file) for n in manifest.hard_negatives[: options.hard_negatives]],
        random_negatives=[image(n.file) for n in manifest.random_negatives[: options.random_negatives]],
        text_qa=list(held.values()),
        vqa=vqa,
        generation_prompts=[p for _, _, p in views][: options.generations],
        parg=[PargCase(p.attribute, templ(p.request), p.answer, _item_kind(attrs[p.attribute]), image(p.reference)) for p in manifest.parg],
        edits=_edits_for_views([(im, bg) for im, bg, _ in views], attrs, options.edits),
    )
    return _finish(es)


# ------------------------------------------------------------------------- evaluation
def _reading_dict(reading) -> dict[str, str]:
    return {**reading.visible(), "background": reading.background, "present": "yes" if reading.present else "no", "item": reading.item}


def evaluate_concept(
    persona,
    eval_set: ConceptEvalSet,
    probe=None,
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
    out["text_qa_visible"] = mean(answer_score(a, q.answer) for q, a in text if q.attribute in VISIBLE_ATTRIBUTES)
    out["text_qa_private"] = mean(answer_score(a, q.answer) for q, a in text if q.attribute not in VISIBLE_ATTRIBUTES)
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
    if probe is not None:
        extractors.setdefault("clip_i", probe.features)
        visible = es.visible_attributes
        readings = probe.read(generated) if generated else []
        out["generation_probe"] = mean(
            (sum(r.visible()[k] == v for k, v in visible.items()) / len(visible)) if r.present else 0.0 for r in readings
        )
        if parg_runs:
            out["parg"] = mean(float(r.item == c.item_kind) for r, c in zip(probe.read([g.image for g in parg_runs]), es.parg))
        if edited:
            before = [_reading_dict(r) for r in probe.read([e.source for e in es.edits])]
            after = [_reading_dict(r) for r in probe.read(edited)]
            outcomes = [edit_outcome(e.kind, b, a, e.requested) for e, b, a in zip(es.edits, before, after)]
            out["edit_applied"] = mean(a for a, _ in outcomes)
            out["edit_kept"] = mean(k for _, k in outcomes)
            out["edit_score"] = 0.5 * (out["edit_applied"] + out["edit_kept"])
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
