"""Random world pictures with exact attribute labels: the data of the vision-encoder pretraining
(stage 1b) and of the evaluation probe (`omnipersona.pretrain.probe`), which draw from different streams."""
from __future__ import annotations

import numpy as np

from ..world import render, render_background
from ..world.attributes import ACCESSORIES, ACCESSORY_COLOURS, BACKGROUNDS, BODY_COLOURS, PATTERNS, SHAPES, random_spec
from ..world.items import FOODS, HOMES, ITEM_CATEGORIES, TOYS, Item, random_item

ITEM_KINDS: tuple[str, ...] = ("none", *TOYS, *FOODS, *HOMES)
HEADS: dict[str, tuple[str, ...]] = {
    "present": ("no", "yes"),
    "shape": SHAPES,
    "colour": BODY_COLOURS,
    "pattern": PATTERNS,
    "accessory_type": ACCESSORIES,
    "accessory_colour": ("none", *ACCESSORY_COLOURS),
    "background": BACKGROUNDS,
    "item": ITEM_KINDS,
}


def labelled_render(seed: int, index: int, size: int, stream: int, empty_fraction: float = 0.12, item_fraction: float = 0.4):
    """(image, labels) of picture `index`; a label is an index into `HEADS[name]`, -1 = not applicable."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, stream, index]))
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    scene_seed = int(rng.integers(2**31 - 1))
    labels = {name: -1 for name in HEADS}
    labels["background"] = BACKGROUNDS.index(background)
    if rng.random() < empty_fraction:  # an empty scene: what "remove <name>" should leave
        labels.update(present=0, item=0)
        return render_background(background, size, scene_seed), labels
    item: Item | None = None
    if rng.random() < item_fraction:
        item = random_item(rng, ITEM_CATEGORIES[int(rng.integers(3))])
    labels["item"] = ITEM_KINDS.index(item.kind) if item else 0
    spec = random_spec(rng, background=background)
    labels.update(
        present=1,
        shape=SHAPES.index(spec.shape),
        colour=BODY_COLOURS.index(spec.colour),
        pattern=PATTERNS.index(spec.pattern),
        accessory_type=ACCESSORIES.index(spec.accessory),
        accessory_colour=0 if spec.accessory_colour is None else 1 + ACCESSORY_COLOURS.index(spec.accessory_colour),
    )
    return render(spec, size, scene_seed, item=item), labels
