"""The quarantine report: every object or concept that ingest refused, with a reason code and a
human message. Nothing is dropped without a row here; the job itself goes on."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from pipelines.storage import StorageConfig, filesystem_for, write_bytes_atomic


class Reason(StrEnum):
    # Names and layout (decided from the listing, before any read)
    UNSAFE_NAME = "unsafe_name"
    UNEXPECTED_OBJECT = "unexpected_object"
    # concept.json
    MISSING_CONCEPT_JSON = "missing_concept_json"
    BAD_CONCEPT_JSON = "bad_concept_json"
    BAD_DISPLAY_NAME = "bad_display_name"  # concept.json is fine but its display name cannot be bound
    MISSING_EDIT_FILE = "missing_edit_file"
    # Objects (size checks come from the listing; the rest from reading the bytes)
    EMPTY_FILE = "empty_file"
    FILE_TOO_LARGE = "file_too_large"
    COMPRESSED_FILE = "compressed_file"
    NOT_AN_IMAGE = "not_an_image"
    CORRUPT_IMAGE = "corrupt_image"
    DECOMPRESSION_BOMB = "decompression_bomb"
    IMAGE_TOO_LARGE = "image_too_large"
    IMAGE_TOO_SMALL = "image_too_small"
    DUPLICATE_IMAGE = "duplicate_image"
    CHANGED_SINCE_SNAPSHOT = "changed_since_snapshot"
    READ_ERROR = "read_error"
    # Whole concepts
    TOO_FEW_IMAGES = "too_few_images"


Source = Literal["uploads", "negatives"]


class QuarantineRow(BaseModel):
    model_config = ConfigDict(frozen=True)

    source: Source = Field(description="Which root the key is relative to.")
    tenant: str | None = Field(description="Raw tenant segment (may itself be the unsafe part).")
    concept: str | None = Field(description="Raw concept segment; None for pool objects.")
    key: str = Field(description="Object key relative to the root; a concept prefix ends with '/'.")
    reason: Reason
    message: str

    @property
    def concept_key(self) -> str | None:
        # Joined by hand, not via ConceptId: the raw segments may be exactly what broke the name rule.
        return f"{self.tenant}/{self.concept}" if self.tenant is not None and self.concept is not None else None


class QuarantineReport(BaseModel):
    uploads_uri: str
    negatives_uri: str | None = None
    rows: list[QuarantineRow] = Field(default_factory=list)

    def sorted(self) -> "QuarantineReport":
        ordered = sorted(self.rows, key=lambda r: (r.source, r.tenant or "", r.concept or "", r.key, r.reason))
        return self.model_copy(update={"rows": ordered})

    def by_concept(self) -> dict[str, list[QuarantineRow]]:
        out: dict[str, list[QuarantineRow]] = {}
        for row in self.rows:
            if row.concept_key is not None:
                out.setdefault(row.concept_key, []).append(row)
        return out

    def to_json(self) -> str:
        return self.sorted().model_dump_json(indent=2)

    def write(self, uri: str, storage: StorageConfig | None = None) -> None:
        fs, path = filesystem_for(uri, storage)
        write_bytes_atomic(fs, path, self.to_json().encode("utf-8"))
