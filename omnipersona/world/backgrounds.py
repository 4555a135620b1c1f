"""Background scenes: plain colours, a gradient and simple textured scenes (grass, sky, room...).

Each scene has a fixed look plus seeded texture (noise, clouds, stars, horizon height), so two
views of one scene differ a little, as photos of one place do.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

from omnipersona.world.sdf import pixel_grid

Canvas = np.ndarray  # float32 (size, size, 3) in 0..255


def _colour(rgb: tuple[float, float, float]) -> np.ndarray:
    return np.asarray(rgb, dtype=np.float32)


def _vertical_gradient(top: tuple[int, int, int], bottom: tuple[int, int, int], size: int) -> Canvas:
    _, y = pixel_grid(size)
    t = y[..., None]
    return (1.0 - t) * _colour(top) + t * _colour(bottom)


def _smooth_noise(rng: np.random.Generator, size: int, cells: tuple[int, int]) -> np.ndarray:
    """Zero-mean, unit-ish noise: a coarse random grid (rows, cols) upsampled bilinearly."""
    coarse = rng.standard_normal(cells).astype(np.float32)
    image = Image.fromarray(coarse).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.float32)


def _with_ground(sky: Canvas, ground: Canvas, horizon: float, size: int) -> Canvas:
    _, y = pixel_grid(size)
    blend = np.clip((y - horizon) * size + 0.5, 0.0, 1.0)[..., None]
    return sky * (1.0 - blend) + ground * blend


def _plain(rgb: tuple[int, int, int]) -> Callable[[int, np.random.Generator], Canvas]:
    def draw(size: int, rng: np.random.Generator) -> Canvas:
        return np.broadcast_to(_colour(rgb), (size, size, 3)).copy()

    return draw


def _gradient(size: int, rng: np.random.Generator) -> Canvas:
    return _vertical_gradient((255, 190, 120), (150, 90, 170), size)


def _grass(size: int, rng: np.random.Generator) -> Canvas:
    sky = _vertical_gradient((150, 200, 245), (205, 230, 250), size)
    blades = _smooth_noise(rng, size, (max(size // 6, 2), size))  # tall thin streaks
    patches = _smooth_noise(rng, size, (4, 4))
    ground = _colour((70, 150, 60)) + (14.0 * blades + 12.0 * patches)[..., None] * _colour((0.6, 1.0, 0.5))
    return _with_ground(sky, ground, float(rng.uniform(0.3, 0.42)), size)


def _sky(size: int, rng: np.random.Generator) -> Canvas:
    canvas = _vertical_gradient((90, 155, 235), (185, 215, 250), size)
    x, y = pixel_grid(size)
    for _ in range(int(rng.integers(2, 4))):
        cx, cy = rng.uniform(0.0, 1.0), rng.uniform(0.05, 0.9)
        a, b = rng.uniform(0.12, 0.25), rng.uniform(0.05, 0.09)
        puff = np.clip(1.0 - ((x - cx) / a) ** 2 - ((y - cy) / b) ** 2, 0.0, 1.0) ** 0.5
        canvas += (_colour((250, 250, 252)) - canvas) * puff[..., None]
    return canvas


def _indoor(size: int, rng: np.random.Generator) -> Canvas:
    wall = _colour((232, 222, 200)) + 5.0 * _smooth_noise(rng, size, (3, 3))[..., None]
    wall = np.broadcast_to(wall, (size, size, 3))
    _, y = pixel_grid(size)
    grain = _smooth_noise(rng, size, (max(size // 3, 2), 4))  # long horizontal grain
    planks = (np.abs(((y * 12.0) % 1.0) - 0.5) > 0.44).astype(np.float32)  # dark seams
    floor = _colour((165, 112, 70)) + (10.0 * grain - 35.0 * planks)[..., None]
    return _with_ground(wall, floor, float(rng.uniform(0.6, 0.7)), size)


def _snow(size: int, rng: np.random.Generator) -> Canvas:
    sky = _vertical_gradient((190, 200, 218), (222, 228, 238), size)
    ground = _colour((246, 248, 252)) + (4.0 * _smooth_noise(rng, size, (6, 6)))[..., None] * _colour(
        (1.0, 1.0, 0.4)
    )
    canvas = _with_ground(sky, ground, float(rng.uniform(0.38, 0.5)), size)
    flakes = rng.random((size, size)) < 0.02
    canvas[flakes] = 255.0
    return canvas


def _beach(size: int, rng: np.random.Generator) -> Canvas:
    sky = _vertical_gradient((120, 190, 245), (190, 225, 250), size)
    horizon = float(rng.uniform(0.3, 0.38))
    sea = _colour((40, 120, 180)) + 6.0 * _smooth_noise(rng, size, (8, 3))[..., None]
    sand = _colour((232, 210, 160)) + 7.0 * _smooth_noise(rng, size, (5, 5))[..., None]
    return _with_ground(_with_ground(sky, sea, horizon, size), sand, horizon + 0.12, size)


def _night(size: int, rng: np.random.Generator) -> Canvas:
    canvas = _vertical_gradient((15, 20, 55), (45, 45, 95), size)
    stars = rng.random((size, size)) < 0.015
    canvas[stars] = _colour((250, 245, 200))
    return canvas


SCENES: dict[str, Callable[[int, np.random.Generator], Canvas]] = {
    "white": _plain((242, 242, 238)),
    "beige": _plain((226, 210, 178)),
    "gradient": _gradient,
    "grass": _grass,
    "sky": _sky,
    "indoor": _indoor,
    "snow": _snow,
    "beach": _beach,
    "night": _night,
}


def background_canvas(background: str, size: int, rng: np.random.Generator) -> Canvas:
    """A fresh, writable float32 canvas of the scene."""
    return np.ascontiguousarray(SCENES[background](size, rng), dtype=np.float32)
