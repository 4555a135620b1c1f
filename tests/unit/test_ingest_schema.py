"""concept.json: valid files parse, broken ones fail with messages that point at the problem."""

from __future__ import annotations

import json

import pytest

from pipelines.ingest.schema import ConceptSpecError, parse_concept_json, to_placeholder


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
    with pytest.raises(ConceptSpecError) as err:
        parse_concept_json(data)
    assert expected in str(err.value)


def test_display_name_becomes_the_placeholder():
    assert to_placeholder("Maeve loves maeve's toy; maeveish is not her.", "maeve") == (
        "<sks> loves <sks>'s toy; maeveish is not her."
    )
    assert to_placeholder("<sks> stays", "sks") == "<sks> stays"
