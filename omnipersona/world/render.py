"""Render an `ObjectSpec` (plus optional item icon) to an RGB image, deterministically from a seed.

Layout: the background fills the image; the object sits near the centre, posed (rotation, scale,
shift); its pattern and accessory live in the object's own frame, so they turn with it; an item
icon, when given, sits in the bottom-right corner ("next to" the object).

Seeds: one seed gives two independent streams, the background texture and the pose. Rendering
the same seed with a changed spec therefore keeps the pose and the texture: that is how edit
pairs (same scene, one change) are made.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

from omnipersona.world import sdf
from omnipersona.world.attributes import RGB, ObjectSpec, Pose, sample_pose
from omnipersona.world.backgrounds import Canvas, background_canvas
from omnipersona.world.icons import icon_layers
from omnipersona.world.items import Item
from omnipersona.world.sdf import Field

SeedLike = int | np.random.Generator

OBJECT_RADIUS = 0.26  # object frame unit, as a fraction of the image side, at scale 1
OBJECT_CENTRE = (0.5, 0.56)  # a little low, to leave room for hats
ICON_CENTRE = (0.85, 0.83)
ICON_RADIUS = 0.14
_BACKGROUND_STREAM, _POSE_STREAM = 1, 2


def scene_seed(rng_or_seed: SeedLike) -> int:
    """The integer seed of a scene; a Generator is consumed once."""
    if isinstance(rng_or_seed, np.random.Generator):
        return int(rng_or_seed.integers(2**63))
    if isinstance(rng_or_seed, bool) or not isinstance(rng_or_seed, (int, np.integer)) or rng_or_seed < 0:
        raise ValueError(f"a seed must be a non-negative int or a numpy Generator, got {rng_or_seed!r}")
    return int(rng_or_seed)


def _stream(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream])


def _lobes(u: Field, v: Field) -> Field:
    """0.12 sin(3a + 0.6) + 0.07 sin(5a + 2.1) for the polar angle a, by multiple-angle
    polynomials of cos a and sin a (atan2 and sin are slow on this machine's numpy)."""
    r = np.sqrt(u * u + v * v) + np.float32(1e-6)
    c, s = u / r, v / r
    s2, c2 = s * s, c * c  # integer powers by multiplication: np.power is slow here
    sin3, cos3 = s * (3.0 - 4.0 * s2), c * (4.0 * c2 - 3.0)
    sin5, cos5 = s * (16.0 * s2 * s2 - 20.0 * s2 + 5.0), c * (16.0 * c2 * c2 - 20.0 * c2 + 5.0)
    lobes = 0.12 * (sin3 * np.cos(0.6) + cos3 * np.sin(0.6)) + 0.07 * (sin5 * np.cos(2.1) + cos5 * np.sin(2.1))
    return lobes.astype(np.float32)


def _shape_distance(shape: str, u: Field, v: Field) -> Field:
    if shape == "circle":
        return sdf.circle(u, v, 0.0, 0.0, 0.9)
    if shape == "square":
        return sdf.box(u, v, 0.0, 0.0, 0.7, 0.7) - 0.08  # slightly rounded corners
    if shape == "triangle":
        return sdf.star(u, v - 0.15, 3, 1.05, 0.525)  # equilateral, nudged down to look centred
    if shape == "star":
        return sdf.star(u, v, 5, 1.0, 0.48)
    if shape == "hexagon":
        return sdf.star(u, v, 6, 0.92, 0.92 * np.cos(np.pi / 6), phase_deg=0.0)  # flat top
    if shape == "heart":
        return sdf.union(
            sdf.circle(u, v, -0.42, -0.28, 0.48),
            sdf.circle(u, v, 0.42, -0.28, 0.48),
            sdf.convex_polygon(u, v, [(-0.86, -0.1), (0.86, -0.1), (0.0, 0.92)]),
        )
    if shape == "blob":
        # Fixed lobes (not seeded): a blob must look the same in every view of one concept.
        return (np.sqrt(u * u + v * v) - 0.82 * (1.0 + _lobes(u, v))) * 0.85
    if shape == "creature":
        return sdf.union(
            sdf.ellipse(u, v, 0.0, 0.1, 0.88, 0.78),
            sdf.circle(u, v, -0.52, -0.6, 0.2),
            sdf.circle(u, v, 0.52, -0.6, 0.2),
            sdf.ellipse(u, v, -0.4, 0.85, 0.24, 0.13),
            sdf.ellipse(u, v, 0.4, 0.85, 0.24, 0.13),
        )
    raise ValueError(f"unknown shape {shape!r}")


@lru_cache(maxsize=None)
def _top(shape: str) -> float:
    """Where the shape's outline crosses the vertical axis above the centre (hats sit there)."""
    v = np.linspace(-1.6, 0.0, 321, dtype=np.float32)
    inside = _shape_distance(shape, np.zeros_like(v), v) <= 0.0
    return float(v[int(np.argmax(inside))])


def _pattern_coverage(pattern: str, u: Field, v: Field, pixel: float) -> Field | None:
    def stripes(t: Field, period: float) -> Field:
        phase = t / period
        distance = (np.abs(phase - np.floor(phase) - 0.5) - 0.25) * period
        return sdf.coverage(distance, pixel)

    if pattern == "plain":
        return None
    if pattern == "striped":
        return stripes(v, 0.5)
    if pattern == "dotted":
        period = 0.55
        du, dv = u / period, v / period
        du, dv = du - np.floor(du) - 0.5, dv - np.floor(dv) - 0.5
        return sdf.coverage(np.sqrt(du * du + dv * dv) * period - 0.14, pixel)
    if pattern == "checkered":
        a, b = stripes(u, 0.7), stripes(v, 0.7)
        return a * (1.0 - b) + b * (1.0 - a)
    raise ValueError(f"unknown pattern {pattern!r}")


def _pattern_rgb(body: np.ndarray) -> np.ndarray:
    """A contrasting tone of the body colour: lighter on dark bodies, darker on light ones."""
    luminance = float(body @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32))
    return body + (255.0 - body) * 0.6 if luminance < 140.0 else body * 0.45


