"""A generic pretraining stream of random world objects: captions, visual QA and edit triplets.

A small base model pretrained on this stream learns the world's visual vocabulary (shapes,
colours, patterns, accessories, scenes, items) before any concept is personalised. Sample `i`
depends only on (seed, i), so workers can shard the stream by index and resume anywhere.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import count

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from omnipersona.world import seeds
from omnipersona.world.attributes import (
    BACKGROUND_PHRASE,
    BACKGROUNDS,
    SHAPES,
    ObjectSpec,
    accessory_words,
    caption,
    random_spec,
    with_article,
)
from omnipersona.world.edits import EDIT_KINDS, EditTriplet, make_edit
from omnipersona.world.items import ITEM_CATEGORIES, Item, random_item
from omnipersona.world.render import render


@dataclass(frozen=True)
class CaptionSample:
    image: Image.Image
    caption: str


@dataclass(frozen=True)
class VQASample:
    image: Image.Image
    question: str
    answer: str


Sample = CaptionSample | VQASample | EditTriplet


class StreamMix(BaseModel):
    """Relative weights of the sample kinds, and how often an item icon joins the object."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    caption: float = Field(default=0.4, ge=0.0)
    vqa: float = Field(default=0.4, ge=0.0)
    edit: float = Field(default=0.2, ge=0.0)
    item_probability: float = Field(default=0.25, ge=0.0, le=1.0)


def _questions(spec: ObjectSpec, item: Item | None, rng: np.random.Generator) -> list[tuple[str, str]]:
    shape = spec.shape
    other_shape = str(rng.choice([s for s in SHAPES if s != shape]))
    asked_shape, present = (shape, "yes") if rng.random() < 0.5 else (other_shape, "no")
    worn = "nothing"
    if spec.accessory != "none":
        worn = with_article(accessory_words(spec.accessory, spec.accessory_colour))
    qa = [
        ("What colour is the object?", spec.colour),
        ("What shape is the object?", shape),
        (f"What pattern does the {shape} have?", spec.pattern),
        (f"What is the {shape} wearing?", worn),
        (f"Is there {with_article(asked_shape)} in the image?", present),
        ("Where is the object?", BACKGROUND_PHRASE[spec.background]),
        (f"Is the {shape} wearing a hat?", "yes" if spec.accessory == "hat" else "no"),
    ]
    if spec.accessory != "none":
        qa.append((f"What colour is the {shape}'s {spec.accessory}?", str(spec.accessory_colour)))
    if item is not None:
        qa.append((f"What is next to the {shape}?", item.phrase))
    return qa


def pretraining_sample(seed: int, index: int, size: int = 64, mix: StreamMix = StreamMix()) -> Sample:
    """Sample `index` of the stream `seed` (deterministic, independent of other indices)."""
    sample_seed = seeds.derive_seed(seed, seeds.STREAM_SAMPLE, index)
    rng = np.random.default_rng([sample_seed, 0])
    weights = np.asarray([mix.caption, mix.vqa, mix.edit], dtype=np.float64)
    if weights.sum() <= 0.0:
        raise ValueError("at least one sample kind needs a positive weight")
    kind = ("caption", "vqa", "edit")[int(rng.choice(3, p=weights / weights.sum()))]
    spec = random_spec(rng, background=BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))])
    if kind == "edit":
        edit_kind = EDIT_KINDS[int(rng.integers(len(EDIT_KINDS)))]
        return make_edit(spec, edit_kind, f"the {spec.shape}", size, sample_seed)
    item = random_item(rng, str(rng.choice(ITEM_CATEGORIES))) if rng.random() < mix.item_probability else None
    image = render(spec, size, sample_seed, item=item)
    if kind == "caption":
        return CaptionSample(image, caption(spec, item.phrase if item else None))
    questions = _questions(spec, item, rng)
    question, answer = questions[int(rng.integers(len(questions)))]
    return VQASample(image, question, answer)


def pretraining_stream(
    seed: int, size: int = 64, mix: StreamMix = StreamMix(), start: int = 0
) -> Iterator[Sample]:
    """Endless samples `start`, `start + 1`, ... of the stream `seed`."""
    for index in count(start):
        yield pretraining_sample(seed, index, size, mix)
