"""Import the public UnifyBench (UniCTokens) concept folders into our upload layout.

Source layout (as documented by the benchmark; the exact JSON shapes are not, so reading is lenient):

    <source>/concept/train/<c>/0.png ... N.png      reference images   -> images/<n>.<ext>
                              info.json              class + attribute sentences -> class_word, facts, attributes
                              conversations.json     dialogues          -> qa (with_image when an image is involved)
                              positive_recognitions.json, random_recognitions.json
                                                     recognition QA     -> recognition_questions (the question phrasings)
                              negative_example/*     hard negatives     -> negatives/<file> (score.json ignored)
                              cropped/               ignored
    <source>/concept/test/<c>/0.png ... 4.png        held-out images    -> heldout/images/<n>.<ext>
                             text_only.json, vqa.json, t2i_conditions.json -> concept.json "heldout"
    <source>/random_images/*                         random negatives   -> <negatives_uri>/unifybench/<file>

Assumptions (documented in docs/data-layout.md): the benchmark names a concept in texts as
``<c>`` (e.g. ``<bo>``), which becomes ``<sks>``; a QA pair is any object with a question-like and an
answer-like key, a LLaVA-style ``conversations`` list (human/gpt turns), or a two-string list;
anything unrecognised is skipped with a note rather than failing the import. concept.json is
written last, so an interrupted import leaves a folder that ingest reports as missing_concept_json.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from omnipersona.concepts.upload_schema import (
    CONCEPT_JSON,
    HELDOUT_DIR,
    IMAGES_DIR,
    NEGATIVES_DIR,
    PLACEHOLDER,
    ConceptDescription,
    format_validation_error,
)
from omnipersona.identity import NAME, ConceptId, check_name
from pipelines.storage import StorageConfig, filesystem_for, join, list_files, read_bytes, write_bytes_atomic

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
QUESTION_KEYS = ("question", "q", "query", "prompt", "instruction", "input")
ANSWER_KEYS = ("answer", "a", "response", "output", "gt", "ground_truth", "label")
IMAGE_KEYS = ("image", "image_path", "img", "image_file", "images")
CLASS_KEYS = ("class_word", "class", "category", "class_name", "concept_class", "type", "species")
FACT_KEYS = ("info", "extra_info", "attributes", "description", "facts", "profile", "details", "attribute")
MAX_TEXT = 2000


class UnifyBenchImport(BaseModel):
    imported: list[str] = Field(default_factory=list, description='Concept keys written ("tenant/concept").')
    skipped: dict[str, str] = Field(default_factory=dict, description="Source concept -> why it was skipped.")
    notes: list[str] = Field(default_factory=list, description="Lenient-reading decisions worth knowing.")
    negatives_copied: int = 0


def _clean(text: str) -> str:
    text = "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cf"))
    return text.strip()


def _chunks(text: str) -> list[str]:
    """Split over-long text on sentence ends so each piece fits the schema's length limit."""
    if len(text) <= MAX_TEXT:
        return [text] if text else []
    out, current = [], ""
    for sentence in re.split(r"(?<=[.!?])\s+", text):
        if current and len(current) + 1 + len(sentence) > MAX_TEXT:
            out.append(current)
            current = ""
        current = f"{current} {sentence}".strip()[:MAX_TEXT]
    return out + ([current] if current else [])


