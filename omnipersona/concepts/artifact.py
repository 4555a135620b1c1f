"""The concept artifact: the one reader and the one writer of a trained concept on storage.

A concept artifact is a folder holding two files:

- ``concept.safetensors``: the learned rows, float32.
    ``identifier`` [1, D], ``und_tokens`` [Nu, D], ``gen_tokens`` [Ng, D], ``identifier_output`` [D]
    (the identifier's LM-head output row). In ``shared`` mode (the ablation with one token set for
    both tasks) ``und_tokens`` holds the shared set and ``gen_tokens`` has shape [0, D].
    String metadata: format_version, concept_id, num_und_tokens, num_gen_tokens, hidden_size, mode,
    base_model_id, base_fingerprint.
- ``manifest.json``: a :class:`ConceptManifest` (who, what data, which config, which base model).

Training writes it, evaluation, the registry and inference read it, all through this module.
Concept tokens are only meaningful for the exact base weights they were trained against, so
loading checks the base-model fingerprint when the caller knows it.

Storage: a local path, or any ``pyarrow.fs.FileSystem`` (S3 included). pyarrow is imported lazily
and only when a filesystem is passed, so the model library itself stays free of it.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from ..identity import ConceptId, check_name

FORMAT_VERSION = "1"
TENSORS_FILE = "concept.safetensors"
MANIFEST_FILE = "manifest.json"
TENSOR_NAMES = ("identifier", "und_tokens", "gen_tokens", "identifier_output")

ConceptMode = Literal["decoupled", "shared"]



class ArtifactError(Exception):
    """Base class for every concept-artifact problem."""


class ArtifactNotFoundError(ArtifactError, FileNotFoundError):
    """A file of the artifact is missing."""


class ArtifactFormatError(ArtifactError, ValueError):
    """A file of the artifact is unreadable or inconsistent."""


class UnsupportedFormatVersionError(ArtifactError):
    """The artifact was written by a newer format than this code reads."""


class BaseModelMismatchError(ArtifactError):
    """The artifact was trained against other base weights than the ones loaded."""


def config_hash(obj: BaseModel | dict[str, Any]) -> str:
    """First 16 hex digits of the sha256 of ``obj`` as canonical JSON (sorted keys, no spaces).

    Equal configs hash equal whatever their key order; a pydantic model hashes as its JSON dump.
    """
    data = obj.model_dump(mode="json") if isinstance(obj, BaseModel) else obj
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def artifact_subpath(concept: ConceptId, data_digest: str, recipe_hash: str, base_fingerprint: str) -> str:
    """Where a trained concept lives below the artifact root:
    ``<tenant>/<concept>/<data digest>/<recipe hash>/<base fingerprint>``.

    A trained concept is identified by all three: its data, the recipe that trained it and the
    base weights it was trained against. A change of any of them is a new artifact (and a new
    registered version); the same three are never trained twice."""
    for what, value in (("data digest", data_digest), ("recipe hash", recipe_hash), ("base fingerprint", base_fingerprint)):
        if not re.fullmatch(r"[A-Za-z0-9_-]+", value or ""):
            raise ValueError(f"invalid {what} {value!r}")
    return f"{concept.key}/{data_digest}/{recipe_hash}/{base_fingerprint}"


class ConceptManifest(BaseModel):
    """Who the concept is, what it was trained from and against which base model."""

    model_config = ConfigDict(extra="forbid")

    concept_id: str = ""  # "tenant/concept"; filled from tenant and concept when left empty
    tenant: str
    concept: str
    display_name: str
    class_word: str
    training_config_hash: str
    data_digest: str
    base_model_id: str
    base_fingerprint: str
    format_version: str = FORMAT_VERSION
    metrics: dict[str, float] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    extra: dict[str, Any] = Field(default_factory=dict)

    @field_validator("tenant")
    @classmethod
    def _tenant_id(cls, value: str) -> str:
        return check_name(value, "tenant")

    @field_validator("concept")
    @classmethod
    def _concept_id_part(cls, value: str) -> str:
        return check_name(value, "concept")

    @field_validator("created_at")
    @classmethod
    def _aware_utc(cls, value: datetime) -> datetime:
        # Naive datetimes would serialise without an offset and compare unequal after a round trip.
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)

    @property
    def id(self) -> ConceptId:
        return ConceptId(self.tenant, self.concept)

    @property
    def subpath(self) -> str:
        """Where this concept is stored below an artifact root (`artifact_subpath`)."""
        return artifact_subpath(self.id, self.data_digest, self.training_config_hash, self.base_fingerprint)

    @model_validator(mode="after")
    def _consistent_concept_id(self) -> ConceptManifest:
        expected = self.id.key
        if not self.concept_id:
            self.concept_id = expected
        elif self.concept_id != expected:
            raise ValueError(f"concept_id {self.concept_id!r} does not match tenant/concept {expected!r}")
        return self

    def to_json(self) -> str:
        """Stable JSON: sorted keys, so equal manifests give byte-equal files."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, indent=2, ensure_ascii=False) + "\n"


