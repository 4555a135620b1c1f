"""Driver-side decisions around the distributed validation pass.

Before reading: parse every concept.json, pick the objects worth reading and refuse the ones the
listing already condemns (empty, too big, compressed containers that Ray would inflate on read).
After validation: drop exact duplicates, count valid images per concept, mine negatives, and turn
each surviving concept into a ``ConceptMaterial`` for the example planner.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from omnipersona.concepts import upload_schema
from omnipersona.concepts.upload_schema import EDITS_DIR, IMAGES_DIR, NEGATIVES_DIR
from omnipersona.identity import ConceptId
from pipelines.ingest.augment import rng_for
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.examples import ConceptMaterial
from pipelines.ingest.features import mine_hard_negatives
from pipelines.ingest.holdout import held_out_digests, holdout_note
from pipelines.ingest.quarantine import QuarantineRow, Reason, Source
from pipelines.ingest.snapshot import ConceptSnapshot, Snapshot, SnapshotObject
from pipelines.storage import read_bytes

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Candidate:
    """One object to read and validate."""

    source: Source
    concept_id: ConceptId | None  # None for the shared negative pool
    key: str  # relative to its root, as reported in the quarantine
    rel: str  # relative to the concept folder ("images/0.png"), or the pool key
    obj: SnapshotObject

    @property
    def role_dir(self) -> str:
        return self.rel.split("/", 1)[0]

    def reject(self, reason: Reason, message: str) -> QuarantineRow:
        return _row(self.source, self.concept_id, self.key, reason, message)


def _row(source: Source, concept_id: ConceptId | None, key: str, reason: Reason, message: str) -> QuarantineRow:
    tenant, concept = (concept_id.tenant, concept_id.concept) if concept_id else (None, None)
    return QuarantineRow(source=source, tenant=tenant, concept=concept, key=key, reason=reason, message=message)


@dataclass
class Validated:
    """What the validation pass reported for one path."""

    sha256: str
    reason: Reason | None
    message: str
    feature: np.ndarray


@dataclass
class Selection:
    descriptions: dict[ConceptId, upload_schema.ConceptDescription] = field(default_factory=dict)
    candidates: list[Candidate] = field(default_factory=list)
    rows: list[QuarantineRow] = field(default_factory=list)


# Edits are listed once, in concept.json: a side manifest such as edits/edits.json is refused too.
UNREFERENCED_EDIT = 'not named by any edit triplet in concept.json ("edits" there is the only list of edits ingest reads)'


def _concept_candidate(c: ConceptSnapshot, obj: SnapshotObject) -> Candidate:
    return Candidate("uploads", c.id, f"{c.concept_key}/{obj.key}", obj.key, obj)


def _listing_problem(obj: SnapshotObject, cfg: IngestConfig) -> tuple[Reason, str] | None:
    if obj.size == 0:
        return Reason.EMPTY_FILE, "file is empty (0 bytes)"
    if obj.size > cfg.limits.max_file_bytes:
        return Reason.FILE_TOO_LARGE, f"{obj.size} bytes, over the limit of {cfg.limits.max_file_bytes}"
    try:
        codec = pa.Codec.detect(obj.key).name  # the same suffix test Ray uses to decompress on read
    except (TypeError, ValueError):
        codec = None
    if codec:
        return Reason.COMPRESSED_FILE, f"looks like a {codec} container by its name; images must be uploaded as-is"
    return None


def _read_description(fs, c: ConceptSnapshot, cfg: IngestConfig) -> upload_schema.ConceptDescription | QuarantineRow:
    obj = c.get(upload_schema.CONCEPT_JSON)

    def reject(reason: Reason, message: str) -> QuarantineRow:
        return _row("uploads", c.id, f"{c.concept_key}/{upload_schema.CONCEPT_JSON}", reason, message)

    if obj is None:
        return reject(Reason.MISSING_CONCEPT_JSON, "the concept folder has no concept.json")
    if obj.size > cfg.limits.max_concept_json_bytes:
        return reject(Reason.BAD_CONCEPT_JSON, f"concept.json is {obj.size} bytes, over {cfg.limits.max_concept_json_bytes}")
    try:
        data = read_bytes(fs, obj.path)
    except OSError as exc:
        return reject(Reason.READ_ERROR, f"cannot read concept.json: {exc}")
    try:
        return upload_schema.parse_concept_json(data, max_bytes=cfg.limits.max_concept_json_bytes)
    except upload_schema.DisplayNameError as exc:
        return reject(Reason.BAD_DISPLAY_NAME, str(exc))
    except upload_schema.ConceptDescriptionError as exc:
        return reject(Reason.BAD_CONCEPT_JSON, str(exc))
    except Exception as exc:  # a reader bug must not stop the job on one user's file: refuse it, loudly
        log.exception("unexpected error parsing %s", obj.path)
        return reject(Reason.BAD_CONCEPT_JSON, f"concept.json could not be parsed ({type(exc).__name__})")


def select_objects(snapshot: Snapshot, fs, cfg: IngestConfig) -> Selection:
    """Parse concept.json files (in threads) and choose which objects the validation pass reads."""
    out = Selection()
    with ThreadPoolExecutor(max_workers=cfg.read_threads) as pool:
        descriptions = list(pool.map(lambda c: _read_description(fs, c, cfg), snapshot.concepts))
    for c, description in zip(snapshot.concepts, descriptions):
        if isinstance(description, QuarantineRow):
            out.rows.append(description)
            continue
        out.descriptions[c.id] = description
        referenced = {path for e in description.edits for path in (e.source, e.target)}
        for rel in sorted(referenced):
            if c.get(rel) is None:
                out.rows.append(
                    _row("uploads", c.id, f"{c.concept_key}/{rel}", Reason.MISSING_EDIT_FILE,
                         "named by an edit triplet in concept.json but not uploaded")
                )
        for obj in c.objects:
            candidate = _concept_candidate(c, obj)
            if candidate.role_dir == EDITS_DIR and obj.key not in referenced:
                out.rows.append(candidate.reject(Reason.UNEXPECTED_OBJECT, UNREFERENCED_EDIT))
            elif candidate.role_dir in (IMAGES_DIR, NEGATIVES_DIR, EDITS_DIR):
                problem = _listing_problem(obj, cfg)
                if problem:
                    out.rows.append(candidate.reject(*problem))
                else:
                    out.candidates.append(candidate)
    for obj in snapshot.negatives:
        candidate = Candidate("negatives", None, obj.key, obj.key, obj)
        problem = _listing_problem(obj, cfg)
        if problem:
            out.rows.append(candidate.reject(*problem))
        else:
            out.candidates.append(candidate)
    return out


def merge_results(candidates: list[Candidate], raw: dict[str, tuple[int, Validated]]) -> dict[str, Validated]:
    """One result per candidate; what vanished or changed size since the listing is refused."""
    results: dict[str, Validated] = {}
    for cand in candidates:
        path = cand.obj.path
        if path not in raw:
            results[path] = Validated("", Reason.CHANGED_SINCE_SNAPSHOT, "object disappeared after the snapshot", np.zeros(0))
            continue
        nbytes, validated = raw[path]
        if nbytes != cand.obj.size:
            message = f"size is {nbytes} bytes, the snapshot listed {cand.obj.size}"
            validated = Validated(validated.sha256, Reason.CHANGED_SINCE_SNAPSHOT, message, validated.feature)
        results[path] = validated
    return results


def _valid_unique(
    candidates: list[Candidate], results: dict[str, Validated], rows: list[QuarantineRow], seen: dict[str, str]
) -> list[Candidate]:
    """Valid candidates in key order, without exact duplicates (first key wins; ``seen`` maps
    sha256 -> kept key and may be pre-filled to forbid content that is already used elsewhere)."""
    kept = []
    for cand in sorted(candidates, key=lambda c: c.key):
        res = results[cand.obj.path]
        if res.reason is not None:
            rows.append(cand.reject(res.reason, res.message))
        elif res.sha256 in seen:
            rows.append(cand.reject(Reason.DUPLICATE_IMAGE, f"same content as {seen[res.sha256]}"))
        else:
            seen[res.sha256] = cand.key
            kept.append(cand)
    return kept


def _valid(candidates: list[Candidate], results: dict[str, Validated], rows: list[QuarantineRow]) -> list[Candidate]:
    kept = []
    for cand in sorted(candidates, key=lambda c: c.key):
        res = results[cand.obj.path]
        if res.reason is not None:
            rows.append(cand.reject(res.reason, res.message))
        else:
            kept.append(cand)
    return kept


def decide(
    snapshot: Snapshot, selection: Selection, results: dict[str, Validated], cfg: IngestConfig
) -> tuple[list[ConceptMaterial], list[QuarantineRow]]:
    """Apply per-object results and per-concept rules; build the planner's input."""
    rows: list[QuarantineRow] = []
    by_concept: dict[ConceptId, dict[str, list[Candidate]]] = {}
    pool: list[Candidate] = []
    for cand in selection.candidates:
        if cand.concept_id is None:
            pool.append(cand)
        else:
            by_concept.setdefault(cand.concept_id, {}).setdefault(cand.role_dir, []).append(cand)

    pool_ok = _valid_unique(pool, results, rows, {})
    accepted: dict[ConceptId, dict[str, list[Candidate]]] = {}
    for c in snapshot.concepts:
        if c.id not in selection.descriptions:
            continue
        groups = by_concept.get(c.id, {})
        seen: dict[str, str] = {}
        images = _valid_unique(groups.get(IMAGES_DIR, []), results, rows, seen)
        negatives = _valid_unique(groups.get(NEGATIVES_DIR, []), results, rows, dict(seen))
        edits = _valid(groups.get(EDITS_DIR, []), results, rows)  # one file may serve several triplets
        if len(images) < cfg.limits.min_images:
            message = f"{len(images)} valid image(s) of {c.image_count} uploaded; at least {cfg.limits.min_images} needed"
            rows.append(_row("uploads", c.id, f"{c.concept_key}/", Reason.TOO_FEW_IMAGES, message))
            continue
        accepted[c.id] = {IMAGES_DIR: images, NEGATIVES_DIR: negatives, EDITS_DIR: edits}

    def sha(cand: Candidate) -> str:
        return results[cand.obj.path].sha256

    def features(cands: list[Candidate]) -> np.ndarray:
        return np.stack([results[x.obj.path].feature for x in cands]) if cands else np.zeros((0, 1), np.float32)

    if snapshot.gate_holdout_every != cfg.gate_holdout_every:
        raise ValueError(f"the snapshot was taken with gate_holdout_every={snapshot.gate_holdout_every}, the ingest config "
                         f"says {cfg.gate_holdout_every}: their data digests would disagree")
    data_digests = snapshot.digests()
    images_by_tenant: dict[str, list[Candidate]] = {}
    for concept_id, groups in sorted(accepted.items()):
        images_by_tenant.setdefault(concept_id.tenant, []).extend(groups[IMAGES_DIR])
    # The gate's pictures (pipelines/ingest/holdout.py): no training example of their concept shows
    # their bytes, and no concept gets them as negatives.
    held = {concept_id: held_out_digests([sha(x) for x in groups[IMAGES_DIR]], cfg.gate_holdout_every)
            for concept_id, groups in accepted.items()}
    all_held = set().union(*held.values()) if held else set()

    materials = []
    for concept_id, groups in sorted(accepted.items()):
        description = selection.descriptions[concept_id]
        own_hashes = {sha(x) for x in groups[IMAGES_DIR]}
        positives = [x for x in groups[IMAGES_DIR] if sha(x) not in held[concept_id]]
        held_out = [x for x in groups[IMAGES_DIR] if sha(x) in held[concept_id]]
        tenants = sorted(images_by_tenant) if cfg.negatives_from_other_tenants else [concept_id.tenant]
        others = [x for t in tenants for x in images_by_tenant[t] if x.concept_id != concept_id]
        # A negative with the same bytes as one of the concept's own images would teach "no" on a positive.
        not_negative = own_hashes | all_held
        candidates = [x for x in pool_ok + others if sha(x) not in not_negative]
        notes = [holdout_note(len(groups[IMAGES_DIR]), len(held_out), cfg.gate_holdout_every)] if cfg.gate_holdout_every else []
        if len(candidates) > cfg.negative_candidates:  # bound the per-concept cost at scale
            rng = rng_for("candidates", cfg.seed, concept_id.key)
            picked = rng.choice(len(candidates), cfg.negative_candidates, replace=False)
            notes.append(f"{len(candidates)} negative candidates, a seeded sample of {cfg.negative_candidates} considered "
                         "(ingest.negative_candidates)")
            candidates = [candidates[i] for i in sorted(picked)]
        mined = mine_hard_negatives(
            features(positives), features(candidates), [x.obj.path for x in candidates], cfg.hard_negatives_per_concept
        )
        edit_ok = {x.rel: x for x in groups[EDITS_DIR]}
        edits: dict[bool, list[tuple[str, str, str]]] = {False: [], True: []}  # shows a held-out image -> triplets
        for e in description.edits:
            if e.source in edit_ok and e.target in edit_ok:
                src, tgt = edit_ok[e.source], edit_ok[e.target]
                edits[bool({sha(src), sha(tgt)} & held[concept_id])].append((src.obj.path, tgt.obj.path, e.instruction))
        materials.append(
            ConceptMaterial(
                id=concept_id,
                digest=data_digests[concept_id.key],
                spec=description,
                positives=[x.obj.path for x in positives],
                hard_negatives=[x.obj.path for x in groups[NEGATIVES_DIR] if sha(x) not in all_held] + mined,
                random_negatives=[x.obj.path for x in candidates],
                edits=edits[False],
                notes=notes,
                held_out=[x.obj.path for x in held_out],
                held_out_edits=edits[True],
            )
        )
    return materials, rows


def expected_hashes(results: dict[str, Validated]) -> dict[str, str]:
    return {path: r.sha256 for path, r in results.items() if r.reason is None}
