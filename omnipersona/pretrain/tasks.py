"""Pretraining samples of the world base, as model-agnostic segment lists.

Generic tasks come from the world's `pretraining_sample` (captions, VQA, edits of random objects).
"Named" tasks stand in for what a real LLM brings from web-scale pretraining and OmniPersona relies
on: reading a description of a named thing in its context and using it — recognising it in an image
(with look-alikes), answering questions about it in other words, drawing it, editing it, and the
knowledge-replay prompt formats (few-shot intent parsing, "request. answer" rewrites). Names are
plain words here; a personalised concept later replaces the description by learnt tokens.

A sample is a list of segments, in order:
    Seg("text", text=..., loss=...)   a text span (loss: its tokens are CE targets)
    Seg("vit", image=...)             understanding image (ViT tokens)
    Seg("cond", image=...)            clean VAE latent (editing source)
    Seg("target", image=...)          noised VAE latent with flow-matching loss
Sample `i` of a seed depends on (seed, i) only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..infer.replay import FEW_SHOT
from ..world import StreamMix, make_concept, make_edit, pretraining_sample, render
from ..world.attributes import (
    BACKGROUND_PHRASE,
    BACKGROUNDS,
    BODY_COLOURS,
    PATTERNS,
    SHAPES,
    ObjectSpec,
    accessory_words,
    object_phrase,
    random_spec,
    with_article,
)
from ..world.concepts import NAMES, WorldConcept, random_objects_unlike
from ..world.edits import EditTriplet
from ..world.items import ITEM_CATEGORIES
from ..world.stream import CaptionSample, VQASample
from .config import TaskMix

DESCRIBE = "Describe the image."
_STREAM_ONLY = {
    "caption": StreamMix(caption=1.0, vqa=0.0, edit=0.0),
    "t2i": StreamMix(caption=1.0, vqa=0.0, edit=0.0),
    "vqa": StreamMix(caption=0.0, vqa=1.0, edit=0.0),
    "edit": StreamMix(caption=0.0, vqa=0.0, edit=1.0),
}
# World PARG requests (and the other generation / edit requests) -> the explicit question replay asks.
_ITEM_REQUESTS = {
    "toy": ("a photo of {n} with its toy", "What is {n}'s toy?"),
    "favourite_food": ("a photo of {n} with its favourite food", "What is {n}'s favourite food?"),
    "home": ("a photo of {n} next to its home", "What is {n}'s home?"),
}
LOOK_QUESTION = "What does {n} look like?"


@dataclass(frozen=True)
class Seg:
    kind: str  # text | vit | cond | target
    text: str | None = None
    image: Image.Image | None = None
    loss: bool = False


def _rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, 7919, stream, index]))


def _seed_from(rng: np.random.Generator) -> int:
    return int(rng.integers(2**31 - 1))


# ----------------------------------------------------------------------------- generic tasks
def _generic(kind: str, seed: int, index: int, size: int) -> list[Seg]:
    sample = pretraining_sample(seed, index, size, _STREAM_ONLY[kind])
    if kind == "caption":
        assert isinstance(sample, CaptionSample)
        return [Seg("vit", image=sample.image), Seg("text", DESCRIBE), Seg("text", sample.caption, loss=True)]
    if kind == "t2i":
        assert isinstance(sample, CaptionSample)
        return [Seg("text", f"a photo of {sample.caption}"), Seg("target", image=sample.image)]
    if kind == "vqa":
        assert isinstance(sample, VQASample)
        return [Seg("vit", image=sample.image), Seg("text", sample.question), Seg("text", sample.answer, loss=True)]
    assert isinstance(sample, EditTriplet)
    return _edit_segments(sample, sample.instruction)


def _edit_segments(edit: EditTriplet, instruction: str, context: list[Seg] | None = None) -> list[Seg]:
    # The layout of an OmniPersona edit sample: source as clean latent + ViT, instruction, target.
    return [*(context or []), Seg("cond", image=edit.source), Seg("vit", image=edit.source),
            Seg("text", instruction), Seg("target", image=edit.target)]


def _variant(spec: ObjectSpec, attribute: str, rng: np.random.Generator) -> ObjectSpec:
    """`spec` with one visible attribute changed (a look-alike)."""
    while True:
        other = random_spec(rng, background=spec.background)
        if attribute == "accessory":
            if (other.accessory, other.accessory_colour) != (spec.accessory, spec.accessory_colour) and other.accessory_colour != spec.colour:
                return spec.replace(accessory=other.accessory, accessory_colour=other.accessory_colour)
        elif getattr(other, attribute) != getattr(spec, attribute):
            if attribute != "colour" or other.colour != spec.accessory_colour:
                return spec.replace(**{attribute: getattr(other, attribute)})


def _partial_phrase(spec: ObjectSpec, keys: set[str]) -> str:
    adjectives = [spec.pattern] if "pattern" in keys and spec.pattern != "plain" else []
    adjectives += [spec.colour] if "colour" in keys else []
    phrase = with_article(" ".join([*adjectives, spec.shape]))
    if "accessory" in keys and spec.accessory != "none":
        phrase += " wearing " + with_article(accessory_words(spec.accessory, spec.accessory_colour))
    return phrase


def _attribute_check(seed: int, index: int, size: int) -> list[Seg]:
    """'Is there a striped teal star in the image?' -> Yes / No, with one-attribute look-alikes:
    the direct form of what named recognition does through a name."""
    rng = _rng(seed, index, 3)
    spec = random_spec(rng, background=BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))])
    keys = {"shape"} | {k for k in ("colour", "pattern", "accessory") if rng.random() < 0.6}
    roll = rng.random()
    if roll < 0.5:
        shown, answer = spec, "Yes"
    elif roll < 0.8:
        shown, answer = _variant(spec, str(rng.choice(sorted(keys))), rng), "No"
    else:
        shown, answer = random_spec(rng, background=spec.background), "No"
        if all(getattr(shown, k) == getattr(spec, k) for k in keys if k != "accessory"):
            answer = "Yes" if "accessory" not in keys or shown.accessory == spec.accessory else "No"
    image = render(shown, size, _seed_from(rng))
    return [Seg("vit", image=image), Seg("text", f"Is there {_partial_phrase(spec, keys)} in the image?"), Seg("text", answer, loss=True)]


# ----------------------------------------------------------------------------- Yes / No curriculum
_CHECK_VALUES = {"colour": BODY_COLOURS, "shape": SHAPES, "pattern": PATTERNS}
_CHECK_VQA = {"colour": "What colour is the object?", "shape": "What shape is the object?",
              "pattern": "What pattern does the object have?"}


def _stated(kind: str, value: str) -> str:
    return with_article(value) if kind == "shape" else value


def check_sample(seed: int, index: int, size: int, kinds: tuple[str, ...], plain: bool) -> list[Seg]:
    """'Is the object teal?' -> Yes / No (half of the time the matching VQA, 'What colour ...?' -> teal)."""
    rng = _rng(seed, index, 5)
    spec = random_spec(rng, background="white" if plain else BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))])
    kind = kinds[int(rng.integers(len(kinds)))]
    truth = getattr(spec, kind)
    asked = truth if rng.random() < 0.5 else str(rng.choice([v for v in _CHECK_VALUES[kind] if v != truth]))
    image = render(spec, size, _seed_from(rng))
    if rng.random() < 0.5:
        return [Seg("vit", image=image), Seg("text", _CHECK_VQA[kind]), Seg("text", truth, loss=True)]
    return [Seg("vit", image=image), Seg("text", f"Is the object {_stated(kind, asked)}?"),
            Seg("text", "Yes" if asked == truth else "No", loss=True)]


def named_check_sample(seed: int, index: int, size: int) -> list[Seg]:
    """'maeve is teal.' + picture + 'Is maeve in this image?' -> Yes iff the picture shows that value:
    recognition through a name with a one-fact description."""
    rng = _rng(seed, index, 6)
    spec = random_spec(rng, background=BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))])
    name = str(rng.choice(NAMES))
    kind = ("colour", "shape", "pattern")[int(rng.integers(3))]
    truth = getattr(spec, kind)
    said = truth if rng.random() < 0.5 else str(rng.choice([v for v in _CHECK_VALUES[kind] if v != truth]))
    image = render(spec, size, _seed_from(rng))
    return [Seg("text", f"{name} is {_stated(kind, said)}."), Seg("vit", image=image),
            Seg("text", f"Is {name} in this image?"), Seg("text", "Yes" if said == truth else "No", loss=True)]


def item_t2i_sample(seed: int, index: int, size: int) -> list[Seg]:
    """A described concept drawn with one of its items, the item spelled out in the request
    ("a photo of maeve with a red rocket" or the replay rewrite "a photo of maeve with its toy. a red
    rocket"): the picture PARG asks for once replay has recalled the item."""
    rng = _rng(seed, index, 7)
    concept = _concept(seed, index)
    image, prompt = _with_item(concept, rng, size)
    return [_context(concept, rng, private=False), Seg("text", prompt), Seg("target", image=image), Seg("target", image=image)]


def _with_item(concept: WorldConcept, rng: np.random.Generator, size: int) -> tuple[Image.Image, str]:
    """A view of the concept with one of its items, and a request that spells the item out."""
    category = ITEM_CATEGORIES[int(rng.integers(len(ITEM_CATEGORIES)))]
    item = concept.private.item(category)
    image, _ = _view(concept, rng, size, item=item)
    if rng.random() < 0.5:
        prompt = f"a photo of {concept.name} {'next to' if category == 'home' else 'with'} {item.phrase}"
    else:
        prompt = _ITEM_REQUESTS[category][0].format(n=concept.name) + f". {item.phrase}"
    return image, prompt


# ----------------------------------------------------------------------------- named tasks
def _concept(seed: int, index: int) -> WorldConcept:
    # Pretraining concepts come from their own seed range: never the benchmark's concepts.
    return make_concept(int(np.random.SeedSequence([seed, 104729, index]).generate_state(1)[0]))


def _context(concept: WorldConcept, rng: np.random.Generator, private: bool, keep: int | None = None) -> Seg:
    """The description in context: the visible facts, and (some) private ones."""
    facts = concept.facts()
    visible, hidden = facts[:3], facts[3:]
    chosen = list(visible)
    if private:
        chosen += [f for i, f in enumerate(hidden) if i + 3 == keep or rng.random() < 0.6]
    return Seg("text", " ".join(chosen))


def _view(concept: WorldConcept, rng: np.random.Generator, size: int, item=None) -> tuple[Image.Image, str]:
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    spec = concept.spec.replace(background=background)
    return render(spec, size, _seed_from(rng), item=item), background


def _named_recognition(concept, rng, size) -> list[Seg]:
    roll = rng.random()
    if roll < 0.5:
        image, _ = _view(concept, rng, size)
        answer = "Yes"
    elif roll < 0.75:
        # A look-alike that differs in exactly one visible attribute.
        spec, _ = concept.hard_negative_specs(8)[int(rng.integers(8))]
        spec = spec.replace(background=BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))])
        image, answer = render(spec, size, _seed_from(rng)), "No"
    else:
        image, answer = random_objects_unlike([concept.spec], 1, size, _seed_from(rng))[0].image, "No"
    return [_context(concept, rng, private=False), Seg("vit", image=image),
            Seg("text", f"Is {concept.name} in this image?"), Seg("text", answer, loss=True)]