@dataclass
class ConceptArtifact:
    """The learned tensors of one concept plus its manifest."""

    identifier: torch.Tensor
    und_tokens: torch.Tensor
    gen_tokens: torch.Tensor
    identifier_output: torch.Tensor
    manifest: ConceptManifest
    mode: ConceptMode = "decoupled"

    def __post_init__(self) -> None:
        for name in TENSOR_NAMES:
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
            # Detached float32 CPU copies: what is saved is exactly what is held.
            setattr(self, name, value.detach().to(device="cpu", dtype=torch.float32).contiguous())
        self._check_shapes()

    @property
    def hidden_size(self) -> int:
        return int(self.identifier.shape[-1])

    @property
    def num_und_tokens(self) -> int:
        return int(self.und_tokens.shape[0])

    @property
    def num_gen_tokens(self) -> int:
        return int(self.gen_tokens.shape[0])

    def _check_shapes(self) -> None:
        if self.mode not in ("decoupled", "shared"):
            raise ValueError(f"mode must be 'decoupled' or 'shared', got {self.mode!r}")
        if self.identifier.ndim != 2 or self.identifier.shape[0] != 1:
            raise ValueError(f"identifier must have shape [1, D], got {list(self.identifier.shape)}")
        d = self.hidden_size
        for name in ("und_tokens", "gen_tokens"):
            t = getattr(self, name)
            if t.ndim != 2 or t.shape[1] != d:
                raise ValueError(f"{name} must have shape [N, {d}], got {list(t.shape)}")
        if self.identifier_output.shape != (d,):
            raise ValueError(f"identifier_output must have shape [{d}], got {list(self.identifier_output.shape)}")
        if self.num_und_tokens == 0:
            raise ValueError("und_tokens must hold at least one token")
        if self.mode == "shared" and self.num_gen_tokens != 0:
            raise ValueError("shared mode keeps its one token set in und_tokens: gen_tokens must be [0, D]")
        if self.mode == "decoupled" and self.num_gen_tokens == 0:
            raise ValueError("decoupled mode needs generation tokens: gen_tokens is empty")

    def _metadata(self) -> dict[str, str]:
        m = self.manifest
        return {
            "format_version": FORMAT_VERSION,
            "concept_id": m.concept_id,
            "num_und_tokens": str(self.num_und_tokens),
            "num_gen_tokens": str(self.num_gen_tokens),
            "hidden_size": str(self.hidden_size),
            "mode": self.mode,
            "base_model_id": m.base_model_id,
            "base_fingerprint": m.base_fingerprint,
        }

    def save(self, path: str | os.PathLike[str], filesystem: Any | None = None) -> str:
        """Write the artifact folder at ``path`` and return the path.

        ``filesystem`` is an optional ``pyarrow.fs.FileSystem`` (then ``path`` is in its namespace,
        e.g. ``bucket/prefix`` for S3). Each file is first written under a temporary name and then
        moved to its final name, so a reader never sees a half-written file; the manifest goes
        last and so marks a complete artifact.
        """
        if self.manifest.format_version != FORMAT_VERSION:
            raise ArtifactFormatError(
                f"this code writes format_version {FORMAT_VERSION}, the manifest says {self.manifest.format_version}"
            )
        tensors = {name: getattr(self, name) for name in TENSOR_NAMES}
        files = [
            (TENSORS_FILE, save_safetensors_bytes(tensors, metadata=self._metadata())),
            (MANIFEST_FILE, self.manifest.to_json().encode("utf-8")),
        ]
        if filesystem is None:
            folder = Path(path)
            folder.mkdir(parents=True, exist_ok=True)
            for name, payload in files:
                _write_local_atomically(folder / name, payload)
            return str(folder)
        folder_str = str(path).rstrip("/")
        filesystem.create_dir(folder_str, recursive=True)
        for name, payload in files:
            _write_fs_atomically(filesystem, f"{folder_str}/{name}", payload)
        return folder_str

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        filesystem: Any | None = None,
        expected_fingerprint: str | None = None,
        expected_hidden_size: int | None = None,
        expected_base_model_id: str | None = None,
    ) -> ConceptArtifact:
        """Read and check the artifact folder at ``path``.

        Raises :class:`ArtifactNotFoundError` for a missing file, :class:`ArtifactFormatError` for a
        corrupt or inconsistent one, :class:`UnsupportedFormatVersionError` for a newer format, and
        :class:`BaseModelMismatchError` when ``expected_fingerprint`` / ``expected_hidden_size``
        (the base model the caller loaded) differ from what the concept was trained against.
        """
        folder = str(path).rstrip("/")
        manifest_path = f"{folder}/{MANIFEST_FILE}"
        tensors_path = f"{folder}/{TENSORS_FILE}"
        manifest = _parse_manifest(_read_bytes(manifest_path, filesystem), manifest_path)

        raw = _read_bytes(tensors_path, filesystem)
        metadata = _safetensors_metadata(raw, tensors_path)
        _check_format_version(metadata.get("format_version", ""), tensors_path)
        try:
            tensors = load_safetensors_bytes(raw)
        except (SafetensorError, ValueError, RuntimeError) as e:
            raise ArtifactFormatError(f"corrupt concept tensors at {tensors_path}: {e}") from e
        missing = [n for n in TENSOR_NAMES if n not in tensors]
        if missing:
            raise ArtifactFormatError(f"{tensors_path} lacks tensors {missing}")
        for key in ("concept_id", "base_fingerprint"):
            if metadata.get(key) != getattr(manifest, key):
                raise ArtifactFormatError(
                    f"{tensors_path} says {key}={metadata.get(key)!r} but {manifest_path} says "
                    f"{getattr(manifest, key)!r}: the two files belong to different artifacts"
                )
        try:
            artifact = cls(**{n: tensors[n] for n in TENSOR_NAMES}, manifest=manifest, mode=metadata.get("mode", ""))
        except (TypeError, ValueError) as e:
            raise ArtifactFormatError(f"inconsistent concept tensors at {tensors_path}: {e}") from e
        if metadata.get("hidden_size") != str(artifact.hidden_size):
            raise ArtifactFormatError(
                f"{tensors_path} metadata says hidden_size={metadata.get('hidden_size')}, "
                f"tensors have {artifact.hidden_size}"
            )

        if expected_fingerprint is not None and expected_fingerprint != manifest.base_fingerprint:
            raise _base_mismatch(manifest, folder, expected_base_model_id, "fingerprint", manifest.base_fingerprint, expected_fingerprint)
        if expected_hidden_size is not None and expected_hidden_size != artifact.hidden_size:
            raise _base_mismatch(manifest, folder, expected_base_model_id, "hidden size", artifact.hidden_size, expected_hidden_size)
        return artifact


