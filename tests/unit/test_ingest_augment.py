"""Augmentation is deterministic per (seed, concept, epoch, index) and independent of order;
per-concept plans are balanced."""

from __future__ import annotations

from collections import Counter

import numpy as np
from PIL import Image

from omnipersona.concepts.upload_schema import ConceptDescription
from omnipersona.identity import ConceptId
from pipelines.ingest.augment import apply_params, augment, rng_for, sample_params
from pipelines.ingest.config import AugmentConfig, IngestConfig
from pipelines.ingest.examples import ConceptMaterial, plan_concept_epoch, plan_examples

CFG = AugmentConfig()
IMAGE = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)


def test_same_seed_parts_same_pixels_in_any_order():
    parts = [(0, "acme/maeve", epoch, index) for epoch in range(2) for index in range(6)]
    forward = {p: augment(IMAGE, 64, CFG, *p) for p in parts}
    backward = {p: augment(IMAGE, 64, CFG, *p) for p in reversed(parts)}
    for p in parts:
        assert forward[p].shape == (64, 64, 3) and forward[p].dtype == np.uint8
        assert np.array_equal(forward[p], backward[p])


def test_each_seed_part_changes_the_result():
    base = augment(IMAGE, 64, CFG, 0, "acme/maeve", 0, 0)
    for other in [(1, "acme/maeve", 0, 0), (0, "acme/bo", 0, 0), (0, "acme/maeve", 1, 0), (0, "acme/maeve", 0, 1)]:
        assert not np.array_equal(base, augment(IMAGE, 64, CFG, *other)), other


def test_parameters_stay_mild_and_in_range():
    for i in range(200):
        p = sample_params(rng_for(i), 120, 90, CFG)
        left, top, right, bottom = p.box
        assert 0 <= left < right <= 1 and 0 <= top < bottom <= 1
        assert 0.69 <= (right - left) * (bottom - top) <= 1.0
        assert all(0.9 <= f <= 1.1 for f in (p.brightness, p.contrast, p.saturation))


def test_edit_pairs_share_the_crop_and_flip():
    # A smooth scene at two resolutions: the same fractional crop must show the same content.
    yy, xx = np.mgrid[0:90, 0:120]
    scene = np.stack([xx * 2, yy * 2, 255 - xx - yy], axis=2).clip(0, 255).astype(np.uint8)
    half = np.asarray(Image.fromarray(scene).resize((60, 45), Image.Resampling.BILINEAR))
    params = sample_params(rng_for("edit"), 120, 90, CFG)
    other = sample_params(rng_for("other"), 120, 90, CFG)
    a, b = apply_params(scene, params, 32).astype(int), apply_params(half, params, 32).astype(int)
    assert np.abs(a - b).mean() < 4
    assert np.abs(a - apply_params(half, other, 32).astype(int)).mean() > 4 * np.abs(a - b).mean()


def test_extreme_aspect_ratio_falls_back_to_a_centre_crop():
    strip = np.zeros((10, 400, 3), np.uint8)
    assert augment(strip, 16, CFG, 0, "t/c", 0, 0).shape == (16, 16, 3)


def material(positives: int = 3, hard: int = 2, rand: int = 5, edits: int = 1) -> ConceptMaterial:
    spec = ConceptDescription(display_name="maeve", class_word="dog", attributes={"toy": "black excavator"}, facts=["maeve swims."])
    return ConceptMaterial(
        id=ConceptId("acme", "maeve"),
        digest="d" * 64,
        spec=spec,
        positives=[f"pos/{i}.png" for i in range(positives)],
        hard_negatives=[f"hard/{i}.png" for i in range(hard)],
        random_negatives=[f"rand/{i}.png" for i in range(rand)],
        edits=[(f"edits/{i}s.png", f"edits/{i}t.png", "Remove maeve.") for i in range(edits)],
    )


def ingest_cfg(**kw) -> IngestConfig:
    return IngestConfig(uploads_uri="/tmp/x", vit_size=64, vae_size=64, samples_per_task=6, **kw)


def test_plan_is_balanced_and_uses_images_evenly():
    rows, notes = plan_concept_epoch(material(), ingest_cfg(), epoch=0)
    assert not notes
    tasks = Counter(r["task"] for r in rows)
    assert tasks == {"recognition": 12, "vqa": 6, "text_qa": 6, "t2i": 6, "edit": 6}
    answers = Counter(r["answer"] for r in rows if r["task"] == "recognition")
    assert answers == {"Yes": 6, "No": 6}
    negatives = [r["image_path"] for r in rows if r["answer"] == "No"]
    assert sum(p.startswith("hard/") for p in negatives) == 3  # hard_negative_fraction 0.5
    positives = Counter(r["image_path"] for r in rows if r["answer"] == "Yes")
    assert sorted(positives.values()) == [2, 2, 2]
    assert all("<sks>" in r["prompt"] + r["answer"] for r in rows)
    assert not any("maeve" in (r["prompt"] + r["answer"]).lower() for r in rows)
    assert sorted(r["draw_index"] for r in rows) == list(range(len(rows)))


def test_plan_is_deterministic_and_differs_per_epoch():
    a, _ = plan_concept_epoch(material(), ingest_cfg(), epoch=0)
    b, _ = plan_concept_epoch(material(), ingest_cfg(), epoch=0)
    c, _ = plan_concept_epoch(material(), ingest_cfg(), epoch=1)
    assert a == b and a != c


def test_without_any_negative_recognition_is_left_out_with_a_note():
    rows, notes = plan_concept_epoch(material(hard=0, rand=0, edits=0), ingest_cfg(), epoch=0)
    assert "recognition" not in {r["task"] for r in rows}
    assert notes and "recognition" in notes[0]


def test_plan_examples_is_epoch_major():
    rows, stats = plan_examples([material()], ingest_cfg(epochs=2, tasks=("text_qa", "t2i")))
    assert [r["epoch"] for r in rows] == [0] * 12 + [1] * 12 + [2] * 12  # the gate's epoch last
    assert stats["acme/maeve"]["examples_per_epoch"] == {"text_qa": 6, "t2i": 6}
