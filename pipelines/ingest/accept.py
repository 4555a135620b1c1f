"""Driver-side decisions around the distributed validation pass.

Before reading: parse every concept.json, pick the objects worth reading and refuse the ones the
listing already condemns (empty, too big, compressed containers that Ray would inflate on read).
After validation: drop exact duplicates, count valid images per concept, mine negatives, and turn
each surviving concept into a ``ConceptMaterial`` for the example planner.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from pipelines.ingest.augment import rng_for
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.examples import ConceptMaterial
from pipelines.ingest.features import mine_hard_negatives
from pipelines.ingest.quarantine import QuarantineRow, Reason, Source
from pipelines.ingest.schema import ConceptSpec, ConceptSpecError, parse_concept_json
from pipelines.ingest.snapshot import ConceptSnapshot, Snapshot, SnapshotObject
from pipelines.storage import read_bytes


@dataclass(frozen=True)
class Candidate:
    """One object to read and validate."""

    source: Source
    tenant: str | None
    concept: str | None
    key: str  # relative to its root, as reported in the quarantine
    rel: str  # relative to the concept folder ("images/0.png"), or the pool key
    obj: SnapshotObject

    def reject(self, reason: Reason, message: str) -> QuarantineRow:
        return QuarantineRow(
            source=self.source, tenant=self.tenant, concept=self.concept, key=self.key, reason=reason, message=message
        )


@dataclass
class Validated:
    """What the validation pass reported for one path."""

    sha256: str
    reason: Reason | None
    message: str
    feature: np.ndarray


@dataclass
class Selection:
    specs: dict[str, ConceptSpec] = field(default_factory=dict)
    candidates: list[Candidate] = field(default_factory=list)
    rows: list[QuarantineRow] = field(default_factory=list)


def _concept_candidate(c: ConceptSnapshot, obj: SnapshotObject) -> Candidate:
    return Candidate("uploads", c.tenant, c.concept, f"{c.tenant}/{c.concept}/{obj.key}", obj.key, obj)


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


def _read_spec(fs, c: ConceptSnapshot, cfg: IngestConfig) -> ConceptSpec | QuarantineRow:
    obj = c.get("concept.json")
    key = f"{c.tenant}/{c.concept}/concept.json"

    def reject(reason: Reason, message: str) -> QuarantineRow:
        return QuarantineRow(source="uploads", tenant=c.tenant, concept=c.concept, key=key, reason=reason, message=message)

    if obj is None:
        return reject(Reason.MISSING_CONCEPT_JSON, "the concept folder has no concept.json")
    if obj.size > cfg.limits.max_concept_json_bytes:
        return reject(Reason.BAD_CONCEPT_JSON, f"concept.json is {obj.size} bytes, over {cfg.limits.max_concept_json_bytes}")
    try:
        return parse_concept_json(read_bytes(fs, obj.path))
    except ConceptSpecError as exc:
        return reject(Reason.BAD_CONCEPT_JSON, str(exc))
    except OSError as exc:
        return reject(Reason.READ_ERROR, f"cannot read concept.json: {exc}")


def select_objects(snapshot: Snapshot, fs, cfg: IngestConfig) -> Selection:
    """Parse concept.json files (in threads) and choose which objects the validation pass reads."""
    out = Selection()
    with ThreadPoolExecutor(max_workers=cfg.read_threads) as pool:
        specs = list(pool.map(lambda c: _read_spec(fs, c, cfg), snapshot.concepts))
    for c, spec in zip(snapshot.concepts, specs):
        if isinstance(spec, QuarantineRow):
            out.rows.append(spec)
            continue
        out.specs[c.concept_key] = spec
        referenced = {path for e in spec.edits for path in (e.source, e.target)}
        for rel in sorted(referenced):
            if c.get(rel) is None:
                key = f"{c.tenant}/{c.concept}/{rel}"
                out.rows.append(
                    QuarantineRow(
                        source="uploads", tenant=c.tenant, concept=c.concept, key=key,
                        reason=Reason.MISSING_EDIT_FILE, message="named by an edit triplet in concept.json but not uploaded",
                    )
                )
        for obj in c.objects:
            role_dir = obj.key.split("/", 1)[0]
            candidate = _concept_candidate(c, obj)
            if role_dir == "edits" and obj.key not in referenced:
                out.rows.append(candidate.reject(Reason.UNEXPECTED_OBJECT, "not named by any edit triplet in concept.json"))
            elif role_dir in ("images", "negatives", "edits"):
                problem = _listing_problem(obj, cfg)
                if problem:
                    out.rows.append(candidate.reject(*problem))
                else:
                    out.candidates.append(candidate)
    for obj in snapshot.negatives:
        candidate = Candidate("negatives", None, None, obj.key, obj.key, obj)
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
    by_concept: dict[str, dict[str, list[Candidate]]] = {}
    pool: list[Candidate] = []
    for cand in selection.candidates:
        if cand.source == "negatives":
            pool.append(cand)
        else:
            role_dir = cand.rel.split("/", 1)[0]
            by_concept.setdefault(f"{cand.tenant}/{cand.concept}", {}).setdefault(role_dir, []).append(cand)

    pool_ok = _valid_unique(pool, results, rows, {})
    accepted: dict[str, dict[str, list[Candidate]]] = {}
    for c in snapshot.concepts:
        if c.concept_key not in selection.specs:
            continue
        groups = by_concept.get(c.concept_key, {})
        seen: dict[str, str] = {}
        images = _valid_unique(groups.get("images", []), results, rows, seen)
        negatives = _valid_unique(groups.get("negatives", []), results, rows, dict(seen))
        edits = _valid(groups.get("edits", []), results, rows)  # one file may serve several triplets
        if len(images) < cfg.limits.min_images:
            rows.append(
                QuarantineRow(
                    source="uploads", tenant=c.tenant, concept=c.concept, key=f"{c.concept_key}/",
                    reason=Reason.TOO_FEW_IMAGES,
                    message=f"{len(images)} valid image(s) of {c.image_count} uploaded; at least {cfg.limits.min_images} needed",
                )
            )
            continue
        accepted[c.concept_key] = {"images": images, "negatives": negatives, "edits": edits}

    def sha(cand: Candidate) -> str:
        return results[cand.obj.path].sha256

    def features(cands: list[Candidate]) -> np.ndarray:
        return np.stack([results[x.obj.path].feature for x in cands]) if cands else np.zeros((0, 1), np.float32)

    digests = {c.concept_key: c.digest for c in snapshot.concepts}
    images_by_tenant: dict[str, list[Candidate]] = {}
    for concept_key, groups in sorted(accepted.items()):
        images_by_tenant.setdefault(concept_key.split("/", 1)[0], []).extend(groups["images"])

    materials = []
    for concept_key, groups in sorted(accepted.items()):
        tenant = concept_key.split("/", 1)[0]
        spec = selection.specs[concept_key]
        positives = groups["images"]
        own_hashes = {sha(x) for x in positives}
        tenants = sorted(images_by_tenant) if cfg.negatives_from_other_tenants else [tenant]
        others = [x for t in tenants for x in images_by_tenant[t] if f"{x.tenant}/{x.concept}" != concept_key]
        # A negative with the same bytes as one of the concept's own images would teach "no" on a positive.
        candidates = [x for x in pool_ok + others if sha(x) not in own_hashes]
        if len(candidates) > cfg.negative_candidates:  # bound the per-concept cost at scale
            picked = rng_for("candidates", cfg.seed, concept_key).choice(len(candidates), cfg.negative_candidates, replace=False)
            candidates = [candidates[i] for i in sorted(picked)]
        mined = mine_hard_negatives(
            features(positives), features(candidates), [x.obj.path for x in candidates], cfg.hard_negatives_per_concept
        )
        edit_ok = {x.rel: x.obj.path for x in groups["edits"]}
        materials.append(
            ConceptMaterial(
                concept_key=concept_key,
                digest=digests[concept_key],
                spec=spec,
                positives=[x.obj.path for x in positives],
                hard_negatives=[x.obj.path for x in groups["negatives"]] + mined,
                random_negatives=[x.obj.path for x in candidates],
                edits=[
                    (edit_ok[e.source], edit_ok[e.target], e.instruction)
                    for e in spec.edits
                    if e.source in edit_ok and e.target in edit_ok
                ],
            )
        )
    return materials, rows


def expected_hashes(results: dict[str, Validated]) -> dict[str, str]:
    return {path: r.sha256 for path, r in results.items() if r.reason is None}
