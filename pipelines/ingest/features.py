"""Image features for hard-negative mining.

A feature function maps a list of RGB uint8 images (HxWx3, longer side <= ``feature_size``) to an
``(n, d)`` float array. The default is cheap and model-free (colour histogram + tiny grey thumbnail);
the training job can plug in the model's own vision encoder instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

FeatureFn = Callable[[list[np.ndarray]], np.ndarray]


def colour_histogram_features(images: list[np.ndarray], bins: int = 4, thumb: int = 8) -> np.ndarray:
    """Joint RGB histogram (bins^3) + ``thumb`` x ``thumb`` grey thumbnail, each L2-normalised."""
    out = np.zeros((len(images), bins**3 + thumb * thumb), dtype=np.float32)
    for i, image in enumerate(images):
        q = (image.astype(np.int32) * bins) // 256
        codes = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
        hist = np.bincount(codes.ravel(), minlength=bins**3).astype(np.float32)
        grey = np.asarray(Image.fromarray(image).convert("L").resize((thumb, thumb), Image.Resampling.BOX), np.float32)
        grey = grey.ravel() - grey.mean()
        out[i, : bins**3] = _unit(hist)
        out[i, bins**3 :] = _unit(grey)
    return out


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def normalise_rows(features: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.where(norms > 0, norms, 1.0)


def mine_hard_negatives(
    positives: np.ndarray, candidates: np.ndarray, candidate_ids: Sequence[str], k: int
) -> list[str]:
    """The ``k`` candidates most similar (max cosine over the positives) to the concept's images."""
    if len(candidate_ids) == 0 or len(positives) == 0:
        return []
    sims = normalise_rows(candidates.astype(np.float32)) @ normalise_rows(positives.astype(np.float32)).T
    best = sims.max(axis=1)
    order = sorted(range(len(candidate_ids)), key=lambda i: (-float(best[i]), candidate_ids[i]))
    return [candidate_ids[i] for i in order[:k]]
