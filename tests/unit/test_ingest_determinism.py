"""Ingest's examples are deterministic: two runs of the same uploads give the same rows, every field
of every row, however the plan is cut into batches (Ray Data hands `build_examples_batch` arbitrary
slices of the plan, in any order). Runs in process: no Ray cluster, a local folder."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from omnipersona.concepts.upload_schema import ConceptDescription
from omnipersona.identity import ConceptId
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.dataset import build_examples_batch
from pipelines.ingest.examples import ConceptMaterial, plan_examples
from pipelines.storage import filesystem_for

# The rows of the example dataset (pipelines/ingest/dataset.py), every one of them.
COLUMNS = {"concept_key", "task", "prompt", "answer", "image", "target_image", "data_digest", "epoch", "draw_index",
           "image_path", "target_path"}


def photo(path: Path, seed: int, size=(72, 56)) -> str:
    rng = np.random.default_rng(seed)
    w, h = size
    pixels = np.clip(rng.integers(0, 256, 3) + np.linspace(0, 60, w)[None, :, None] + rng.normal(0, 12, (h, w, 3)), 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return str(path)


def materials(root: Path) -> list[ConceptMaterial]:
    seeds = iter(range(100))
    out = []
    for name, word in (("maeve", "dog"), ("rex", "cat")):
        own = root / "acme" / name
        spec = ConceptDescription(display_name=name, class_word=word, attributes={"toy": "black excavator"},
                                  facts=[f"{name} swims."])
        out.append(ConceptMaterial(
            id=ConceptId("acme", name),
            digest=hashlib.sha256(name.encode()).hexdigest(),
            spec=spec,
            positives=[photo(own / f"images/{i}.png", next(seeds)) for i in range(3)],
            hard_negatives=[photo(root / f"pool/hard-{name}-{i}.png", next(seeds)) for i in range(2)],
            random_negatives=[photo(root / f"pool/rand-{name}-{i}.png", next(seeds)) for i in range(2)],
            edits=[(photo(own / "edits/src.png", next(seeds)), photo(own / "edits/tgt.png", next(seeds), (64, 64)),
                    f"Remove {name}.")],
        ))
    return out


def plan_with_hashes(mats: list[ConceptMaterial], cfg: IngestConfig) -> list[dict]:
    plan, _ = plan_examples(mats, cfg)
    for row in plan:  # what build_ingest attaches from validation
        for column in ("image", "target"):
            path = row[f"{column}_path"]
            row[f"{column}_sha256"] = hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else ""
    return plan


def run_examples(plan: list[dict], cfg: IngestConfig, batch_size: int, reverse: bool = False) -> list[dict]:
    """`build_examples_batch` over the plan in slices of `batch_size` (last slice first with `reverse`)."""
    fs, _ = filesystem_for(cfg.uploads_uri)
    slices = [plan[i : i + batch_size] for i in range(0, len(plan), batch_size)]
    rows = []
    for part in reversed(slices) if reverse else slices:
        out = build_examples_batch({k: np.asarray([r[k] for r in part]) for k in part[0]}, fs=fs, cfg=cfg)
        assert set(out) == COLUMNS
        assert all(len(column) == len(part) for column in out.values()), "a batch lost or gained rows"
        rows += [{k: out[k][i] for k in out} for i in range(len(part))]
    return rows


def key(row: dict) -> tuple:
    return str(row["concept_key"]), int(row["epoch"]), int(row["draw_index"])


def assert_same_examples(first: list[dict], second: list[dict]) -> None:
    """Same number of rows, the same keys once each, and per key every field equal (images bit for bit)."""
    assert len(first) == len(second)
    assert len({key(r) for r in first}) == len(first), "(concept, epoch, draw_index) must identify a row"
    for a, b in zip(sorted(first, key=key), sorted(second, key=key)):
        assert a.keys() == b.keys() == COLUMNS
        for name in COLUMNS:
            x, y = a[name], b[name]
            if name in ("image", "target_image"):
                assert x.dtype == y.dtype == np.uint8 and x.shape == y.shape, (key(a), name)
                assert np.array_equal(x, y), (key(a), name)
            else:
                assert type(x) is type(y) and x == y, (key(a), name, x, y)


def test_two_ingest_runs_give_the_same_examples_in_every_field_whatever_the_batching(tmp_path):
    mats = materials(tmp_path)
    cfg = IngestConfig(uploads_uri=str(tmp_path), vit_size=32, vae_size=48, samples_per_task=3, epochs=2)
    plan = plan_with_hashes(mats, cfg)
    again = plan_with_hashes(materials(tmp_path), cfg)  # a second run plans from scratch
    assert plan == again
    first = run_examples(plan, cfg, batch_size=len(plan))
    second = run_examples(again, cfg, batch_size=5, reverse=True)
    assert len(first) == len(plan) and {key(r) for r in first} == {key(r) for r in plan}
    assert {str(r["task"]) for r in first} == {"recognition", "vqa", "text_qa", "t2i", "edit"}
    assert_same_examples(first, second)
    # Not trivially equal: images are augmented per example (the epochs' draws of one file differ).
    by_path: dict[str, set[bytes]] = {}
    for r in first:
        if str(r["image_path"]):
            by_path.setdefault(str(r["image_path"]), set()).add(r["image"].tobytes())
    assert any(len(pixels) > 1 for pixels in by_path.values())