def _named_vqa(concept, rng, size) -> list[Seg]:
    image, background = _view(concept, rng, size)
    n = concept.name
    options = [(q.question, q.answer) for q in concept.questions(held_out=bool(rng.random() < 0.5)) if q.visible]
    options += [(f"Where is {n}?", BACKGROUND_PHRASE[background]),
                (f"What is the name of the {concept.class_word} in this image?", f"This is {n}.")]
    question, answer = options[int(rng.integers(len(options)))]
    return [_context(concept, rng, private=False), Seg("vit", image=image), Seg("text", question), Seg("text", answer, loss=True)]


def _named_text_qa(concept, rng, size) -> list[Seg]:
    questions = concept.questions(held_out=bool(rng.random() < 0.5))
    pick = int(rng.integers(len(questions) + 1))
    if pick == len(questions):
        question, answer, keep = LOOK_QUESTION.format(n=concept.name), object_phrase(concept.spec), None
    else:
        q = questions[pick]
        question, answer, keep = q.question, q.answer, 3 + ["toy", "favourite_food", "home", "hobby"].index(q.attribute) if not q.visible else None
    return [_context(concept, rng, private=True, keep=keep), Seg("text", question), Seg("text", answer, loss=True)]


def _named_t2i(concept, rng, size) -> list[Seg]:
    n, roll = concept.name, rng.random()
    if roll < 0.55:
        image, background = _view(concept, rng, size)
        prompt = f"a photo of {n} {BACKGROUND_PHRASE[background]}"
        if rng.random() < 0.5:  # the rewrite knowledge replay makes: "request. recalled answer"
            prompt += f". {object_phrase(concept.spec)}"
    else:
        image, prompt = _with_item(concept, rng, size)
    return [_context(concept, rng, private=False), Seg("text", prompt), Seg("target", image=image)]


