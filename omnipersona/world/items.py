"""Private facts of a concept (never visible in its reference images) and the renderable items among them.

A concept owns a toy, a favourite food and a home (each has an icon, so a generated image can show
"<concept> with its toy") and a hobby (text only). Vocabularies are small on purpose: a judge can
check an answer by string match, and a PARG check by matching the icon.
"""
from __future__ import annotations

from typing import Literal, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, model_validator

from omnipersona.world.attributes import ACCESSORY_COLOURS, with_article

ItemCategory = Literal["toy", "favourite_food", "home"]
ITEM_CATEGORIES: tuple[str, ...] = get_args(ItemCategory)

TOYS = ("excavator", "ball", "kite", "teddy bear", "car", "robot", "rocket", "drum")
FOODS = ("carrots", "apples", "bananas", "cheese", "fish", "cookies", "pizza", "honey")
HOMES = ("lighthouse", "treehouse", "castle", "igloo", "windmill", "barn", "tent", "houseboat")
HOBBIES = ("singing", "painting", "swimming", "reading", "dancing", "gardening", "skating", "juggling")

KINDS_BY_CATEGORY: dict[str, tuple[str, ...]] = {"toy": TOYS, "favourite_food": FOODS, "home": HOMES}

# Private attribute names as they appear in upload `attributes` and eval manifests.
PRIVATE_ATTRIBUTES: tuple[str, ...] = ("toy", "favourite_food", "home", "hobby")


class Item(BaseModel):
    """A renderable private thing: a toy (with its own colour), a food or a home."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    category: ItemCategory
    kind: str
    colour: str | None = None  # toys only: the toy's colour is part of the fact ("black excavator")

    @model_validator(mode="after")
    def _known(self) -> Item:
        if self.kind not in KINDS_BY_CATEGORY[self.category]:
            raise ValueError(f"unknown {self.category}: {self.kind!r}")
        if (self.category == "toy") != (self.colour is not None):
            raise ValueError("toys have a colour, other items do not")
        if self.colour is not None and self.colour not in ACCESSORY_COLOURS:
            raise ValueError(f"unknown colour {self.colour!r}")
        return self

    @property
    def words(self) -> str:
        """The attribute value: 'black excavator', 'carrots', 'lighthouse'."""
        return f"{self.colour} {self.kind}" if self.colour else self.kind

    @property
    def phrase(self) -> str:
        """With an article, for sentences: 'a black excavator', 'some carrots', 'an igloo'."""
        return f"some {self.kind}" if self.category == "favourite_food" else with_article(self.words)


class PrivateFacts(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    toy: Item
    favourite_food: Item
    home: Item
    hobby: str

    def item(self, category: str) -> Item:
        return {"toy": self.toy, "favourite_food": self.favourite_food, "home": self.home}[category]

    def as_attributes(self) -> dict[str, str]:
        return {
            "toy": self.toy.words,
            "favourite_food": self.favourite_food.words,
            "home": self.home.words,
            "hobby": self.hobby,
        }


def random_item(rng: np.random.Generator, category: str) -> Item:
    kinds = KINDS_BY_CATEGORY[category]
    kind = kinds[int(rng.integers(len(kinds)))]
    colour = ACCESSORY_COLOURS[int(rng.integers(len(ACCESSORY_COLOURS)))] if category == "toy" else None
    return Item(category=category, kind=kind, colour=colour)


def random_private_facts(rng: np.random.Generator) -> PrivateFacts:
    return PrivateFacts(
        toy=random_item(rng, "toy"),
        favourite_food=random_item(rng, "favourite_food"),
        home=random_item(rng, "home"),
        hobby=HOBBIES[int(rng.integers(len(HOBBIES)))],
    )
