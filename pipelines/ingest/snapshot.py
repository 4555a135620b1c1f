"""List the input once and pin it down: per object (key, size, content hash), per concept a digest.

The concept digest is the concept's data identity: sha256 over the sorted (relative key, content
hash) pairs of every object the layout recognises in the concept folder. On S3 the content hash is
the ETag from the listing (no reads needed; note that the same bytes uploaded in a different number
of multipart parts get a different ETag, hence a different digest). On local disks it is the sha256
of the file content. Everything later reads exactly the snapshotted keys, never a fresh listing.
A concept's *data* digest (`Snapshot.digests`: the job id, artifact paths, the registry's
`data_digest` tag) is that digest with the gate's hold-out rule folded in (`pipelines.ingest.holdout`):
the rule decides which images train.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

from pydantic import BaseModel, Field

from omnipersona.identity import ConceptId
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.holdout import data_digest
from pipelines.ingest.layout import UploadKey, parse_pool_key, parse_upload_key
from pipelines.ingest.quarantine import QuarantineRow
from pipelines.storage import ObjectInfo, StorageConfig, filesystem_for, join, list_objects, read_bytes


class SnapshotObject(BaseModel):
    key: str = Field(description="Relative to the concept folder (or to the negatives root).")
    path: str = Field(description="Filesystem path used to read it (bucket/key on S3).")
    size: int
    content_hash: str = Field(description='"etag:<etag>" (S3) or "sha256:<hex>" (local).')
    mtime: datetime | None = None


class ConceptSnapshot(BaseModel):
    # Plain fields keep the snapshot's JSON flat; `id` is the typed view of the pair.
    tenant: str
    concept: str
    digest: str
    objects: list[SnapshotObject]

    @classmethod
    def of(cls, concept_id: ConceptId, digest: str, objects: list[SnapshotObject]) -> "ConceptSnapshot":
        return cls(tenant=concept_id.tenant, concept=concept_id.concept, digest=digest, objects=objects)

    @property
    def id(self) -> ConceptId:
        return ConceptId(self.tenant, self.concept)

    @property
    def concept_key(self) -> str:
        return self.id.key

    @property
    def image_count(self) -> int:
        return sum(1 for o in self.objects if o.key.startswith("images/"))

    def get(self, rel_key: str) -> SnapshotObject | None:
        return next((o for o in self.objects if o.key == rel_key), None)


class Snapshot(BaseModel):
    uploads_uri: str
    negatives_uri: str | None
    taken_at: datetime
    concepts: list[ConceptSnapshot]
    negatives: list[SnapshotObject] = Field(default_factory=list)
    negatives_digest: str | None = None
    gate_holdout_every: int = 0  # the ingest rule the data digests include (IngestConfig.gate_holdout_every)

    def concept(self, concept_key: str) -> ConceptSnapshot:
        for c in self.concepts:
            if c.concept_key == concept_key:
                return c
        raise KeyError(concept_key)

    def digests(self) -> dict[str, str]:
        """Each concept's data digest: its uploads' digest with the hold-out rule folded in."""
        return {c.concept_key: data_digest(c.digest, self.gate_holdout_every) for c in self.concepts}


def content_digest(pairs: list[tuple[str, str]]) -> str:
    """sha256 over sorted (relative key, content hash) pairs, with unambiguous separators."""
    h = hashlib.sha256()
    for key, content_hash in sorted(pairs):
        h.update(key.encode("utf-8") + b"\x00" + content_hash.encode("utf-8") + b"\n")
    return h.hexdigest()


def _content_hashes(objects: list[ObjectInfo], fs, threads: int) -> list[str]:
    def one(obj: ObjectInfo) -> str:
        if obj.etag:
            return f"etag:{obj.etag}"
        return "sha256:" + hashlib.sha256(read_bytes(fs, obj.path)).hexdigest()

    if all(o.etag for o in objects) or len(objects) < 2:
        return [one(o) for o in objects]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(one, objects))


def _list_uploads(cfg: IngestConfig, storage: StorageConfig | None) -> list[tuple[str, ObjectInfo]]:
    """(key relative to the uploads root, object) pairs; with ``include`` only those folders are listed."""
    if cfg.include is None:
        return [(o.key, o) for o in list_objects(cfg.uploads_uri, storage)]
    out = []
    # Parsing checks the names: never build a listing prefix from an unchecked name.
    for concept_id in sorted({ConceptId.parse(key) for key in cfg.include}):
        for o in list_objects(join(cfg.uploads_uri, concept_id.key), storage):
            out.append((f"{concept_id.key}/{o.key}", o))
    return out


def take_snapshot(cfg: IngestConfig, storage: StorageConfig | None = None) -> tuple[Snapshot, list[QuarantineRow]]:
    """List uploads (and the negative pool) once; return the snapshot and the layout rejections."""
    taken_at = datetime.now(timezone.utc)
    fs, _ = filesystem_for(cfg.uploads_uri, storage)
    rejected: list[QuarantineRow] = []
    by_concept: dict[ConceptId, list[tuple[UploadKey, ObjectInfo]]] = {}
    for key, obj in _list_uploads(cfg, storage):
        parsed = parse_upload_key(key)
        if isinstance(parsed, QuarantineRow):
            rejected.append(parsed)
        else:
            by_concept.setdefault(parsed.id, []).append((parsed, obj))

    flat = [(parsed, obj) for items in by_concept.values() for parsed, obj in items]
    hashes = dict(zip((obj.path for _, obj in flat), _content_hashes([o for _, o in flat], fs, cfg.read_threads)))
    concepts = []
    for concept_id, items in sorted(by_concept.items()):
        objects = [
            SnapshotObject(key=p.rel, path=o.path, size=o.size, content_hash=hashes[o.path], mtime=o.mtime)
            for p, o in sorted(items, key=lambda item: item[0].rel)
        ]
        digest = content_digest([(o.key, o.content_hash) for o in objects])
        concepts.append(ConceptSnapshot.of(concept_id, digest, objects))

    negatives: list[SnapshotObject] = []
    negatives_digest = None
    if cfg.negatives_uri:
        neg_fs, _ = filesystem_for(cfg.negatives_uri, storage)
        usable = []
        for obj in list_objects(cfg.negatives_uri, storage):
            problem = parse_pool_key(obj.key)
            if problem is not None:
                rejected.append(problem)
            else:
                usable.append(obj)
        for obj, content_hash in zip(usable, _content_hashes(usable, neg_fs, cfg.read_threads)):
            negatives.append(
                SnapshotObject(key=obj.key, path=obj.path, size=obj.size, content_hash=content_hash, mtime=obj.mtime)
            )
        negatives_digest = content_digest([(o.key, o.content_hash) for o in negatives])

    snapshot = Snapshot(
        uploads_uri=cfg.uploads_uri,
        negatives_uri=cfg.negatives_uri,
        taken_at=taken_at,
        concepts=concepts,
        negatives=negatives,
        negatives_digest=negatives_digest,
        gate_holdout_every=cfg.gate_holdout_every,
    )
    return snapshot, rejected