def _named_edit(concept, rng, size) -> list[Seg]:
    kind = ("remove", "background", "accessory", "recolour", "add_item")[int(rng.integers(5))]
    spec = concept.spec.replace(background=BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))])
    edit = make_edit(spec, kind, concept.name, size, _seed_from(rng))
    instruction = edit.instruction
    if rng.random() < 0.4:
        instruction += f". {object_phrase(concept.spec)}"
    return _edit_segments(edit, instruction, [_context(concept, rng, private=False)])


def _intent(concept, rng, size) -> list[Seg]:
    """The knowledge-replay intent prompt (`KnowledgeReplay.intent_prompt`) -> the explicit question."""
    n = concept.name
    roll = rng.random()
    if roll < 0.5:
        request, question = (t.format(n=n) for t in _ITEM_REQUESTS[ITEM_CATEGORIES[int(rng.integers(3))]])
    elif roll < 0.75:
        request = f"a photo of {n} {BACKGROUND_PHRASE[BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]]}"
        question = LOOK_QUESTION.format(n=n)
    elif roll < 0.9:
        request = ("remove {n}", "give {n} a red hat", "make {n} blue")[int(rng.integers(3))].format(n=n)
        question = LOOK_QUESTION.format(n=n)
    else:
        request, question = (t.replace("<sks>", n) for t in FEW_SHOT[int(rng.integers(len(FEW_SHOT)))])
    shots = "".join(f"Request: {r}\nQuestion: {q}\n" for r, q in FEW_SHOT).replace("<sks>", n)
    return [_context(concept, rng, private=True), Seg("text", shots + f"Request: {request}\nQuestion:"),
            Seg("text", question, loss=True)]