def _base_mismatch(
    manifest: ConceptManifest, folder: str, loaded_model_id: str | None, what: str, trained: Any, loaded: Any
) -> BaseModelMismatchError:
    """The error for a concept whose base model differs from the loaded one in `what`: names both and the fix."""
    trained_on = f"fingerprint {manifest.base_fingerprint}"
    if what != "fingerprint":
        trained_on += f", {what} {trained}"
    return BaseModelMismatchError(
        f"concept {manifest.concept_id!r} at {folder} was trained against base model {manifest.base_model_id!r} "
        f"({trained_on}), but the loaded base model {loaded_model_id or 'unnamed'!r} has {what} {loaded}. Concept "
        f"tokens only work with the exact weights they were trained on: load base model {manifest.base_model_id!r}, "
        "or retrain the concept against the current base model."
    )


def _check_format_version(found: str, where: str) -> None:
    try:
        version = int(found)
    except (TypeError, ValueError):
        raise ArtifactFormatError(f"{where} has no valid format_version (found {found!r})") from None
    if version > int(FORMAT_VERSION):
        raise UnsupportedFormatVersionError(
            f"{where} uses concept artifact format_version {version}, but this version of omnipersona reads "
            f"format_version up to {FORMAT_VERSION}: upgrade omnipersona to load it"
        )
    if version < 1:
        raise ArtifactFormatError(f"{where} has invalid format_version {version}")


