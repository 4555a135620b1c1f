"""Signed distance fields on pixel grids (negative inside), vectorised with numpy.

Shapes are drawn as distance fields rather than rasterised polygons: rotation, scale, clipping
and anti-aliasing then come from one formula (`coverage`) at any image size, in well under a
millisecond for 64x64.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

Field = np.ndarray


@lru_cache(maxsize=16)
def pixel_grid(size: int) -> tuple[Field, Field]:
    """Pixel-centre coordinates in image units [0, 1], (x, y) with y pointing down; read-only."""
    centres = (np.arange(size, dtype=np.float32) + 0.5) / size
    y, x = np.meshgrid(centres, centres, indexing="ij")
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def to_frame(
    x: Field, y: Field, cx: float, cy: float, radius: float, rotation_deg: float = 0.0
) -> tuple[Field, Field]:
    """Image coordinates -> a local frame centred on (cx, cy), `radius` image units per unit, rotated."""
    theta = np.deg2rad(rotation_deg)
    c, s = np.float32(np.cos(theta)), np.float32(np.sin(theta))
    px, py = x - np.float32(cx), y - np.float32(cy)
    return (c * px + s * py) / np.float32(radius), (-s * px + c * py) / np.float32(radius)


def _length(x: Field, y: Field) -> Field:
    # sqrt(x*x + y*y) is several times faster than np.hypot on small float32 arrays.
    return np.sqrt(x * x + y * y)


def coverage(distance: Field, pixel: float) -> Field:
    """Anti-aliased fraction of each pixel inside the shape; `pixel` = one pixel in frame units."""
    return np.clip(0.5 - distance / np.float32(pixel), 0.0, 1.0, dtype=np.float32)


def circle(x: Field, y: Field, cx: float, cy: float, r: float) -> Field:
    return _length(x - cx, y - cy) - r


def ring(x: Field, y: Field, cx: float, cy: float, r: float, half_width: float) -> Field:
    return np.abs(_length(x - cx, y - cy) - r) - half_width


def ellipse(x: Field, y: Field, cx: float, cy: float, a: float, b: float) -> Field:
    # Scaled-circle approximation: exact on the axes, good enough for soft rendering.
    return (_length((x - cx) / a, (y - cy) / b) - 1.0) * min(a, b)


def box(x: Field, y: Field, cx: float, cy: float, half_w: float, half_h: float) -> Field:
    qx = np.abs(x - cx) - half_w
    qy = np.abs(y - cy) - half_h
    outside = _length(np.maximum(qx, 0.0), np.maximum(qy, 0.0))
    return outside + np.minimum(np.maximum(qx, qy), 0.0)


def segment(x: Field, y: Field, a: tuple[float, float], b: tuple[float, float], r: float) -> Field:
    """A capsule of radius r around the segment a-b (a thick line)."""
    px, py = x - a[0], y - a[1]
    ex, ey = b[0] - a[0], b[1] - a[1]
    h = np.clip((px * ex + py * ey) / (ex * ex + ey * ey), 0.0, 1.0)
    return _length(px - ex * h, py - ey * h) - r


def convex_polygon(x: Field, y: Field, vertices: Sequence[tuple[float, float]]) -> Field:
    """Distance to a convex polygon as the largest distance to its edge lines.

    Exact inside and along the edges, mitred (slightly under-estimated) off the corners, which
    only sharpens the corners' anti-aliasing; a few numpy calls per edge instead of ~25 for the
    exact formula. Non-convex shapes are unions of convex pieces. Vertex order does not matter
    for the sign: normals are oriented away from the centroid.
    """
    v = np.asarray(vertices, dtype=np.float64)
    edges = np.roll(v, -1, axis=0) - v
    normals = np.stack([edges[:, 1], -edges[:, 0]], axis=1) / np.linalg.norm(edges, axis=1, keepdims=True)
    offsets = np.einsum("ij,ij->i", normals, v)
    if normals[0] @ v.mean(axis=0) > offsets[0]:  # centroid on the positive side: flip to outward
        normals, offsets = -normals, -offsets
    distance = None
    for (nx, ny), offset in zip(normals.astype(np.float32), offsets.astype(np.float32)):
        d = nx * x + ny * y - offset
        distance = d if distance is None else np.maximum(distance, d)
    assert distance is not None
    return distance


def star(x: Field, y: Field, points: int, outer: float, inner: float, phase_deg: float = -90.0) -> Field:
    """A star with `points` tips at radius `outer` and notches at radius `inner`, first tip at `phase_deg`.

    A regular n-gon is the star whose notches lie on its edges: inner = outer * cos(pi / n).
    Symmetry folds every pixel into one half-sector (tip at angle 0, notch at pi/n), so the cost
    is that of one edge; the fold uses dot products only (no atan2, which is slow here).
    """
    half = np.pi / points
    tips = np.deg2rad(phase_deg) + 2.0 * half * np.arange(points)
    dots = np.cos(tips).astype(np.float32)[:, None, None] * x + np.sin(tips).astype(np.float32)[:, None, None] * y
    squared_radius = x * x + y * y
    qx = dots.max(axis=0)  # component along the nearest tip direction
    qy = np.sqrt(np.maximum(squared_radius - qx * qx, 0.0))  # distance from that tip's axis
    tip = (outer, 0.0)
    notch = (float(inner * np.cos(half)), float(inner * np.sin(half)))
    # The mirror image of the edge (next half-sector) can be nearer, outside a concave notch.
    mc, ms = np.float32(np.cos(2.0 * half)), np.float32(np.sin(2.0 * half))
    mx, my = mc * qx + ms * qy, ms * qx - mc * qy
    distance = np.minimum(segment(qx, qy, tip, notch, 0.0), segment(mx, my, tip, notch, 0.0))
    outside = (notch[0] - tip[0]) * (qy - tip[1]) - (notch[1] - tip[1]) * (qx - tip[0]) < 0.0
    return np.where(outside, distance, -distance)


def union(*fields: Field) -> Field:
    out = fields[0]
    for f in fields[1:]:
        out = np.minimum(out, f)
    return out


def subtract(field: Field, cut: Field) -> Field:
    return np.maximum(field, -cut)


def intersect(a: Field, b: Field) -> Field:
    return np.maximum(a, b)
