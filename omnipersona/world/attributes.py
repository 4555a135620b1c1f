"""Visible attributes of world objects: vocabularies, the `ObjectSpec`, poses and their English words.

Every attribute value is also a short English word or phrase, so captions, questions and answers
read naturally ("a striped teal star wearing a red hat on grass").
"""
from __future__ import annotations

from typing import Literal, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

Shape = Literal["circle", "square", "triangle", "star", "hexagon", "heart", "blob", "creature"]
BodyColour = Literal["red", "orange", "yellow", "green", "teal", "blue", "purple", "pink", "brown", "grey"]
AccessoryColour = Literal[
    "red", "orange", "yellow", "green", "teal", "blue", "purple", "pink", "brown", "grey", "black", "white"
]
Pattern = Literal["plain", "striped", "dotted", "checkered"]
Accessory = Literal["none", "hat", "scarf", "glasses", "bow", "crown"]
Background = Literal["white", "beige", "gradient", "grass", "sky", "indoor", "snow", "beach", "night"]

SHAPES: tuple[str, ...] = get_args(Shape)
BODY_COLOURS: tuple[str, ...] = get_args(BodyColour)
ACCESSORY_COLOURS: tuple[str, ...] = get_args(AccessoryColour)
PATTERNS: tuple[str, ...] = get_args(Pattern)
ACCESSORIES: tuple[str, ...] = get_args(Accessory)
WORN_ACCESSORIES: tuple[str, ...] = tuple(a for a in ACCESSORIES if a != "none")
BACKGROUNDS: tuple[str, ...] = get_args(Background)

# The attributes that make up an object's identity (background and pose are view variation).
VISIBLE_ATTRIBUTES: tuple[str, ...] = ("shape", "colour", "pattern", "accessory")

RGB: dict[str, tuple[int, int, int]] = {
    "red": (210, 50, 45), "orange": (240, 140, 30), "yellow": (240, 210, 40), "green": (60, 160, 70),
    "teal": (30, 150, 150), "blue": (45, 90, 200), "purple": (130, 70, 180), "pink": (240, 130, 180),
    "brown": (130, 85, 50), "grey": (130, 130, 135), "black": (30, 30, 35), "white": (245, 245, 245),
}

# Where the object is: a phrase that ends a caption, and a noun phrase for edit instructions.
BACKGROUND_PHRASE: dict[str, str] = {
    "white": "on a plain white background",
    "beige": "on a plain beige background",
    "gradient": "in front of a sunset gradient",
    "grass": "on grass",
    "sky": "in the sky",
    "indoor": "indoors",
    "snow": "in the snow",
    "beach": "on a beach",
    "night": "at night",
}
BACKGROUND_NOUN: dict[str, str] = {
    "white": "a plain white background",
    "beige": "a plain beige background",
    "gradient": "a sunset gradient",
    "grass": "grass",
    "sky": "the sky",
    "indoor": "a room",
    "snow": "snow",
    "beach": "a beach",
    "night": "a night sky",
}


class ObjectSpec(BaseModel):
    """What an object looks like (identity) and where it stands (background)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    shape: Shape
    colour: BodyColour
    pattern: Pattern = "plain"
    accessory: Accessory = "none"
    accessory_colour: AccessoryColour | None = None
    background: Background = "white"

    @model_validator(mode="after")
    def _accessory_is_visible(self) -> ObjectSpec:
        if (self.accessory == "none") != (self.accessory_colour is None):
            raise ValueError("accessory_colour must be set exactly when an accessory is worn")
        if self.accessory_colour == self.colour:
            # Same colour as the body would make the accessory invisible, so not a visible attribute.
            raise ValueError("accessory_colour must differ from the body colour")
        return self

    def replace(self, **changes: object) -> ObjectSpec:
        """A validated copy with some fields changed."""
        return ObjectSpec.model_validate({**self.model_dump(), **changes})


class Pose(BaseModel):
    """View variation: rotation in degrees, relative scale, shift as a fraction of the image side."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rotation_deg: float = 0.0
    scale: float = Field(default=1.0, gt=0.0)
    dx: float = 0.0
    dy: float = 0.0


def sample_pose(rng: np.random.Generator) -> Pose:
    return Pose(
        rotation_deg=float(rng.uniform(-25.0, 25.0)),
        scale=float(rng.uniform(0.8, 1.05)),
        dx=float(rng.uniform(-0.06, 0.06)),
        dy=float(rng.uniform(-0.05, 0.05)),
    )


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return str(options[int(rng.integers(len(options)))])


def random_accessory(
    rng: np.random.Generator, body_colour: str, allow_none: bool = True
) -> tuple[str, str | None]:
    """An (accessory, accessory_colour) pair whose colour differs from the body."""
    accessory = _pick(rng, ACCESSORIES if allow_none else WORN_ACCESSORIES)
    if accessory == "none":
        return "none", None
    return accessory, _pick(rng, [c for c in ACCESSORY_COLOURS if c != body_colour])


def random_spec(rng: np.random.Generator, background: str | None = None) -> ObjectSpec:
    colour = _pick(rng, BODY_COLOURS)
    accessory, accessory_colour = random_accessory(rng, colour)
    return ObjectSpec(
        shape=_pick(rng, SHAPES),
        colour=colour,
        pattern=_pick(rng, PATTERNS),
        accessory=accessory,
        accessory_colour=accessory_colour,
        background=background if background is not None else _pick(rng, BACKGROUNDS),
    )


def accessory_words(accessory: str, accessory_colour: str | None) -> str:
    """'red hat', 'red glasses' or 'none' (no article: the form used as an attribute value)."""
    return "none" if accessory == "none" else f"{accessory_colour} {accessory}"


def with_article(phrase: str) -> str:
    """'a red hat', 'an orange star', 'red glasses' (plural nouns take no article)."""
    if phrase.endswith("glasses"):
        return phrase
    return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"


def visible_attributes(spec: ObjectSpec) -> dict[str, str]:
    """The identity attributes, one value each (the accessory and its colour count as one)."""
    return {
        "shape": spec.shape,
        "colour": spec.colour,
        "pattern": spec.pattern,
        "accessory": accessory_words(spec.accessory, spec.accessory_colour),
    }


def differing_attributes(a: ObjectSpec, b: ObjectSpec) -> list[str]:
    """Names of the visible identity attributes in which two specs differ (background ignored)."""
    va, vb = visible_attributes(a), visible_attributes(b)
    return [key for key in VISIBLE_ATTRIBUTES if va[key] != vb[key]]


def attribute_facts(spec: ObjectSpec) -> dict[str, str]:
    """Every attribute an observer can read off an image of the object."""
    return {**visible_attributes(spec), "background": spec.background}


def object_phrase(spec: ObjectSpec) -> str:
    """'a striped teal star wearing a red hat' (no background)."""
    adjectives = [] if spec.pattern == "plain" else [spec.pattern]
    phrase = with_article(" ".join([*adjectives, spec.colour, spec.shape]))
    if spec.accessory != "none":
        phrase += " wearing " + with_article(accessory_words(spec.accessory, spec.accessory_colour))
    return phrase


def caption(spec: ObjectSpec, item_phrase: str | None = None) -> str:
    """'a striped teal star wearing a red hat on grass'; `item_phrase` adds 'next to <item>'."""
    parts = [object_phrase(spec)]
    if item_phrase:
        parts.append(f"next to {item_phrase}")
    parts.append(BACKGROUND_PHRASE[spec.background])
    return " ".join(parts)
