"""The ingest stage: snapshot -> validate (Ray Data) -> decide -> plan -> streaming example dataset.

Two streaming passes over the files, never a groupby per concept:
1. validation: ``read_binary_files`` of the snapshotted paths, decoded and checked in
   ``map_batches``; a bad file becomes a row with a reason, not a crash. Only small per-file facts
   (hash, reason, feature vector) come back to the driver.
2. examples: the per-concept plan (text level, built on the driver) is mapped to rows; each batch
   reads the images it needs through the same injectable filesystem, checks they still hash as
   validated, augments them and emits the examples. Nothing is materialised.

Rows of the output dataset (concept key carried as a column):
    concept_key str "tenant/concept", task str, prompt str, answer str ("Yes"/"No" for recognition,
    "" for t2i/edit), image uint8 (vit_size, vit_size, 3), target_image uint8 (vae_size, vae_size, 3),
    data_digest str, epoch int, draw_index int, image_path / target_path str (source files, "" if none).
An absent image is an EMPTY array of shape (0, 0, 3) rather than None: Ray cannot concatenate a
block whose column is all None with a block of tensors; use :func:`image_or_none` to read it.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import numpy as np
import ray
import ray.data
from pydantic import BaseModel, model_validator

from omnipersona.identity import ConceptId
from pipelines.ingest.accept import Validated, decide, expected_hashes, merge_results, select_objects
from pipelines.ingest.augment import apply_params, rng_for, sample_params
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.examples import plan_examples
from pipelines.ingest.features import FeatureFn, colour_histogram_features
from pipelines.ingest.quarantine import QuarantineReport, Reason
from pipelines.ingest.snapshot import Snapshot, take_snapshot
from pipelines.ingest.validate import decode_rgb, validate_batch
from pipelines.storage import StorageConfig, filesystem_for, read_bytes

log = logging.getLogger(__name__)

EMPTY_IMAGE_SHAPE = (0, 0, 3)


class ConceptSummary(BaseModel):
    # Plain fields keep the JSON flat (and the key a plain column); `of` fills them from one ConceptId.
    tenant: str
    concept: str
    concept_key: str
    data_digest: str
    display_name: str
    class_word: str
    image_count: int  # valid, unique reference images
    held_out_image_count: int = 0  # of those, kept out of training for the gate (pipelines.ingest.holdout)
    uploaded_image_count: int  # objects under images/ in the snapshot
    examples_per_epoch: dict[str, int]
    notes: list[str]

    @classmethod
    def of(cls, concept_id: ConceptId, **fields) -> "ConceptSummary":
        return cls(tenant=concept_id.tenant, concept=concept_id.concept, concept_key=concept_id.key, **fields)

    @property
    def id(self) -> ConceptId:
        return ConceptId(self.tenant, self.concept)

    @model_validator(mode="after")
    def _key_is_the_pair(self) -> "ConceptSummary":
        if self.concept_key != self.id.key:
            raise ValueError(f"concept_key {self.concept_key!r} is not {self.id.key!r}")
        return self


@dataclass
class IngestResult:
    snapshot: Snapshot
    quarantine: QuarantineReport
    dataset: ray.data.Dataset  # lazy and streaming; one row per example
    concepts: list[ConceptSummary]  # the concepts that come through, sorted by key


def image_or_none(image: np.ndarray) -> np.ndarray | None:
    return image if image.size else None


# ---- pass 1: validation -------------------------------------------------------------------------


def _run_validation(paths: list[str], fs, cfg: IngestConfig, feature_fn: FeatureFn) -> dict[str, tuple[int, Validated]]:
    """(bytes read, result) per path; paths that vanished since the snapshot are absent."""
    results: dict[str, tuple[int, Validated]] = {}
    if not paths:
        return results
    ds = ray.data.read_binary_files(
        paths,
        filesystem=fs,
        include_paths=True,
        ignore_missing_paths=True,  # a file deleted after the snapshot is reported, not fatal
    ).map_batches(
        validate_batch,
        batch_size=cfg.validate_batch_size,
        fn_kwargs={"limits": cfg.limits, "feature_fn": feature_fn, "feature_size": cfg.feature_size},
    )
    for batch in ds.iter_batches(batch_size=256, batch_format="numpy"):
        for i, path in enumerate(batch["path"]):
            reason = Reason(batch["reason"][i]) if batch["reason"][i] else None
            validated = Validated(str(batch["sha256"][i]), reason, str(batch["message"][i]), np.asarray(batch["feature"][i]))
            results[str(path)] = (int(batch["nbytes"][i]), validated)
    return results


# ---- pass 2: examples ---------------------------------------------------------------------------


def build_examples_batch(batch: dict[str, np.ndarray], *, fs, cfg: IngestConfig) -> dict[str, np.ndarray]:
    """Read, check, augment: plan rows in, example rows out (rows whose file changed are dropped)."""
    work_side = 2 * max(cfg.vit_size, cfg.vae_size)
    cache: dict[str, np.ndarray | None] = {}

    def load(path: str, sha256: str) -> np.ndarray | None:
        if path not in cache:
            data = read_bytes(fs, path)
            if hashlib.sha256(data).hexdigest() != sha256:
                log.warning("%s changed after validation; its examples are left out", path)
                cache[path] = None
            else:
                cache[path] = decode_rgb(data, max_side=work_side)
        return cache[path]

    keep: list[int] = []
    images: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    empty = np.zeros(EMPTY_IMAGE_SHAPE, np.uint8)
    for i in range(len(batch["task"])):
        seed_parts = (cfg.seed, batch["concept_key"][i], int(batch["epoch"][i]), int(batch["draw_index"][i]))
        rng = rng_for("augment", *seed_parts)
        source = load(str(batch["image_path"][i]), str(batch["image_sha256"][i])) if batch["image_path"][i] else empty
        target = load(str(batch["target_path"][i]), str(batch["target_sha256"][i])) if batch["target_path"][i] else empty
        if source is None or target is None:
            continue
        keep.append(i)
        if not source.size and not target.size:  # text-only example
            images.append(empty)
            targets.append(empty)
            continue
        reference = source if source.size else target
        params = sample_params(rng, reference.shape[1], reference.shape[0], cfg.augment)
        # Same params for source and target: an edit pair stays aligned.
        images.append(apply_params(source, params, cfg.vit_size) if source.size else empty)
        targets.append(apply_params(target, params, cfg.vae_size) if target.size else empty)
    columns = ("concept_key", "task", "prompt", "answer", "data_digest", "epoch", "draw_index", "image_path", "target_path")
    out = {name: np.asarray(batch[name])[keep] for name in columns}
    out["image"] = images
    out["target_image"] = targets
    return out


def _example_dataset(plan: list[dict], fs, cfg: IngestConfig) -> ray.data.Dataset:
    if not plan:
        return ray.data.from_items([])
    return ray.data.from_items(plan).map_batches(
        build_examples_batch, batch_size=cfg.example_batch_size, fn_kwargs={"fs": fs, "cfg": cfg}
    )


# ---- the stage ----------------------------------------------------------------------------------


def build_ingest(
    cfg: IngestConfig, storage: StorageConfig | None = None, feature_fn: FeatureFn | None = None,
    snapshot: tuple[Snapshot, list] | None = None,
) -> IngestResult:
    """Snapshot, validate and plan; return the quarantine report and a lazy dataset of examples.
    `snapshot`: what `take_snapshot(cfg, storage)` returned, when the caller took it already (the
    job names itself after the snapshot before validating it)."""
    storage = storage or StorageConfig()
    feature_fn = feature_fn or colour_histogram_features
    fs, _ = filesystem_for(cfg.uploads_uri, storage)

    snapshot, layout_rows = snapshot or take_snapshot(cfg, storage)
    selection = select_objects(snapshot, fs, cfg)
    # One filesystem serves both roots: IngestConfig requires them to share a scheme.
    raw = _run_validation([cand.obj.path for cand in selection.candidates], fs, cfg, feature_fn)
    results = merge_results(selection.candidates, raw)

    materials, decision_rows = decide(snapshot, selection, results, cfg)
    plan, stats = plan_examples(materials, cfg)
    hashes = expected_hashes(results)
    for row in plan:
        row["image_sha256"] = hashes.get(row["image_path"], "")
        row["target_sha256"] = hashes.get(row["target_path"], "")

    quarantine = QuarantineReport(
        uploads_uri=cfg.uploads_uri, negatives_uri=cfg.negatives_uri, rows=layout_rows + selection.rows + decision_rows
    ).sorted()
    by_id = {c.id: c for c in snapshot.concepts}
    summaries = []
    for m in materials:
        summaries.append(
            ConceptSummary.of(
                m.id,
                data_digest=m.digest,
                display_name=m.spec.display_name,
                class_word=m.spec.class_word,
                image_count=len(m.positives) + len(m.held_out),
                held_out_image_count=len(m.held_out),
                uploaded_image_count=by_id[m.id].image_count,
                examples_per_epoch=stats[m.concept_key]["examples_per_epoch"],
                notes=stats[m.concept_key]["notes"],
            )
        )
    log.info(
        "ingest: %d concept folders listed, %d accepted, %d quarantine rows, %d examples planned",
        len(snapshot.concepts), len(summaries), len(quarantine.rows), len(plan),
    )
    return IngestResult(snapshot, quarantine, _example_dataset(plan, fs, cfg), summaries)
