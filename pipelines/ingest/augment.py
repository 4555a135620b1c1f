"""Seeded, order-independent augmentation with numpy + PIL only (no torchvision).

Each example's randomness comes from ``seed_for(job seed, concept key, epoch, draw index)`` - a
hash, not a shared generator - so the result does not depend on which worker runs it or in what
order. Parameters are drawn first (as fractions of the image) and applied second, so an edit's
source and target get the identical crop and flip.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance

from pipelines.ingest.config import AugmentConfig


def seed_for(*parts: object) -> int:
    """A 64-bit seed from any tuple of parts (stable across processes, unlike ``hash``)."""
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")


def rng_for(*parts: object) -> np.random.Generator:
    return np.random.default_rng(seed_for(*parts))


@dataclass(frozen=True)
class AugmentParams:
    box: tuple[float, float, float, float]  # left, top, right, bottom as fractions of width/height
    flip: bool
    brightness: float
    contrast: float
    saturation: float


def sample_params(rng: np.random.Generator, width: int, height: int, cfg: AugmentConfig) -> AugmentParams:
    """Random resized crop (area fraction in ``crop_scale``, aspect in ``crop_ratio``), flip, jitter."""
    area = width * height
    box = None
    log_lo, log_hi = math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1])
    for _ in range(10):
        target_area = area * rng.uniform(*cfg.crop_scale)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            box = (left / width, top / height, (left + w) / width, (top + h) / height)
            break
    if box is None:  # e.g. very elongated images: central crop at the nearest allowed aspect
        aspect = min(max(width / height, cfg.crop_ratio[0]), cfg.crop_ratio[1])
        w, h = (width, round(width / aspect)) if width / height < aspect else (round(height * aspect), height)
        w, h = min(w, width), min(h, height)
        left, top = (width - w) // 2, (height - h) // 2
        box = (left / width, top / height, (left + w) / width, (top + h) / height)

    def factor(strength: float) -> float:
        return float(rng.uniform(1 - strength, 1 + strength)) if strength > 0 else 1.0

    return AugmentParams(
        box=box,
        flip=bool(rng.random() < cfg.flip_p),
        brightness=factor(cfg.brightness),
        contrast=factor(cfg.contrast),
        saturation=factor(cfg.saturation),
    )


def apply_params(image: np.ndarray, params: AugmentParams, size: int) -> np.ndarray:
    """Crop, resize to ``size`` x ``size``, flip and colour-jitter an RGB uint8 image."""
    h, w = image.shape[:2]
    left, top, right, bottom = params.box
    box = (round(left * w), round(top * h), max(round(right * w), round(left * w) + 1), max(round(bottom * h), round(top * h) + 1))
    pil = Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0)
    if params.flip:
        pil = pil.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if params.brightness != 1.0:
        pil = ImageEnhance.Brightness(pil).enhance(params.brightness)
    if params.contrast != 1.0:
        pil = ImageEnhance.Contrast(pil).enhance(params.contrast)
    if params.saturation != 1.0:
        pil = ImageEnhance.Color(pil).enhance(params.saturation)
    return np.asarray(pil, dtype=np.uint8).copy()


def augment(image: np.ndarray, size: int, cfg: AugmentConfig, *seed_parts: object) -> np.ndarray:
    """One augmented ``size`` x ``size`` view of ``image``, fully determined by ``seed_parts``."""
    h, w = image.shape[:2]
    params = sample_params(rng_for("augment", *seed_parts), w, h, cfg)
    return apply_params(image, params, size)