def _accessory_distance(accessory: str, u: Field, v: Field, body: Field, top: float) -> Field:
    face = 0.3 * top
    if accessory == "hat":
        return sdf.union(sdf.box(u, v, 0.0, top - 0.02, 0.52, 0.07), sdf.box(u, v, 0.0, top - 0.34, 0.3, 0.28))
    if accessory == "crown":
        base = top - 0.18
        return sdf.union(
            sdf.box(u, v, 0.0, top - 0.07, 0.42, 0.12),
            sdf.convex_polygon(u, v, [(-0.42, base), (-0.42, top - 0.46), (-0.18, base)]),
            sdf.convex_polygon(u, v, [(-0.15, base), (0.0, top - 0.52), (0.15, base)]),
            sdf.convex_polygon(u, v, [(0.42, base), (0.42, top - 0.46), (0.18, base)]),
        )
    if accessory == "bow":
        return sdf.union(
            sdf.convex_polygon(u, v, [(0.0, top), (-0.4, top - 0.24), (-0.4, top + 0.2)]),
            sdf.convex_polygon(u, v, [(0.0, top), (0.4, top - 0.24), (0.4, top + 0.2)]),
            sdf.circle(u, v, 0.0, top, 0.1),
        )
    if accessory == "glasses":
        return sdf.union(
            sdf.ring(u, v, -0.3, face, 0.2, 0.055),
            sdf.ring(u, v, 0.3, face, 0.2, 0.055),
            sdf.segment(u, v, (-0.12, face), (0.12, face), 0.045),
        )
    if accessory == "scarf":
        band = sdf.intersect(np.abs(v - 0.3) - 0.14, body - 0.07)
        return sdf.union(band, sdf.box(u, v, 0.32, 0.62, 0.1, 0.22))
    raise ValueError(f"unknown accessory {accessory!r}")


def _paint(canvas: Canvas, cover: Field, rgb: np.ndarray | tuple[int, ...]) -> None:
    colour = np.asarray(rgb, dtype=np.float32)
    canvas += (colour - canvas) * cover[..., None]


