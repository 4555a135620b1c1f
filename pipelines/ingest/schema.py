"""The ``concept.json`` a user uploads next to the images of one concept.

Texts may name the concept by its display name or by the placeholder ``<sks>``; ingest rewrites the
display name to ``<sks>`` so every generated example speaks about the placeholder only (the model
library later swaps ``<sks>`` for the concept's own tokens).
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

PLACEHOLDER = "<sks>"
EDITS_DIR = "edits"


def _no_control_chars(text: str) -> str:
    if any(unicodedata.category(ch) in ("Cc", "Cf") and ch not in "\n\t" for ch in text):
        raise ValueError("must not contain control or invisible formatting characters")
    return text


def _must_mention_placeholder(text: str) -> str:
    if PLACEHOLDER not in text:
        raise ValueError(f"must contain the placeholder {PLACEHOLDER}")
    return text


def _edit_file(path: str) -> str:
    parts = path.split("/")
    if len(parts) != 2 or parts[0] != EDITS_DIR or parts[1] in ("", ".", "..") or "\\" in path:
        raise ValueError(f"must be a file directly under {EDITS_DIR}/ (e.g. '{EDITS_DIR}/0_source.png')")
    return _no_control_chars(path)


Text = Annotated[str, Field(min_length=1, max_length=2000), AfterValidator(_no_control_chars)]
ShortText = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_no_control_chars)]
PlaceholderText = Annotated[Text, AfterValidator(_must_mention_placeholder)]
EditFile = Annotated[str, AfterValidator(_edit_file)]


class _Strict(BaseModel):
    # extra="forbid": a misspelt field ("atributes") is an error the user sees, not silently ignored data.
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class QAPair(_Strict):
    question: Text
    answer: Text
    with_image: bool = Field(default=False, description="True: asked while showing a concept image (VQA).")


class EditTriplet(_Strict):
    source: EditFile
    target: EditFile
    instruction: Text


class HeldOutVQA(_Strict):
    image: Annotated[str, Field(min_length=1, max_length=512), AfterValidator(_no_control_chars)]
    question: Text
    answer: Text


class HeldOut(_Strict):
    """Evaluation-only material (never turned into training examples)."""

    text_qa: list[QAPair] = Field(default_factory=list)
    vqa: list[HeldOutVQA] = Field(default_factory=list)
    t2i_prompts: list[Text] = Field(default_factory=list)


class ConceptSpec(_Strict):
    schema_version: Literal[1] = 1
    display_name: ShortText = Field(description="Display name, e.g. 'maeve'.")
    class_word: ShortText = Field(description="What the concept is, e.g. 'dog'.")
    facts: list[Text] = Field(default_factory=list, description="Free-text attribute sentences.")
    attributes: dict[ShortText, Text] = Field(default_factory=dict, description="e.g. {'toy': 'black excavator'}")
    qa: list[QAPair] = Field(default_factory=list)
    captions: list[PlaceholderText] = Field(default_factory=list, description="Extra text-to-image captions.")
    recognition_questions: list[PlaceholderText] = Field(default_factory=list)
    edits: list[EditTriplet] = Field(default_factory=list)
    heldout: HeldOut = Field(default_factory=HeldOut)


class ConceptSpecError(ValueError):
    """concept.json could not be parsed or does not match the schema; the message is user-facing."""


def parse_concept_json(data: bytes) -> ConceptSpec:
    try:
        raw = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConceptSpecError(f"concept.json is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ConceptSpecError(f"concept.json is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(raw, dict):
        raise ConceptSpecError(f"concept.json must hold a JSON object, not {type(raw).__name__}")
    try:
        return ConceptSpec.model_validate(raw)
    except ValidationError as exc:
        raise ConceptSpecError("concept.json does not match the schema: " + format_validation_error(exc)) from None


def format_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def to_placeholder(text: str, display_name: str) -> str:
    """Replace whole-word mentions of the display name (any case, with possessive) by ``<sks>``."""
    pattern = re.compile(rf"(?<![\w<]){re.escape(display_name)}(?![\w>])", re.IGNORECASE)
    return pattern.sub(PLACEHOLDER, text)
