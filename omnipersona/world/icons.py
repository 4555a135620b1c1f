"""Small icons for private items: each is a few distance-field primitives in a [-1, 1] box.

An icon only has to be recognisable as *that* item among the vocabulary (distinct silhouette and
colours), so a check can tell "with its toy" from "with some other thing".
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from omnipersona.world import sdf
from omnipersona.world.sdf import Field

RGB = tuple[int, int, int]
Layers = list[tuple[Field, RGB]]  # painted in order, later on top

DARK: RGB = (45, 45, 50)
WHITE: RGB = (248, 248, 248)


def _shade(rgb: RGB, factor: float) -> RGB:
    return tuple(int(np.clip(c * factor, 0, 255)) for c in rgb)  # type: ignore[return-value]


def _excavator(x: Field, y: Field, main: RGB) -> Layers:
    return [
        (sdf.box(x, y, -0.1, 0.62, 0.8, 0.16), DARK),
        (sdf.box(x, y, -0.15, 0.2, 0.55, 0.28), main),
        (sdf.box(x, y, -0.35, -0.28, 0.27, 0.22), main),
        (sdf.box(x, y, -0.35, -0.3, 0.15, 0.12), (170, 210, 235)),
        (sdf.segment(x, y, (0.2, 0.05), (0.7, -0.55), 0.09), main),
        (sdf.convex_polygon(x, y, [(0.55, -0.55), (0.95, -0.6), (0.8, -0.15)]), DARK),
    ]


def _ball(x: Field, y: Field, main: RGB) -> Layers:
    body = sdf.circle(x, y, 0.0, 0.0, 0.8)
    return [(body, main), (sdf.intersect(sdf.box(x, y, 0.0, 0.0, 1.0, 0.14), body), WHITE)]


def _kite(x: Field, y: Field, main: RGB) -> Layers:
    return [
        (sdf.segment(x, y, (0.0, 0.5), (0.35, 0.95), 0.05), DARK),
        (sdf.convex_polygon(x, y, [(0.0, -0.9), (0.55, -0.2), (0.0, 0.6), (-0.55, -0.2)]), main),
        (sdf.segment(x, y, (0.0, -0.85), (0.0, 0.55), 0.04), _shade(main, 0.5)),
    ]


def _teddy_bear(x: Field, y: Field, main: RGB) -> Layers:
    body = sdf.union(
        sdf.circle(x, y, 0.0, -0.35, 0.4),
        sdf.circle(x, y, -0.33, -0.72, 0.17),
        sdf.circle(x, y, 0.33, -0.72, 0.17),
        sdf.ellipse(x, y, 0.0, 0.45, 0.5, 0.45),
    )
    return [(body, main), (sdf.circle(x, y, 0.0, -0.25, 0.15), _shade(main, 1.4)),
            (sdf.circle(x, y, 0.0, -0.3, 0.06), DARK)]


def _car(x: Field, y: Field, main: RGB) -> Layers:
    return [
        (sdf.union(sdf.box(x, y, 0.0, 0.15, 0.85, 0.25), sdf.box(x, y, -0.05, -0.22, 0.45, 0.2)), main),
        (sdf.box(x, y, -0.05, -0.22, 0.33, 0.12), (170, 210, 235)),
        (sdf.circle(x, y, -0.5, 0.45, 0.2), DARK),
        (sdf.circle(x, y, 0.5, 0.45, 0.2), DARK),
    ]


def _robot(x: Field, y: Field, main: RGB) -> Layers:
    return [
        (sdf.segment(x, y, (0.0, -0.75), (0.0, -0.95), 0.04), DARK),
        (sdf.circle(x, y, 0.0, -0.93, 0.08), (230, 60, 50)),
        (sdf.box(x, y, 0.0, -0.45, 0.4, 0.3), main),
        (sdf.box(x, y, 0.0, 0.4, 0.5, 0.42), main),
        (sdf.circle(x, y, -0.17, -0.48, 0.09), WHITE),
        (sdf.circle(x, y, 0.17, -0.48, 0.09), WHITE),
    ]


def _rocket(x: Field, y: Field, main: RGB) -> Layers:
    return [
        (sdf.convex_polygon(x, y, [(-0.3, 0.3), (-0.6, 0.9), (-0.2, 0.7)]), (220, 60, 50)),
        (sdf.convex_polygon(x, y, [(0.3, 0.3), (0.6, 0.9), (0.2, 0.7)]), (220, 60, 50)),
        (sdf.ellipse(x, y, 0.0, 0.0, 0.3, 0.88), main),
        (sdf.circle(x, y, 0.0, -0.2, 0.14), (170, 210, 235)),
    ]


def _drum(x: Field, y: Field, main: RGB) -> Layers:
    return [
        (sdf.box(x, y, 0.0, 0.2, 0.7, 0.45), main),
        (sdf.ellipse(x, y, 0.0, -0.25, 0.7, 0.16), (235, 225, 200)),
        (sdf.segment(x, y, (-0.6, -0.9), (-0.15, -0.35), 0.05), (150, 100, 60)),
        (sdf.segment(x, y, (0.6, -0.9), (0.15, -0.35), 0.05), (150, 100, 60)),
    ]


def _carrots(x: Field, y: Field, main: RGB) -> Layers:
    green = (60, 150, 50)
    return [
        (sdf.segment(x, y, (0.0, -0.45), (-0.3, -0.9), 0.07), green),
        (sdf.segment(x, y, (0.0, -0.45), (0.0, -0.95), 0.07), green),
        (sdf.segment(x, y, (0.0, -0.45), (0.3, -0.9), 0.07), green),
        (sdf.convex_polygon(x, y, [(-0.32, -0.45), (0.32, -0.45), (0.0, 0.95)]), (240, 125, 25)),
    ]


def _apples(x: Field, y: Field, main: RGB) -> Layers:
    return [
        (sdf.segment(x, y, (0.0, -0.5), (0.1, -0.9), 0.06), (110, 70, 40)),
        (sdf.ellipse(x, y, 0.3, -0.75, 0.22, 0.1), (60, 150, 50)),
        (sdf.union(sdf.circle(x, y, -0.25, 0.15, 0.6), sdf.circle(x, y, 0.25, 0.15, 0.6)), (215, 35, 40)),
    ]


def _bananas(x: Field, y: Field, main: RGB) -> Layers:
    crescent = sdf.subtract(sdf.circle(x, y, 0.0, 0.0, 0.85), sdf.circle(x, y, 0.25, -0.35, 0.8))
    return [(crescent, (245, 215, 50))]


def _cheese(x: Field, y: Field, main: RGB) -> Layers:
    wedge = sdf.convex_polygon(x, y, [(-0.85, 0.6), (0.85, 0.6), (0.85, -0.55)])
    holes = sdf.union(sdf.circle(x, y, 0.45, 0.25, 0.12), sdf.circle(x, y, 0.1, 0.42, 0.09))
    return [(sdf.subtract(wedge, holes), (250, 200, 60))]


def _fish(x: Field, y: Field, main: RGB) -> Layers:
    body = sdf.union(
        sdf.ellipse(x, y, -0.15, 0.0, 0.62, 0.36),
        sdf.convex_polygon(x, y, [(0.35, 0.0), (0.9, -0.42), (0.9, 0.42)]),
    )
    return [(body, (110, 150, 185)), (sdf.circle(x, y, -0.5, -0.08, 0.08), DARK)]


def _cookies(x: Field, y: Field, main: RGB) -> Layers:
    spots = ((-0.3, -0.2), (0.25, -0.35), (0.1, 0.3), (-0.35, 0.35), (0.45, 0.15))
    chips = sdf.union(*(sdf.circle(x, y, cx, cy, 0.1) for cx, cy in spots))
    return [(sdf.circle(x, y, 0.0, 0.0, 0.8), (200, 150, 90)), (chips, (80, 45, 25))]


def _pizza(x: Field, y: Field, main: RGB) -> Layers:
    slice_ = sdf.convex_polygon(x, y, [(-0.75, -0.6), (0.75, -0.6), (0.0, 0.9)])
    pepperoni = sdf.union(
        sdf.circle(x, y, -0.25, -0.25, 0.13), sdf.circle(x, y, 0.25, -0.2, 0.13), sdf.circle(x, y, 0.0, 0.25, 0.12)
    )
    return [
        (slice_, (245, 200, 90)),
        (sdf.intersect(sdf.box(x, y, 0.0, -0.62, 0.85, 0.12), slice_ - 0.12), (190, 120, 50)),
        (pepperoni, (200, 50, 40)),
    ]


def _honey(x: Field, y: Field, main: RGB) -> Layers:
    return [
        (sdf.box(x, y, 0.0, 0.2, 0.55, 0.62), (225, 150, 30)),
        (sdf.box(x, y, 0.0, -0.52, 0.62, 0.13), (120, 80, 45)),
        (sdf.box(x, y, 0.0, 0.25, 0.4, 0.2), (250, 235, 190)),
    ]


def _lighthouse(x: Field, y: Field, main: RGB) -> Layers:
    tower = sdf.convex_polygon(x, y, [(-0.32, 0.95), (0.32, 0.95), (0.18, -0.45), (-0.18, -0.45)])
    stripes = sdf.intersect(tower, np.abs(((y * 2.5) % 1.0) - 0.5) - 0.25)
    return [
        (tower, (215, 45, 45)),
        (stripes, WHITE),
        (sdf.box(x, y, 0.0, -0.58, 0.2, 0.13), (250, 220, 80)),
        (sdf.convex_polygon(x, y, [(-0.28, -0.7), (0.28, -0.7), (0.0, -0.97)]), (120, 30, 30)),
    ]


def _treehouse(x: Field, y: Field, main: RGB) -> Layers:
    return [
        (sdf.box(x, y, 0.0, 0.5, 0.13, 0.47), (120, 80, 45)),
        (sdf.circle(x, y, 0.0, -0.3, 0.62), (55, 140, 55)),
        (sdf.box(x, y, 0.0, -0.05, 0.3, 0.2), (170, 95, 55)),
        (sdf.box(x, y, 0.0, -0.02, 0.08, 0.13), DARK),
    ]


def _castle(x: Field, y: Field, main: RGB) -> Layers:
    merlons = sdf.union(*(sdf.box(x, y, cx, -0.35, 0.1, 0.12) for cx in (-0.6, -0.2, 0.2, 0.6)))
    return [
        (sdf.union(sdf.box(x, y, 0.0, 0.35, 0.7, 0.55), merlons), (150, 150, 160)),
        (sdf.union(sdf.box(x, y, 0.0, 0.65, 0.17, 0.25), sdf.circle(x, y, 0.0, 0.4, 0.17)), DARK),
    ]


def _igloo(x: Field, y: Field, main: RGB) -> Layers:
    dome = sdf.intersect(sdf.circle(x, y, 0.0, 0.6, 0.9), y - 0.6)
    door = sdf.intersect(sdf.circle(x, y, 0.0, 0.6, 0.3), y - 0.6)
    block_line = sdf.intersect(dome, np.abs(y - 0.15) - 0.025)
    return [(dome, (225, 238, 250)), (block_line, (150, 180, 210)), (door, (60, 80, 110))]


def _windmill(x: Field, y: Field, main: RGB) -> Layers:
    blades = sdf.union(
        sdf.segment(x, y, (-0.6, -0.95), (0.6, 0.25), 0.08),
        sdf.segment(x, y, (0.6, -0.95), (-0.6, 0.25), 0.08),
    )
    return [
        (sdf.convex_polygon(x, y, [(-0.35, 0.95), (0.35, 0.95), (0.2, -0.3), (-0.2, -0.3)]), (235, 215, 175)),
        (blades, (120, 85, 60)),
        (sdf.circle(x, y, 0.0, -0.35, 0.09), DARK),
    ]


def _barn(x: Field, y: Field, main: RGB) -> Layers:
    return [
        (sdf.convex_polygon(x, y, [(-0.75, 0.9), (0.75, 0.9), (0.75, -0.1), (0.0, -0.75), (-0.75, -0.1)]),
         (185, 40, 35)),
        (sdf.box(x, y, 0.0, 0.5, 0.28, 0.4), WHITE),
        (sdf.box(x, y, 0.0, 0.5, 0.2, 0.32), (150, 30, 30)),
    ]


def _tent(x: Field, y: Field, main: RGB) -> Layers:
    return [
        (sdf.convex_polygon(x, y, [(-0.9, 0.85), (0.9, 0.85), (0.0, -0.85)]), (240, 150, 40)),
        (sdf.convex_polygon(x, y, [(-0.3, 0.85), (0.3, 0.85), (0.0, 0.1)]), (90, 50, 30)),
    ]


def _houseboat(x: Field, y: Field, main: RGB) -> Layers:
    return [
        (sdf.box(x, y, 0.0, 0.9, 1.0, 0.1), (60, 120, 190)),
        (sdf.convex_polygon(x, y, [(-0.95, 0.25), (0.95, 0.25), (0.65, 0.8), (-0.65, 0.8)]), (120, 80, 45)),
        (sdf.box(x, y, 0.0, -0.05, 0.45, 0.3), WHITE),
        (sdf.convex_polygon(x, y, [(-0.55, -0.3), (0.55, -0.3), (0.0, -0.75)]), (200, 55, 45)),
    ]


ICONS: dict[str, Callable[[Field, Field, RGB], Layers]] = {
    "excavator": _excavator, "ball": _ball, "kite": _kite, "teddy bear": _teddy_bear,
    "car": _car, "robot": _robot, "rocket": _rocket, "drum": _drum,
    "carrots": _carrots, "apples": _apples, "bananas": _bananas, "cheese": _cheese,
    "fish": _fish, "cookies": _cookies, "pizza": _pizza, "honey": _honey,
    "lighthouse": _lighthouse, "treehouse": _treehouse, "castle": _castle, "igloo": _igloo,
    "windmill": _windmill, "barn": _barn, "tent": _tent, "houseboat": _houseboat,
}


def icon_layers(kind: str, x: Field, y: Field, main: RGB) -> Layers:
    """The icon's layers in its own frame; `main` colours toys (other items have fixed colours)."""
    return ICONS[kind](x, y, main)