def _parse_manifest(payload: bytes, where: str) -> ConceptManifest:
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactFormatError(f"corrupt manifest at {where}: not JSON ({e})") from e
    if not isinstance(data, dict):
        raise ArtifactFormatError(f"corrupt manifest at {where}: expected a JSON object")
    # Check the version before validating fields: a newer format may have fields we don't know.
    _check_format_version(data.get("format_version", ""), where)
    try:
        return ConceptManifest.model_validate(data)
    except ValueError as e:
        raise ArtifactFormatError(f"invalid manifest at {where}: {e}") from e


def _safetensors_metadata(raw: bytes, where: str) -> dict[str, str]:
    # safetensors layout: 8-byte little-endian header length, then a JSON header whose
    # "__metadata__" entry holds the string metadata. safe_open only reads files, hence this.
    try:
        (header_len,) = struct.unpack("<Q", raw[:8])
        if header_len > len(raw) - 8:
            raise ValueError("header longer than file")
        header = json.loads(raw[8 : 8 + header_len].decode("utf-8"))
    except (struct.error, ValueError, UnicodeDecodeError) as e:
        raise ArtifactFormatError(f"corrupt concept tensors at {where}: {e}") from e
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict):
        raise ArtifactFormatError(f"{where} has no concept metadata: not a concept artifact")
    return metadata


def _read_bytes(path: str, filesystem: Any | None) -> bytes:
    if filesystem is None:
        try:
            return Path(path).read_bytes()
        except FileNotFoundError:
            raise ArtifactNotFoundError(f"concept artifact file missing: {path}") from None
    from pyarrow import fs as pafs

    if filesystem.get_file_info(path).type != pafs.FileType.File:
        raise ArtifactNotFoundError(f"concept artifact file missing: {path} (on {filesystem.type_name})")
    with filesystem.open_input_stream(path) as stream:
        return stream.read()


def _write_local_atomically(target: Path, payload: bytes) -> None:
    tmp = target.with_name(f"{target.name}.tmp-{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)  # atomic rename on POSIX
    finally:
        tmp.unlink(missing_ok=True)


def _write_fs_atomically(filesystem: Any, target: str, payload: bytes) -> None:
    tmp = f"{target}.tmp-{uuid.uuid4().hex}"
    try:
        with filesystem.open_output_stream(tmp) as out:
            out.write(payload)
        try:
            # Local: an atomic rename. S3: a server-side copy then delete; the final key appears
            # whole because an object only becomes visible once its upload has completed.
            filesystem.move(tmp, target)
        except NotImplementedError:
            filesystem.copy_file(tmp, target)
            filesystem.delete_file(tmp)
    except BaseException:
        try:
            filesystem.delete_file(tmp)
        except OSError:
            pass  # never written, or already gone: nothing to clean
        raise