_NAMED = {
    "named_recognition": _named_recognition,
    "named_vqa": _named_vqa,
    "named_text_qa": _named_text_qa,
    "named_t2i": _named_t2i,
    "named_edit": _named_edit,
    "intent": _intent,
}
TASKS = ("caption", "t2i", "vqa", "attribute_check", "edit", *_NAMED)


def _condition_dropout(segs: list[Seg], rng: np.random.Generator, p: float) -> list[Seg]:
    """Drop the request text (and, for edits, separately the source image) with probability p, as
    BAGEL does, so the text-free / image-free predictions that CFG subtracts are in distribution.
    The named description (the first text of a named sample) stays: it plays the concept prompt."""
    if not any(s.kind == "target" for s in segs):
        return segs
    request = max(i for i, s in enumerate(segs) if s.kind == "text")
    has_context = segs[0].kind == "text" and request != 0
    out = list(segs)
    if rng.random() < p and (request != 0 or not has_context):
        out[request] = None
    if any(s.kind == "cond" for s in segs) and rng.random() < p:
        out = [None if s is not None and s.kind in ("cond", "vit") else s for s in out]
    return [s for s in out if s is not None]


def _repeat_targets(segs: list[Seg], repeats: int) -> list[Seg]:
    # Several noised copies of one target after one prefix: each is hidden from what follows
    # ("noise" attention), so they are independent flow-matching terms for ~16 tokens each.
    out: list[Seg] = []
    for s in segs:
        out.extend([s] * (repeats if s.kind == "target" else 1))
    return out


def pretrain_sample(
    seed: int, index: int, mix: TaskMix, size: int, cfg_dropout: float = 0.1, target_repeats: int = 1
) -> tuple[str, list[Seg]]:
    """(task, segments) of sample `index`."""
    weights = np.asarray([getattr(mix, t) for t in TASKS], dtype=np.float64)
    rng = _rng(seed, index, 0)
    task = TASKS[int(rng.choice(len(TASKS), p=weights / weights.sum()))]
    if task in _NAMED:
        segs = _NAMED[task](_concept(seed, index), _rng(seed, index, 1), size)
    elif task == "attribute_check":
        segs = _attribute_check(seed, index, size)
    else:
        segs = _generic(task, seed, index, size)
    return task, _repeat_targets(_condition_dropout(segs, _rng(seed, index, 2), cfg_dropout), target_repeats)


def corpus(seed: int = 0, samples: int = 3000, size: int = 16) -> list[str]:
    """Texts the tokenizer is trained on: every template and vocabulary word of the world."""
    from ..model.tiny import _CORPUS_SEED
    from ..world.concepts import NAMES

    texts = list(_CORPUS_SEED) + [" ".join(NAMES), DESCRIBE]
    texts += [f"Request: {r}\nQuestion: {q}\n" for r, q in FEW_SHOT]
    mix = TaskMix()
    for i in range(samples):
        _, segs = pretrain_sample(seed + 1, i, mix, size)
        texts += [s.text for s in segs if s.text]
    return texts
