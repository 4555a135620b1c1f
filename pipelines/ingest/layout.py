"""The upload layout, decided from raw object keys alone (nothing is read before a key passes here).

    <uploads root>/<tenant>/<concept>/concept.json
                                     /images/<file>       reference images of the concept
                                     /edits/<file>        files named by the edit triplets in concept.json
                                     /negatives/<file>    optional concept-specific hard negatives
                                     /heldout/...         evaluation-only material, never trained on
    <negatives root>/**/<file>                            shared pool of random negative images

Tenant and concept names follow the one name rule of ``omnipersona.identity`` (lowercase, so
names cannot collide on case-insensitive stores or registries; no '/', so ``<tenant>/<concept>`` is
unambiguous). File-name segments may be freer, but never '.', '..', empty, or hold a backslash or a
control / invisible formatting character.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Literal

from omnipersona.concepts.upload_schema import CONCEPT_JSON, EDITS_DIR, HELDOUT_DIR, IMAGES_DIR, NEGATIVES_DIR
from omnipersona.identity import ConceptId, name_problem
from pipelines.ingest.quarantine import QuarantineRow, Reason

Role = Literal["concept_json", "image", "edit", "negative", "heldout"]
_FLAT_DIRS: dict[str, Role] = {IMAGES_DIR: "image", EDITS_DIR: "edit", NEGATIVES_DIR: "negative"}


@dataclass(frozen=True)
class UploadKey:
    id: ConceptId
    rel: str  # path inside the concept folder, e.g. "images/0.png"
    role: Role


def segment_problem(segment: str) -> str | None:
    """Why a path segment is unsafe to use in a path, or None."""
    if segment in ("", ".", ".."):
        return f"path segment {segment!r} is not allowed (empty or relative path component)"
    if "\\" in segment:
        return f"path segment {segment!r} holds a backslash"
    bad = [ch for ch in segment if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp")]
    if bad:
        return f"path segment {segment!r} holds control or invisible characters {''.join(bad)!r}"
    return None


def parse_upload_key(key: str) -> UploadKey | QuarantineRow:
    """Classify one key (relative to the uploads root) or say why it is rejected."""
    parts = key.split("/")
    tenant = parts[0] if len(parts) >= 2 else None
    concept = parts[1] if len(parts) >= 3 else None

    def reject(reason: Reason, message: str) -> QuarantineRow:
        return QuarantineRow(source="uploads", tenant=tenant, concept=concept, key=key, reason=reason, message=message)

    # Traversal and control characters first, anywhere in the key.
    for segment in parts:
        problem = segment_problem(segment)
        if problem:
            return reject(Reason.UNSAFE_NAME, problem)
    if tenant is not None:
        problem = name_problem(tenant, "tenant")
        if problem:
            return reject(Reason.UNSAFE_NAME, problem)
    if concept is None:
        return reject(Reason.UNEXPECTED_OBJECT, "objects must sit inside <tenant>/<concept>/")
    problem = name_problem(concept, "concept")
    if problem:
        return reject(Reason.UNSAFE_NAME, problem)

    concept_id = ConceptId(tenant, concept)  # both names were checked above
    rest = parts[2:]
    rel = "/".join(rest)
    if rest == [CONCEPT_JSON]:
        return UploadKey(concept_id, rel, "concept_json")
    if len(rest) == 2 and rest[0] in _FLAT_DIRS:
        return UploadKey(concept_id, rel, _FLAT_DIRS[rest[0]])
    if len(rest) >= 2 and rest[0] == HELDOUT_DIR:
        return UploadKey(concept_id, rel, "heldout")
    return reject(
        Reason.UNEXPECTED_OBJECT,
        f"{rel!r} is not part of the concept layout (concept.json, images/<file>, edits/<file>, "
        "negatives/<file>, heldout/...)",
    )


def parse_pool_key(key: str) -> QuarantineRow | None:
    """A key of the shared negative pool (any depth): None when usable, else the rejection."""
    for segment in key.split("/"):
        problem = segment_problem(segment)
        if problem:
            return QuarantineRow(
                source="negatives", tenant=None, concept=None, key=key, reason=Reason.UNSAFE_NAME, message=problem
            )
    return None
