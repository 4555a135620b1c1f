"""Edit triplets (source image, instruction, target image) with an exact ground-truth target.

Source and target share the seed, hence the pose and the background texture: the target differs
from the source by exactly the instructed change, which no real editing dataset can promise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from PIL import Image

from omnipersona.world import seeds
from omnipersona.world.attributes import (
    BACKGROUND_NOUN,
    BACKGROUNDS,
    BODY_COLOURS,
    ObjectSpec,
    accessory_words,
    random_accessory,
    with_article,
)
from omnipersona.world.items import ITEM_CATEGORIES, Item, random_item
from omnipersona.world.render import render, render_background

EditKind = Literal["remove", "background", "accessory", "recolour", "add_item"]
EDIT_KINDS: tuple[str, ...] = get_args(EditKind)


@dataclass(frozen=True)
class EditTriplet:
    source: Image.Image
    instruction: str
    target: Image.Image
    kind: str
    source_spec: ObjectSpec
    target_spec: ObjectSpec | None  # None when the object was removed


def make_edit(
    spec: ObjectSpec,
    kind: str,
    subject: str,
    size: int = 64,
    seed: int = 0,
    item: Item | None = None,
) -> EditTriplet:
    """One edit of `spec`; `subject` names the object in the instruction ('maeve', 'the star').

    `item` is the thing added by an "add_item" edit (a random one when not given).
    """
    rng = seeds.rng_for(seed, seeds.EDIT)
    source = render(spec, size, seed)
    target_item: Item | None = None
    target_spec: ObjectSpec | None
    if kind == "remove":
        target_spec = None
        instruction = f"remove {subject}"
    elif kind == "background":
        background = str(rng.choice([b for b in BACKGROUNDS if b != spec.background]))
        target_spec = spec.replace(background=background)
        instruction = f"change the background to {BACKGROUND_NOUN[background]}"
    elif kind == "accessory":
        current = (spec.accessory, spec.accessory_colour)
        accessory, colour = current
        while (accessory, colour) == current:
            accessory, colour = random_accessory(rng, spec.colour, allow_none=False)
        target_spec = spec.replace(accessory=accessory, accessory_colour=colour)
        instruction = f"give {subject} {with_article(accessory_words(accessory, colour))}"
    elif kind == "recolour":
        colour = str(rng.choice([c for c in BODY_COLOURS if c not in (spec.colour, spec.accessory_colour)]))
        target_spec = spec.replace(colour=colour)
        instruction = f"make {subject} {colour}"
    elif kind == "add_item":
        target_item = item or random_item(rng, str(rng.choice(ITEM_CATEGORIES)))
        target_spec = spec
        instruction = f"add {target_item.phrase} next to {subject}"
    else:
        raise ValueError(f"unknown edit kind {kind!r}; known: {EDIT_KINDS}")

    if target_spec is None:
        target = render_background(spec.background, size, seed)
    else:
        target = render(target_spec, size, seed, item=target_item)
    return EditTriplet(source, instruction, target, kind, spec, target_spec)
