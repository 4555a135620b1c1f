"""The gate's own pictures: each concept keeps some of its images out of training for its gate.

A job without an eval set for a concept gates it on examples ingest planned from the concept's
uploads. Fresh augmentations of the training images would measure memory, not the concept, so
(`ingest.gate_holdout_every` = k, default 5; 0 = off):

- of a concept's n valid, unique images, ceil(n / k) are held out: those whose bytes have the
  smallest SHA-256 (a choice fixed by the data alone, and stable when images are added: they change
  it only where their digests sort among the smallest, or where the count grows), but never so many that fewer than
  `MIN_TRAINING_IMAGES` (3) stay for training — a concept with 3 images or fewer holds none out;
- held-out images (and edit triplets whose source or target has their bytes) appear in no training
  example of any concept: not as the concept's positives, VQA or text-to-image targets, edits, nor
  as another concept's negatives, and they do not steer hard-negative mining;
- the gate's epoch (`gate_epoch`, one past the training epochs) is planned from the held-out images
  alone; the train stage leaves it out and the evaluate stage reads only it (`gate_epochs`). A
  concept with nothing held out gets a gate epoch of fresh augmentations of its training images,
  and its summary says so;
- the rule is part of every concept's data digest (`data_digest`): changing it is a data change, so
  the job id changes and a rerun retrains instead of skipping.

With the rule off the gate scores the last ingest epoch, held out of training, when there are
several (new augmentations of the training images), else the training examples themselves.
"""
from __future__ import annotations

import hashlib
import math

from pipelines.ingest.config import IngestConfig

MIN_TRAINING_IMAGES = 3


def held_out_count(n_images: int, every: int) -> int:
    """How many of `n_images` the gate keeps: ceil(n / every), leaving at least MIN_TRAINING_IMAGES."""
    if every <= 0:
        return 0
    return max(0, min(math.ceil(n_images / every), n_images - MIN_TRAINING_IMAGES))


def held_out_digests(image_sha256s: list[str], every: int) -> set[str]:
    """The SHA-256s of the held-out images among a concept's (unique) image digests."""
    return set(sorted(image_sha256s)[:held_out_count(len(image_sha256s), every)])


def data_digest(uploads_digest: str, every: int) -> str:
    """A concept's data digest: its uploads' digest, with the hold-out rule folded in when it is on."""
    if every <= 0:
        return uploads_digest
    return hashlib.sha256(f"{uploads_digest}\x00gate_holdout_every={every}".encode()).hexdigest()


def gate_epoch(cfg: IngestConfig) -> int | None:
    """The epoch index of the gate's examples (planned from the held-out images); None when the rule is off."""
    return cfg.epochs if cfg.gate_holdout_every else None


def gate_epochs(cfg: IngestConfig) -> list[int]:
    """The ingest epochs the gate scores and training leaves out: the gate epoch when the rule is on,
    else the last ingest epoch when there are several, else none (the gate reads every epoch)."""
    epoch = gate_epoch(cfg)
    if epoch is not None:
        return [epoch]
    return [cfg.epochs - 1] if cfg.epochs > 1 else []


def holdout_note(n_images: int, n_held_out: int, every: int) -> str:
    """The concept's summary line about its gate pictures."""
    if n_held_out:
        return (f"gate: {n_held_out} of {n_images} images held out of training for the gate "
                f"(ingest.gate_holdout_every={every})")
    return (f"gate: no held-out pictures ({n_images} images; ingest.gate_holdout_every={every} leaves at least "
            f"{MIN_TRAINING_IMAGES} for training): its recognition and VQA gate metrics score fresh augmentations of "
            "its training images")
