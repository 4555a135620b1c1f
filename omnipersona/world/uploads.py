"""Write world concepts as user uploads, and their held-out evaluation sets, to any pyarrow filesystem.

concept.json is built from the library's one upload schema (`omnipersona.concepts.upload_schema`),
so what the world writes is exactly what ingest accepts; the evaluation sets' fields are in
`omnipersona.world.layout`. A local folder needs no filesystem argument; for S3 pass the project's
`pyarrow.fs.S3FileSystem` and a "bucket/prefix" base path.
"""
from __future__ import annotations

import io
import json
import posixpath
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pyarrow.fs as pafs
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from omnipersona.concepts.upload_schema import (
    CONCEPT_JSON,
    EDITS_DIR,
    IMAGES_DIR,
    ConceptDescription,
    QAPair,
    UploadedEdit,
    parse_concept_json,
)
from omnipersona.identity import ConceptId, check_name
from omnipersona.world import layout, seeds
from omnipersona.world.attributes import caption
from omnipersona.world.concepts import WorldConcept, random_objects_unlike
from omnipersona.world.layout import EvalFact, EvalManifest, EvalNegative, EvalParg, EvalView

ConceptsByTenant = Mapping[str, Sequence[WorldConcept]]


class _PictureSetOptions(BaseModel):
    """What every written picture set has: its pictures' size."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    size: int = Field(default=64, ge=8)


class UploadOptions(_PictureSetOptions):
    views: int = Field(default=10, ge=1)
    edits: int = Field(default=3, ge=0)
    pool_negatives: int = Field(default=30, ge=0)
    pool_seed: int = Field(default=0, ge=0)


class EvalSetWriteOptions(_PictureSetOptions):
    views: int = Field(default=5, ge=1)
    hard_negatives: int = Field(default=8, ge=0)
    random_negatives: int = Field(default=8, ge=0)


def resolve_filesystem(root: str | Path, filesystem: pafs.FileSystem | None = None) -> tuple[pafs.FileSystem, str]:
    """(filesystem, base path): `root` is a path in `filesystem`, or a local path / URI when it is None."""
    root = str(root)
    if filesystem is not None:
        return filesystem, root.rstrip("/")
    if "://" in root:
        fs, path = pafs.FileSystem.from_uri(root)
        return fs, path.rstrip("/")
    return pafs.LocalFileSystem(), str(Path(root).resolve())


def _write_bytes(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    try:
        stream = fs.open_output_stream(path)
    except FileNotFoundError:  # local folders need their parents; object stores do not
        fs.create_dir(posixpath.dirname(path), recursive=True)
        stream = fs.open_output_stream(path)
    with stream:
        stream.write(data)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _json(model: BaseModel) -> bytes:
    return (json.dumps(model.model_dump(mode="json"), indent=2) + "\n").encode()


def _destinations(
    concepts_by_tenant: ConceptsByTenant, root: str | Path, filesystem: pafs.FileSystem | None
) -> tuple[pafs.FileSystem, str, list[tuple[WorldConcept, str]]]:
    """Where the writers put each concept, once every name passes ingest's rules: (filesystem, base
    path, [(concept, `<base>/<tenant>/<concept>`), ...])."""
    for tenant, concepts in concepts_by_tenant.items():
        check_name(tenant, "tenant")
        for concept in concepts:
            ConceptId(tenant, concept.name)  # the upload key must pass ingest's name rule
        names = [c.name for c in concepts]
        if len(set(names)) != len(names):
            raise ValueError(f"tenant {tenant!r} has duplicate concept names")
    fs, base = resolve_filesystem(root, filesystem)
    dirs = [(c, posixpath.join(base, tenant, c.name)) for tenant, concepts in concepts_by_tenant.items() for c in concepts]
    return fs, base, dirs


def write_concept_upload(
    concept: WorldConcept, fs: pafs.FileSystem, concept_dir: str, options: UploadOptions = UploadOptions()
) -> ConceptDescription:
    """Training views, edit examples and concept.json (which lists the edits) of one concept under `concept_dir`."""
    for i, view in enumerate(concept.train_views(options.views, options.size)):
        _write_bytes(fs, posixpath.join(concept_dir, IMAGES_DIR, layout.image_name(i)), _png(view.image))
    edits = []
    for i, edit in enumerate(concept.edits(options.edits, options.size)):
        source, target = (posixpath.join(EDITS_DIR, name) for name in layout.edit_names(i))
        _write_bytes(fs, posixpath.join(concept_dir, source), _png(edit.source))
        _write_bytes(fs, posixpath.join(concept_dir, target), _png(edit.target))
        edits.append(UploadedEdit(source=source, target=target, instruction=edit.instruction))
    description = ConceptDescription(
        display_name=concept.name,
        class_word=concept.class_word,
        facts=concept.facts(),
        attributes=concept.attributes(),
        qa=[QAPair(question=q.question, answer=q.answer) for q in concept.questions()],
        edits=edits,
    )
    # Written last: a folder without concept.json is reported by ingest, never half-read.
    _write_bytes(fs, posixpath.join(concept_dir, CONCEPT_JSON), description.to_json_bytes())
    return description


def _write_each(
    concepts_by_tenant: ConceptsByTenant, root: str | Path, filesystem: pafs.FileSystem | None,
    write_one: Callable[[WorldConcept, pafs.FileSystem, str], object],
) -> tuple[pafs.FileSystem, str, list[str]]:
    """`write_one(concept, fs, concept_dir)` for every concept: (filesystem, base path, concept dirs)."""
    fs, base, targets = _destinations(concepts_by_tenant, root, filesystem)
    for concept, concept_dir in targets:
        write_one(concept, fs, concept_dir)
    return fs, base, [concept_dir for _, concept_dir in targets]


def write_uploads(concepts_by_tenant: ConceptsByTenant, root: str | Path, *, filesystem: pafs.FileSystem | None = None,
                  options: UploadOptions = UploadOptions()) -> list[str]:
    """Every concept as `<root>/<tenant>/<concept>/...` plus the shared negative pool; returns concept dirs."""
    fs, base, dirs = _write_each(concepts_by_tenant, root, filesystem,
                                 lambda concept, fs, concept_dir: write_concept_upload(concept, fs, concept_dir, options))
    # Pool negatives differ from every concept in >= 2 visible attributes: never a look-alike.
    pool_seed = seeds.derive_seed(options.pool_seed, seeds.POOL)
    concepts = [c.spec for cs in concepts_by_tenant.values() for c in cs]
    for i, negative in enumerate(random_objects_unlike(concepts, options.pool_negatives, options.size, pool_seed)):
        _write_bytes(fs, posixpath.join(base, layout.POOL_DIR, IMAGES_DIR, layout.image_name(i)), _png(negative.image))
    return dirs


def write_eval_set(
    concept: WorldConcept,
    fs: pafs.FileSystem,
    concept_dir: str,
    options: EvalSetWriteOptions = EvalSetWriteOptions(),
    avoid: Sequence[WorldConcept] = (),
) -> EvalManifest:
    """Held-out views, negatives, PARG references and manifest.json of one concept."""

    def save(folder: str, index: int, image: Image.Image) -> str:
        relative = posixpath.join(folder, layout.image_name(index))
        _write_bytes(fs, posixpath.join(concept_dir, relative), _png(image))
        return relative

    views = [
        EvalView(file=save("views", i, v.image), background=v.spec.background, prompt=v.prompt)
        for i, v in enumerate(concept.held_out_views(options.views, options.size))
    ]
    hard = [
        EvalNegative(file=save("hard_negatives", i, n.image), description=caption(n.spec), differs_in=n.differs_in)
        for i, n in enumerate(concept.hard_negatives(options.hard_negatives, options.size))
    ]
    others = [c.spec for c in avoid if c != concept]
    randoms = [
        EvalNegative(file=save("random_negatives", i, n.image), description=caption(n.spec))
        for i, n in enumerate(concept.random_negatives(options.random_negatives, options.size, avoid=others))
    ]
    parg = [
        EvalParg(
            attribute=r.attribute, request=r.request, question=r.question, answer=r.answer, rewritten=r.rewritten,
            reference=save("parg", i, concept.item_view(r.attribute, options.size)),
        )
        for i, r in enumerate(concept.parg_requests())
    ]
    manifest = EvalManifest(
        concept=concept.name,
        display_name=concept.name,
        class_word=concept.class_word,
        attributes=concept.attributes(),
        views=views,
        hard_negatives=hard,
        random_negatives=randoms,
        facts=[
            EvalFact(attribute=q.attribute, question=q.question, answer=q.answer, visible=q.visible)
            for q in concept.questions(held_out=True)
        ],
        parg=parg,
    )
    _write_bytes(fs, posixpath.join(concept_dir, layout.MANIFEST_FILE), _json(manifest))
    return manifest


def write_eval_sets(concepts_by_tenant: ConceptsByTenant, eval_root: str | Path, *,
                    filesystem: pafs.FileSystem | None = None,
                    options: EvalSetWriteOptions = EvalSetWriteOptions()) -> list[str]:
    """Every concept's held-out set as `<eval_root>/<tenant>/<concept>/...`; returns concept dirs."""
    everyone = [c for cs in concepts_by_tenant.values() for c in cs]
    _, _, dirs = _write_each(concepts_by_tenant, eval_root, filesystem,
                             lambda concept, fs, concept_dir: write_eval_set(concept, fs, concept_dir, options, avoid=everyone))
    return dirs


def _read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as stream:
        return stream.read()


def read_concept_upload(concept_dir: str | Path, filesystem: pafs.FileSystem | None = None) -> ConceptDescription:
    """concept.json parsed exactly as ingest parses it."""
    fs, path = resolve_filesystem(concept_dir, filesystem)
    return parse_concept_json(_read_bytes(fs, posixpath.join(path, CONCEPT_JSON)))


def read_eval_manifest(concept_dir: str | Path, filesystem: pafs.FileSystem | None = None) -> EvalManifest:
    fs, path = resolve_filesystem(concept_dir, filesystem)
    return EvalManifest.model_validate_json(_read_bytes(fs, posixpath.join(path, layout.MANIFEST_FILE)))


def read_image(path: str | Path, filesystem: pafs.FileSystem | None = None) -> Image.Image:
    fs, resolved = resolve_filesystem(path, filesystem)
    image = Image.open(io.BytesIO(_read_bytes(fs, resolved)))
    return image.convert("RGB")
