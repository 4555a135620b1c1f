"""The upload layout, decided from raw object keys alone (nothing is read before a key passes here).

    <uploads root>/<tenant>/<concept>/concept.json
                                     /images/<file>       reference images of the concept
                                     /edits/<file>        files named by the edit triplets in concept.json
                                     /negatives/<file>    optional concept-specific hard negatives
                                     /heldout/...         evaluation-only material, never trained on
    <negatives root>/**/<file>                            shared pool of random negative images

Tenant and concept names must match ``SAFE_NAME`` (lowercase, so that names cannot collide on
case-insensitive stores or registries, and no '/', so ``<tenant>/<concept>`` is unambiguous).
File-name segments may be freer, but never '.', '..', empty, or hold a backslash or a control /
invisible formatting character.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

from pipelines.ingest.quarantine import QuarantineRow, Reason

# The same rule as omnipersona.concepts.artifact.ID_PART_PATTERN (artifact paths, registry names),
# so a name ingest accepts can be stored and registered; copied rather than imported to keep torch
# out of data workers (a unit test keeps the two equal). Always applied with fullmatch: "$" alone
# would let a trailing newline through.
SAFE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
SAFE_NAME_RULE = "1-63 characters of lowercase letters, digits, '-' and '_', starting with a letter or digit"
CONCEPT_JSON = "concept.json"

Role = Literal["concept_json", "image", "edit", "negative", "heldout"]
_FLAT_DIRS: dict[str, Role] = {"images": "image", "edits": "edit", "negatives": "negative"}


@dataclass(frozen=True)
class UploadKey:
    tenant: str
    concept: str
    rel: str  # path inside the concept folder, e.g. "images/0.png"
    role: Role

    @property
    def concept_key(self) -> str:
        return f"{self.tenant}/{self.concept}"


def name_problem(name: str, what: str) -> str | None:
    """Why ``name`` is not a safe tenant/concept name, or None."""
    if SAFE_NAME.fullmatch(name):
        return None
    return f"{what} name {name!r} is not allowed: use {SAFE_NAME_RULE}"


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


def check_concept_key(concept_key: str) -> tuple[str, str]:
    """Split and validate a "tenant/concept" key given in configuration (raises ValueError)."""
    tenant, sep, concept = concept_key.partition("/")
    problem = (None if sep else f"concept key {concept_key!r} must look like 'tenant/concept'") or name_problem(
        tenant, "tenant"
    ) or name_problem(concept, "concept")
    if problem:
        raise ValueError(problem)
    return tenant, concept


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

    rest = parts[2:]
    rel = "/".join(rest)
    if rest == [CONCEPT_JSON]:
        return UploadKey(tenant, concept, rel, "concept_json")
    if len(rest) == 2 and rest[0] in _FLAT_DIRS:
        return UploadKey(tenant, concept, rel, _FLAT_DIRS[rest[0]])
    if len(rest) >= 2 and rest[0] == "heldout":
        return UploadKey(tenant, concept, rel, "heldout")
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
