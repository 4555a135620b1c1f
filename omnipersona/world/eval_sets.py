"""World concepts' held-out evaluation sets, in the form `omnipersona.evaluation` scores.

    eval_set_from_world(concept)                          # straight from the world
    eval_set_from_manifest("<eval_root>/<tenant>/<c>")    # what `uploads.write_eval_set` wrote
    read_eval_set(fs, concept_dir, concept_id, options)   # the job's `world` eval-set reader plug-in

Held out from training: other views, the first hard negatives (training uses later ones), random
negatives of the eval stream, held-out wordings, PARG requests with their items' pictures, edits
of held-out views. Text QA is grouped `visible` / `private` (the harness reports both).
"""
from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping, Sequence

import pyarrow.fs as pafs
from PIL import Image

from omnipersona.evaluation.eval_set import QA, ConceptEvalSet, EditCase, EvalOptions, PargCase, fill_name
from omnipersona.identity import ConceptId
from omnipersona.world import layout
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
from omnipersona.world.uploads import read_eval_manifest, read_image, resolve_filesystem

TEXT_QA_GROUPS = ("visible", "private")
_ITEM_KINDS = sorted((*TOYS, *FOODS, *HOMES), key=len, reverse=True)  # longest first: "teddy bear" before "bear"


def _item_kind(words: str) -> str:
    for kind in _ITEM_KINDS:
        if words.endswith(kind):
            return kind
    raise ValueError(f"no known item in {words!r}")


def _text_qa(question: str, answer: str, attribute: str) -> QA:
    return QA(question, answer, attribute, group="visible" if attribute in VISIBLE_ATTRIBUTES else "private")


def _vqa_for_view(image: Image.Image, background: str, held_out: Mapping[str, QA], n: int, index: int) -> list[QA]:
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


def eval_set_from_world(concept: WorldConcept, options: EvalOptions = EvalOptions(), name: str | None = None) -> ConceptEvalSet:
    """Held-out material of a world concept, made from the world itself."""
    size = options.image_size
    attrs = concept.attributes()
    views = concept.held_out_views(options.views, size)
    held = {q.attribute: _text_qa(q.question, q.answer, q.attribute) for q in concept.questions(subject="<{name}>", held_out=True)}
    vqa = [q for i, v in enumerate(views) for q in _vqa_for_view(v.image, v.spec.background, held, options.vqa_per_view, i)]
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
        text_qa_groups=TEXT_QA_GROUPS,
    )
    return fill_name(es)


def eval_set_from_manifest(concept_dir: str, filesystem=None, options: EvalOptions = EvalOptions()) -> ConceptEvalSet:
    """Held-out set written by `omnipersona.world.uploads.write_eval_set` (any pyarrow filesystem)."""
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
    held = {f.attribute: _text_qa(templ(f.question), f.answer, f.attribute) for f in manifest.facts}
    vqa = [q for i, (im, bg, _) in enumerate(views) for q in _vqa_for_view(im, bg, held, options.vqa_per_view, i)]
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
        text_qa_groups=TEXT_QA_GROUPS,
    )
    return fill_name(es)


def read_eval_set(filesystem: pafs.FileSystem, concept_dir: str, concept: ConceptId, options: EvalOptions) -> ConceptEvalSet | None:
    """The `world` eval-set reader (`omnipersona.evaluation.plugins`): the concept's manifest set, None without one."""
    if filesystem.get_file_info(posixpath.join(concept_dir, layout.MANIFEST_FILE)).type != pafs.FileType.File:
        return None
    return eval_set_from_manifest(concept_dir, filesystem, options)
