"""concept.json: valid files parse, broken ones fail with messages that point at the problem, and
docs/data-layout.md documents exactly the schema's fields."""

from __future__ import annotations

import json
import re
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from omnipersona.concepts.upload_schema import (
    ConceptDescription,
    ConceptDescriptionError,
    parse_concept_json,
    to_placeholder,
)


def dump(**fields) -> bytes:
    return json.dumps(fields).encode()


def test_full_concept_json_parses():
    spec = parse_concept_json(
        dump(
            display_name="maeve",
            class_word="dog",
            facts=["maeve loves swimming"],
            attributes={"toy": "black excavator"},
            qa=[{"question": "Who is maeve?", "answer": "My dog.", "with_image": True}],
            captions=["<sks> on a beach"],
            edits=[{"source": "edits/a.png", "target": "edits/b.png", "instruction": "Remove <sks>."}],
            heldout={"text_qa": [{"question": "q?", "answer": "a"}], "t2i_prompts": ["<sks> in snow"]},
        )
    )
    assert spec.attributes == {"toy": "black excavator"}
    assert spec.qa[0].with_image and spec.edits[0].target == "edits/b.png"


@pytest.mark.parametrize(
    "data, expected",
    [
        (b'{"display_name": "maeve", "class_word": ', "not valid JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[1, 2]", "must hold a JSON object"),
        (dump(display_name="maeve"), "class_word: Field required"),
        (dump(display_name="maeve", class_word="dog", atributes={}), "atributes: Extra inputs are not permitted"),
        (dump(display_name="", class_word="dog"), "display_name: String should have at least 1 character"),
        (dump(display_name="ma\x00eve", class_word="dog"), "display_name: Value error, must not contain control"),
        (dump(display_name="maeve", class_word="dog", captions=["a photo of maeve"]), "captions.0: Value error, must contain the placeholder <sks>"),
        (
            dump(display_name="m", class_word="dog", edits=[{"source": "../x.png", "target": "edits/b.png", "instruction": "i"}]),
            "edits.0.source: Value error, must be a file directly under edits/",
        ),
        (dump(display_name="m", class_word="dog", qa=[{"question": "q"}]), "qa.0.answer: Field required"),
        (dump(display_name="m", class_word="dog", schema_version=2), "schema_version: Input should be 1"),
    ],
)
def test_schema_errors_are_clear(data, expected):
    with pytest.raises(ConceptDescriptionError) as err:
        parse_concept_json(data)
    assert expected in str(err.value)


def test_display_name_becomes_the_placeholder():
    assert to_placeholder("Maeve loves maeve's toy; maeveish is not her.", "maeve") == (
        "<sks> loves <sks>'s toy; maeveish is not her."
    )
    assert to_placeholder("<sks> stays", "sks") == "<sks> stays"


# ---- docs/data-layout.md and the schema cannot drift ---------------------------------------------

DATA_LAYOUT = Path(__file__).resolve().parents[2] / "docs" / "data-layout.md"


def _concept_json_section() -> str:
    text = DATA_LAYOUT.read_text()
    start = text.index("## concept.json")
    return text[start : text.index("\n## ", start + 1)]


def _documented_fields() -> dict[str, bool]:
    """Field -> required, from the section's `| Field | Required | Meaning |` table."""
    fields: dict[str, bool] = {}
    for line in _concept_json_section().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or cells[1] not in ("yes", "no"):
            continue  # header, separator and prose
        for name in re.findall(r"`([a-z_]+)`", cells[0]):
            fields[name] = cells[1] == "yes"
    return fields


def _fields_in_use(model: BaseModel) -> set[tuple[str, str]]:
    """(model class, field) for every field the document set, nested models included."""
    used = {(type(model).__name__, name) for name in model.model_fields_set}
    for name in model.model_fields_set:
        value = getattr(model, name)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, BaseModel):
                used |= _fields_in_use(item)
    return used


def _all_fields(model: type[BaseModel]) -> set[tuple[str, str]]:
    out = set()
    for name, info in model.model_fields.items():
        out.add((model.__name__, name))
        for arg in typing.get_args(info.annotation) or (info.annotation,):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                out |= _all_fields(arg)
    return out


def test_documented_fields_are_the_schema_fields():
    schema = {name: info.is_required() for name, info in ConceptDescription.model_fields.items()}
    assert _documented_fields() == schema


def test_documented_example_parses_and_shows_every_field():
    example = re.search(r"```json\n(.*?)\n```", _concept_json_section(), re.DOTALL).group(1)
    description = parse_concept_json(example.encode())
    assert _fields_in_use(description) == _all_fields(ConceptDescription)


def test_written_concept_json_reads_back_identically():
    description = parse_concept_json(dump(display_name="maeve", class_word="dog", facts=["maeve swims"]))
    assert parse_concept_json(description.to_json_bytes()) == description
    assert set(json.loads(description.to_json_bytes())) == set(ConceptDescription.model_fields)