def _strings(obj: Any) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _strings(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _strings(value)


def _first(d: dict, keys: tuple[str, ...]) -> Any:
    lowered = {str(k).lower(): v for k, v in d.items()}
    return next((lowered[k] for k in keys if k in lowered and lowered[k] not in (None, "", [])), None)


def _image_name(value: Any) -> str | None:
    if isinstance(value, list) and value:
        value = value[0]
    if isinstance(value, str) and PurePosixPath(value).suffix.lower() in IMAGE_SUFFIXES:
        return PurePosixPath(value).name
    return None


def _qa_pairs(obj: Any, image: str | None = None) -> Iterator[tuple[str, str, bool, str | None]]:
    """(question, answer, with_image, image file name) from any of the shapes in the module
    docstring. An image is known from an image-like key of the item, or from an enclosing dict key
    that is itself a file name (e.g. ``{"0.png": [{"question": ...}]}``)."""
    if isinstance(obj, list):
        if len(obj) == 2 and all(isinstance(x, str) for x in obj):
            yield obj[0], obj[1], image is not None or "<image>" in obj[0], image
            return
        for item in obj:
            yield from _qa_pairs(item, image)
    elif isinstance(obj, dict):
        raw_image = _first(obj, IMAGE_KEYS)
        image = _image_name(raw_image) or image
        has_image = raw_image is not None or image is not None
        turns = _first(obj, ("conversations", "conversation", "messages", "dialogue"))
        if isinstance(turns, list) and all(isinstance(t, dict) for t in turns):
            pending = None
            for turn in turns:
                role = str(_first(turn, ("from", "role", "speaker")) or "").lower()
                text = _first(turn, ("value", "content", "text"))
                if not isinstance(text, str):
                    continue
                if role in ("human", "user", "question"):
                    pending = text
                elif role in ("gpt", "assistant", "bot", "answer") and pending is not None:
                    yield pending, text, has_image or "<image>" in pending, image
                    pending = None
            return
        question, answer = _first(obj, QUESTION_KEYS), _first(obj, ANSWER_KEYS)
        if isinstance(question, str) and isinstance(answer, (str, int, float, bool)):
            yield question, str(answer), has_image or "<image>" in question, image
            return
        for key, value in obj.items():
            if isinstance(value, (list, dict)):
                yield from _qa_pairs(value, _image_name(str(key)) or image)


class _Converter:
    def __init__(self, concept: str):
        self.concept = concept
        self.notes: list[str] = []

    def text(self, raw: str) -> str:
        # "<bo>" and a bare "<concept>" token become the placeholder; "<image>" markers are dropped.
        text = raw.replace("<image>", " ")
        text = re.sub(rf"<\s*{re.escape(self.concept)}\s*>", PLACEHOLDER, text, flags=re.IGNORECASE)
        return re.sub(r"[ \t]+", " ", _clean(text)).strip()

    def qa(self, obj: Any, source: str) -> list[dict]:
        pairs = []
        for q, a, with_image, image in _qa_pairs(obj):
            q, a = self.text(q), self.text(a)
            if q and a and len(q) <= MAX_TEXT and len(a) <= MAX_TEXT:
                pairs.append({"question": q, "answer": a, "with_image": with_image, "image": image})
        if obj is not None and not pairs:
            self.notes.append(f"{self.concept}: no question/answer pairs recognised in {source}")
        return pairs


def _info_fields(info: Any, conv: _Converter) -> tuple[str | None, list[str], dict[str, str]]:
    if not isinstance(info, dict):
        return None, [conv.text(s) for s in _strings(info) if conv.text(s)], {}
    class_word = _first(info, CLASS_KEYS)
    class_word = conv.text(class_word) if isinstance(class_word, str) else None
    facts: list[str] = []
    attributes: dict[str, str] = {}
    consumed = {k for k in info if str(k).lower() in CLASS_KEYS + ("name", "concept", "id")}
    for key, value in info.items():
        if key in consumed:
            continue
        if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
            attributes.update({conv.text(str(k))[:64]: conv.text(v) for k, v in value.items() if conv.text(v)})
        else:
            facts.extend(piece for s in _strings(value) for piece in _chunks(conv.text(s)))
    return class_word, facts, attributes


def _recognition_questions(objs: list[Any], conv: _Converter) -> list[str]:
    questions = []
    for obj in objs:
        for q, _, _, _ in _qa_pairs(obj):
            q = conv.text(q)
            if PLACEHOLDER in q and q not in questions and len(q) <= MAX_TEXT:
                questions.append(q)
    return questions[:20]


def safe_concept_name(raw: str) -> str | None:
    name = re.sub(r"[^a-z0-9_-]+", "-", raw.strip().lower()).strip("-_")[:63].strip("-_")
    return name if NAME.fullmatch(name) else None


def import_unifybench(
    source_uri: str,
    uploads_uri: str,
    tenant: str,
    storage: StorageConfig | None = None,
    negatives_uri: str | None = None,
    concepts: list[str] | None = None,
) -> UnifyBenchImport:
    """Convert ``<source>/concept/{train,test}/<c>`` into ``<uploads>/<tenant>/<c>/...``."""
    check_name(tenant, "tenant")
    src_fs, src_root = filesystem_for(source_uri, storage)
    dst_fs, dst_root = filesystem_for(uploads_uri, storage)
    report = UnifyBenchImport()
    files = _concept_files(src_fs, join(src_root, "concept"))
    for raw_name in sorted({k.split("/", 1)[1] for k in files if k.startswith("train/")}):
        if concepts is not None and raw_name not in concepts:
            continue
        name = safe_concept_name(raw_name)
        if name is None:
            report.skipped[raw_name] = "cannot derive a safe concept name"
            continue
        concept_id = ConceptId(tenant, name)
        if concept_id.key in report.imported:
            report.skipped[raw_name] = f"its safe name {name!r} is already taken by another concept"
            continue
        source = _SourceConcept(raw_name, src_fs, files.get(f"train/{raw_name}", {}), files.get(f"test/{raw_name}", {}))
        out = join(dst_root, concept_id.key)
        images, heldout_images = source.copy_images(dst_fs, out)
        try:
            description = ConceptDescription.model_validate(source.description_fields(heldout_images))
        except ValidationError as exc:
            report.skipped[raw_name] = "converted concept.json is invalid: " + format_validation_error(exc)
            continue
        if images == 0:
            source.conv.notes.append(f"{raw_name}: no numbered images found in train/{raw_name}")
        write_bytes_atomic(dst_fs, join(out, CONCEPT_JSON), description.to_json_bytes())
        report.imported.append(concept_id.key)
        report.notes.extend(source.conv.notes)
    if negatives_uri:
        report.negatives_copied = _copy_negative_pool(src_fs, join(src_root, "random_images"), *filesystem_for(negatives_uri, storage))
    report.imported.sort()
    return report


def _concept_files(fs, concept_root: str) -> dict[str, dict[str, str]]:
    """"train/<c>" or "test/<c>" -> {path relative to that folder: filesystem path}."""
    files: dict[str, dict[str, str]] = {}
    for info in list_files(fs, concept_root):
        rel = info.path[len(concept_root) + 1 :].split("/")
        if len(rel) >= 3 and rel[0] in ("train", "test"):
            files.setdefault(f"{rel[0]}/{rel[1]}", {})["/".join(rel[2:])] = info.path
    return files


@dataclass
class _SourceConcept:
    """One UnifyBench concept's train/ and test/ files, read and converted on demand."""

    raw_name: str
    fs: Any
    train: dict[str, str]
    test: dict[str, str]

    def __post_init__(self):
        self.conv = _Converter(self.raw_name)

    def load_json(self, table: dict[str, str], rel: str) -> Any:
        if rel not in table:
            return None
        try:
            return json.loads(read_bytes(self.fs, table[rel]).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            self.conv.notes.append(f"{self.raw_name}: {rel} is not readable JSON ({exc}); ignored")
            return None

    def copy_images(self, dst_fs, out: str) -> tuple[int, dict[str, str]]:
        """Reference images, concept negatives and held-out test images into the upload layout.
        Returns (reference images copied, test image name -> its path inside the concept folder)."""
        images = 0
        for rel, path in sorted(self.train.items()):
            p = PurePosixPath(rel)
            if len(p.parts) == 1 and p.stem.isdigit() and p.suffix.lower() in IMAGE_SUFFIXES:
                write_bytes_atomic(dst_fs, join(out, IMAGES_DIR, p.name), read_bytes(self.fs, path))
                images += 1
            elif len(p.parts) == 2 and p.parts[0] == "negative_example" and p.suffix.lower() in IMAGE_SUFFIXES:
                write_bytes_atomic(dst_fs, join(out, NEGATIVES_DIR, p.name), read_bytes(self.fs, path))
        heldout_images = {}
        for rel, path in sorted(self.test.items()):
            p = PurePosixPath(rel)
            if len(p.parts) == 1 and p.suffix.lower() in IMAGE_SUFFIXES:
                write_bytes_atomic(dst_fs, join(out, HELDOUT_DIR, IMAGES_DIR, p.name), read_bytes(self.fs, path))
                heldout_images[p.name] = f"heldout/images/{p.name}"
        return images, heldout_images

    def description_fields(self, heldout_images: dict[str, str]) -> dict:
        """The concept.json fields (validated by the caller) from info.json and the QA files."""
        conv, train, test = self.conv, self.train, self.test
        class_word, facts, attributes = _info_fields(self.load_json(train, "info.json"), conv)
        if not class_word:
            class_word = "object"
            conv.notes.append(f"{self.raw_name}: no class word found in info.json; using 'object'")
        vqa = []
        for pair in conv.qa(self.load_json(test, "vqa.json"), "test/vqa.json"):
            image = heldout_images.get(pair["image"] or "")
            if image is None and len(heldout_images) == 1:
                image = next(iter(heldout_images.values()))  # a single test image needs no reference
            if image is None:
                conv.notes.append(f"{self.raw_name}: VQA pair without a matching test image skipped: {pair['question'][:60]!r}")
                continue
            vqa.append({"image": image, "question": pair["question"], "answer": pair["answer"]})
        t2i = [conv.text(s) for s in _strings(self.load_json(test, "t2i_conditions.json")) if conv.text(s)]
        return {
            "display_name": self.raw_name[:64],
            "class_word": class_word[:64],
            "facts": facts,
            "attributes": attributes,
            "qa": [
                {k: p[k] for k in ("question", "answer", "with_image")}
                for p in conv.qa(self.load_json(train, "conversations.json"), "train/conversations.json")
            ],
            "recognition_questions": _recognition_questions(
                [self.load_json(train, "positive_recognitions.json"), self.load_json(train, "random_recognitions.json")], conv
            ),
            "heldout": {
                "text_qa": [{"question": p["question"], "answer": p["answer"]}
                            for p in conv.qa(self.load_json(test, "text_only.json"), "test/text_only.json")],
                "vqa": vqa,
                "t2i_prompts": [t for t in t2i if len(t) <= MAX_TEXT],
            },
        }


def _copy_negative_pool(src_fs, pool_root: str, neg_fs, neg_root: str) -> int:
    """UnifyBench's shared random images into the job's negative pool; returns how many."""
    copied = 0
    for info in list_files(src_fs, pool_root):
        rel = info.path[len(pool_root) + 1 :]
        if PurePosixPath(rel).suffix.lower() in IMAGE_SUFFIXES and "/" not in rel:
            write_bytes_atomic(neg_fs, join(neg_root, "unifybench", rel), read_bytes(src_fs, info.path))
            copied += 1
    return copied