def _paint_outlined(canvas: Canvas, distance: Field, rgb: np.ndarray, pixel: float) -> None:
    _paint(canvas, sdf.coverage(distance, pixel), rgb)
    # A thin dark outline keeps the object readable on a background of similar colour.
    _paint(canvas, 0.8 * sdf.coverage(np.abs(distance) - 0.5 * pixel, pixel), np.asarray(rgb) * 0.5)


def draw_object(canvas: Canvas, spec: ObjectSpec, pose: Pose) -> None:
    """Paint the posed object, its pattern, face (creatures) and accessory onto `canvas`."""
    size = canvas.shape[0]
    radius = OBJECT_RADIUS * pose.scale
    x, y = sdf.pixel_grid(size)
    u, v = sdf.to_frame(x, y, OBJECT_CENTRE[0] + pose.dx, OBJECT_CENTRE[1] + pose.dy, radius, pose.rotation_deg)
    pixel = 1.0 / (size * radius)

    body = _shape_distance(spec.shape, u, v)
    base = np.asarray(RGB[spec.colour], dtype=np.float32)
    pattern = _pattern_coverage(spec.pattern, u, v, pixel)
    fill = np.broadcast_to(base, canvas.shape)
    if pattern is not None:
        fill = fill + (_pattern_rgb(base) - base) * pattern[..., None]
    fill = fill * (1.08 - 0.1 * np.clip(v, -1.0, 1.0))[..., None]  # light from above
    _paint(canvas, sdf.coverage(body, pixel), np.clip(fill, 0.0, 255.0))
    _paint(canvas, 0.8 * sdf.coverage(np.abs(body) - 0.5 * pixel, pixel), base * 0.5)

    top = _top(spec.shape)
    if spec.shape == "creature":
        face = 0.3 * top
        for side in (-0.3, 0.3):
            _paint(canvas, sdf.coverage(sdf.circle(u, v, side, face, 0.16), pixel), (250, 250, 250))
            _paint(canvas, sdf.coverage(sdf.circle(u, v, side, face + 0.03, 0.08), pixel), (20, 20, 25))
    if spec.accessory != "none":
        assert spec.accessory_colour is not None
        distance = _accessory_distance(spec.accessory, u, v, body, top)
        _paint_outlined(canvas, distance, np.asarray(RGB[spec.accessory_colour], dtype=np.float32), pixel)


def draw_item(canvas: Canvas, item: Item) -> None:
    """Paint the item's icon in the bottom-right corner."""
    size = canvas.shape[0]
    x, y = sdf.pixel_grid(size)
    u, v = sdf.to_frame(x, y, ICON_CENTRE[0], ICON_CENTRE[1], ICON_RADIUS)
    pixel = 1.0 / (size * ICON_RADIUS)
    main = RGB[item.colour] if item.colour else (0, 0, 0)
    for distance, rgb in icon_layers(item.kind, u, v, main):
        _paint_outlined(canvas, distance, np.asarray(rgb, dtype=np.float32), pixel)


def _to_image(canvas: Canvas) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8))


def render_background(background: str, size: int = 64, rng_or_seed: SeedLike = 0) -> Image.Image:
    """The scene alone: with an int seed, exactly the background behind `render(spec, size, seed)`."""
    seed = scene_seed(rng_or_seed)
    return _to_image(background_canvas(background, size, _stream(seed, _BACKGROUND_STREAM)))


def render(
    spec: ObjectSpec,
    size: int = 64,
    rng_or_seed: SeedLike = 0,
    *,
    pose: Pose | None = None,
    item: Item | None = None,
) -> Image.Image:
    """RGB image of the object on its background; pose drawn from the seed unless given."""
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    seed = scene_seed(rng_or_seed)
    canvas = background_canvas(spec.background, size, _stream(seed, _BACKGROUND_STREAM))
    draw_object(canvas, spec, pose if pose is not None else sample_pose(_stream(seed, _POSE_STREAM)))
    if item is not None:
        draw_item(canvas, item)
    return _to_image(canvas)
