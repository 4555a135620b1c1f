"""Personal concepts of the world: a unique object with a name, visible looks and private facts.

A `WorldConcept` is what a user would upload: reference views of "their" object, a few facts
about it (some visible in the images, some not), and edit examples. Everything an evaluation
needs comes with it: held-out views (other seeds), hard negatives (look-alikes that differ in
exactly one visible attribute), random negatives, questions with answers and PARG requests.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, field_validator

from omnipersona import identity
from omnipersona.world import attributes, seeds
from omnipersona.world.attributes import (
    ObjectSpec,
    accessory_words,
    caption,
    differing_attributes,
    random_spec,
    visible_attributes,
    with_article,
)
from omnipersona.world.edits import EditTriplet, make_edit
from omnipersona.world.items import ITEM_CATEGORIES, PrivateFacts, random_private_facts
from omnipersona.world.render import render

NAMES = (
    "maeve", "otis", "juno", "pip", "nova", "milo", "luna", "finn", "iris", "theo", "ada", "remy",
    "cleo", "bruno", "hazel", "ziggy", "olive", "rufus", "wren", "kai", "mabel", "felix", "poppy",
    "jasper", "ivy", "oscar", "willow", "hugo", "daisy", "leo", "nell", "ollie", "ruby", "sasha",
    "toby", "uma", "vera", "wally", "yara", "zane", "bea", "cosmo", "dot", "echo", "fern", "gus",
    "hana", "ike", "jade", "koko", "lola", "moss", "nico", "opal", "pim", "quinn", "rosa", "sol",
    "tess", "umi", "vito", "wynn", "xena", "yuki",
)
NAME_PATTERN = re.compile(rf"^{identity.NAME_PATTERN}\Z")  # the one name rule: concepts become upload keys
MIN_CONCEPT_DISTANCE = 2  # concepts of one set differ in >= 2 visible attributes (see make_concepts)


@dataclass(frozen=True)
class View:
    image: Image.Image
    spec: ObjectSpec  # the concept's identity on this view's background
    seed: int
    caption: str  # full description: "a striped teal star wearing a red hat on grass"
    prompt: str  # personalised text-to-image prompt: "a photo of maeve on grass"


@dataclass(frozen=True)
class Negative:
    image: Image.Image
    spec: ObjectSpec
    seed: int
    kind: str  # "hard" or "random"
    differs_in: str | None  # the one visible attribute a hard negative changes


@dataclass(frozen=True)
class ConceptQuestion:
    attribute: str
    question: str
    answer: str
    visible: bool


@dataclass(frozen=True)
class PargRequest:
    """An attribute-reasoning generation request: the answer must be recalled, then drawn."""

    attribute: str
    request: str  # "a photo of maeve with its toy"
    question: str  # the explicit question replay asks: "What is maeve's toy?"
    answer: str  # "a black excavator"
    rewritten: str  # the request after replay: "a photo of maeve with a black excavator"


_TRAIN_QUESTIONS = {
    "shape": "What kind of object is {n}?",
    "colour": "What colour is {n}?",
    "pattern": "What pattern does {n} have?",
    "accessory": "What is {n} wearing?",
    "toy": "What is {n}'s toy?",
    "favourite_food": "What is {n}'s favourite food?",
    "home": "What is {n}'s home?",
    "hobby": "What is {n}'s hobby?",
}
_HELD_OUT_QUESTIONS = {
    "shape": "What is {n}?",
    "colour": "Which colour does {n} have?",
    "pattern": "Is {n} plain, striped, dotted or checkered?",
    "accessory": "What does {n} have on?",
    "toy": "Which toy does {n} play with?",
    "favourite_food": "What does {n} like to eat most?",
    "home": "Where does {n} live?",
    "hobby": "What does {n} do for fun?",
}


def _distance(a: ObjectSpec, b: ObjectSpec) -> int:
    return len(differing_attributes(a, b))


class WorldConcept(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    seed: int
    spec: ObjectSpec  # identity; its background is irrelevant (each view picks its own)
    private: PrivateFacts

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        if not NAME_PATTERN.match(name):
            raise ValueError(f"concept name {name!r} must match {NAME_PATTERN.pattern}")
        return name

    @property
    def class_word(self) -> str:
        return self.spec.shape

    def attributes(self) -> dict[str, str]:
        """Visible identity attributes and private facts, key -> short value."""
        return {**visible_attributes(self.spec), **self.private.as_attributes()}

    # ---- text ---------------------------------------------------------------------------------
    def facts(self, subject: str | None = None) -> list[str]:
        n = subject or self.name
        spec, private = self.spec, self.private
        pattern = "is plain, with no pattern" if spec.pattern == "plain" else f"is {spec.pattern}"
        worn = "no accessory" if spec.accessory == "none" else with_article(
            accessory_words(spec.accessory, spec.accessory_colour)
        )
        return [
            f"{n} is {with_article(f'{spec.colour} {spec.shape}')}.",
            f"{n} {pattern}.",
            f"{n} wears {worn}.",
            f"{n}'s toy is {private.toy.phrase}.",
            f"{n}'s favourite food is {private.favourite_food.words}.",
            f"{n} lives in {private.home.phrase}.",
            f"{n}'s hobby is {private.hobby}.",
        ]

    def questions(self, subject: str | None = None, held_out: bool = False) -> list[ConceptQuestion]:
        """Questions with short answers about every attribute; `held_out` words them differently,
        so an evaluation does not just replay the training questions."""
        n = subject or self.name
        spec, private = self.spec, self.private
        worn = "nothing" if spec.accessory == "none" else with_article(
            accessory_words(spec.accessory, spec.accessory_colour)
        )
        wording = _HELD_OUT_QUESTIONS if held_out else _TRAIN_QUESTIONS
        answers = {
            "shape": with_article(spec.shape),
            "colour": spec.colour,
            "pattern": spec.pattern,
            "accessory": worn,
            "toy": private.toy.phrase,
            "favourite_food": private.favourite_food.words,
            "home": private.home.phrase,
            "hobby": private.hobby,
        }
        return [
            ConceptQuestion(key, wording[key].format(n=n), answer, key in attributes.VISIBLE_ATTRIBUTES)
            for key, answer in answers.items()
        ]

    def parg_requests(self, subject: str | None = None) -> list[PargRequest]:
        n = subject or self.name
        toy, food, home = self.private.toy, self.private.favourite_food, self.private.home
        return [
            PargRequest("toy", f"a photo of {n} with its toy", f"What is {n}'s toy?", toy.phrase,
                        f"a photo of {n} with {toy.phrase}"),
            PargRequest("favourite_food", f"a photo of {n} with its favourite food",
                        f"What is {n}'s favourite food?", food.words, f"a photo of {n} with {food.phrase}"),
            PargRequest("home", f"a photo of {n} next to its home", f"What is {n}'s home?", home.phrase,
                        f"a photo of {n} next to {home.phrase}"),
        ]

    # ---- images -------------------------------------------------------------------------------
    def _views(self, stream: int, n: int, size: int) -> list[View]:
        # Cycle through a per-stream shuffle of the scenes, so even a few views vary the background.
        order = seeds.rng_for(self.seed, stream).permutation(len(attributes.BACKGROUNDS))
        views = []
        for i in range(n):
            spec = self.spec.replace(background=attributes.BACKGROUNDS[int(order[i % len(order)])])
            seed = seeds.derive_seed(self.seed, stream, i)
            prompt = f"a photo of {self.name} {attributes.BACKGROUND_PHRASE[spec.background]}"
            views.append(View(render(spec, size, seed), spec, seed, caption(spec), prompt))
        return views

    def train_views(self, n: int = 10, size: int = 64) -> list[View]:
        return self._views(seeds.TRAIN_VIEW, n, size)

    def held_out_views(self, n: int = 5, size: int = 64) -> list[View]:
        """Views from a separate seed stream: never equal to a training view."""
        return self._views(seeds.HELD_OUT_VIEW, n, size)

    def hard_negative_specs(self, n: int) -> list[tuple[ObjectSpec, str]]:
        """Look-alikes, each differing in exactly one visible attribute (cycling over attributes)."""
        out: list[tuple[ObjectSpec, str]] = []
        used: set[ObjectSpec] = set()
        for i in range(n):
            attribute = attributes.VISIBLE_ATTRIBUTES[i % len(attributes.VISIBLE_ATTRIBUTES)]
            rng = seeds.rng_for(self.seed, seeds.HARD_NEGATIVE, i)
            options = [s for s in _one_attribute_variants(self.spec, attribute) if s not in used]
            options = options or _one_attribute_variants(self.spec, attribute)  # exhausted: allow repeats
            spec = options[int(rng.integers(len(options)))]
            used.add(spec)
            background = attributes.BACKGROUNDS[int(rng.integers(len(attributes.BACKGROUNDS)))]
            out.append((spec.replace(background=background), attribute))
        return out

    def hard_negatives(self, n: int = 8, size: int = 64) -> list[Negative]:
        out = []
        for i, (spec, attribute) in enumerate(self.hard_negative_specs(n)):
            seed = seeds.derive_seed(self.seed, seeds.HARD_NEGATIVE, i, 1)
            out.append(Negative(render(spec, size, seed), spec, seed, "hard", attribute))
        return out

    def random_negatives(self, n: int = 8, size: int = 64, avoid: Sequence[ObjectSpec] = ()) -> list[Negative]:
        """Random objects unlike this concept (and unlike every spec in `avoid`)."""
        seed = seeds.derive_seed(self.seed, seeds.RANDOM_NEGATIVE)
        return random_objects_unlike([self.spec, *avoid], n, size, seed)

    def item_view(self, category: str, size: int = 64) -> Image.Image:
        """The concept next to its toy / favourite food / home: the reference for a PARG check.

        All categories share one scene (pose, background), so the references differ by the item only.
        """
        if category not in ITEM_CATEGORIES:
            raise ValueError(f"unknown item category {category!r}; known: {ITEM_CATEGORIES}")
        seed = seeds.derive_seed(self.seed, seeds.PARG)
        spec = self.spec.replace(background=attributes.BACKGROUNDS[seed % len(attributes.BACKGROUNDS)])
        return render(spec, size, seed, item=self.private.item(category))

    def edits(
        self,
        n: int = 3,
        size: int = 64,
        subject: str | None = None,
        kinds: Sequence[str] = ("remove", "background", "accessory"),
    ) -> list[EditTriplet]:
        """Edit examples of this concept, cycling over `kinds` ("remove" first, as in the paper)."""
        out = []
        for i in range(n):
            seed = seeds.derive_seed(self.seed, seeds.EDIT, i)
            spec = self.spec.replace(background=attributes.BACKGROUNDS[seed % len(attributes.BACKGROUNDS)])
            out.append(make_edit(spec, kinds[i % len(kinds)], subject or self.name, size, seed))
        return out


def _one_attribute_variants(spec: ObjectSpec, attribute: str) -> list[ObjectSpec]:
    if attribute == "shape":
        return [spec.replace(shape=s) for s in attributes.SHAPES if s != spec.shape]
    if attribute == "colour":
        taken = (spec.colour, spec.accessory_colour)
        return [spec.replace(colour=c) for c in attributes.BODY_COLOURS if c not in taken]
    if attribute == "pattern":
        return [spec.replace(pattern=p) for p in attributes.PATTERNS if p != spec.pattern]
    if attribute == "accessory":
        pairs = [("none", None)] + [(a, c) for a in attributes.WORN_ACCESSORIES for c in attributes.ACCESSORY_COLOURS]
        return [
            spec.replace(accessory=a, accessory_colour=c)
            for a, c in pairs
            if c != spec.colour and (a, c) != (spec.accessory, spec.accessory_colour)
        ]
    raise ValueError(f"unknown visible attribute {attribute!r}")


def random_objects_unlike(
    specs: Sequence[ObjectSpec], n: int, size: int = 64, seed: int = 0, min_distance: int = MIN_CONCEPT_DISTANCE
) -> list[Negative]:
    """`n` random objects, each differing from every spec in `specs` in >= `min_distance` attributes."""
    out = []
    for i in range(n):
        rng = seeds.rng_for(seed, seeds.POOL, i)
        spec = random_spec(rng)
        while any(_distance(spec, s) < min_distance for s in specs):
            spec = random_spec(rng)
        render_seed = seeds.derive_seed(seed, seeds.POOL, i, 1)
        out.append(Negative(render(spec, size, render_seed), spec, render_seed, "random", None))
    return out


def make_concept(seed: int, name: str | None = None) -> WorldConcept:
    """One concept; its looks and private facts depend on `seed` only (not on `name`)."""
    spec = random_spec(seeds.rng_for(seed, seeds.SPEC), background="white")
    if name is None:
        name = NAMES[int(seeds.rng_for(seed, seeds.NAME).integers(len(NAMES)))]
    private = random_private_facts(seeds.rng_for(seed, seeds.PRIVATE))
    return WorldConcept(name=name, seed=seed, spec=spec, private=private)


def _unique_names(n: int, rng: np.random.Generator) -> list[str]:
    shuffled = [NAMES[int(i)] for i in rng.permutation(len(NAMES))]
    return [shuffled[i % len(NAMES)] + (f"-{i // len(NAMES) + 1}" if i >= len(NAMES) else "") for i in range(n)]


def make_concepts(n: int, seed: int = 0, min_distance: int = MIN_CONCEPT_DISTANCE) -> list[WorldConcept]:
    """`n` concepts with unique names whose looks differ pairwise in >= `min_distance` visible attributes.

    Distance 2 (not just "not identical") keeps the hard negatives of one concept, which differ
    in one attribute, from ever being another concept of the same set.
    """
    names = _unique_names(n, seeds.rng_for(seed, seeds.NAME))
    concepts: list[WorldConcept] = []
    attempt = 0
    while len(concepts) < n:
        if attempt > 200 * n + 1000:
            raise ValueError(f"could not find {n} concepts at distance >= {min_distance}")
        candidate = make_concept(seeds.derive_seed(seed, seeds.CONCEPT, attempt), names[len(concepts)])
        attempt += 1
        if all(_distance(candidate.spec, c.spec) >= min_distance for c in concepts):
            concepts.append(candidate)
    return concepts
