"""ConceptId: one name rule, keys and registry names that split back to the same concept."""
from __future__ import annotations

import subprocess
import sys

import pytest

from omnipersona.identity import ConceptId, parse_any_model_uri, parse_model_name, parse_model_uri


def test_key_and_parse_round_trip():
    c = ConceptId("acme", "maeve")
    assert c.key == "acme/maeve" and str(c) == "acme/maeve"
    assert ConceptId.parse("acme/maeve") == c
    assert sorted([ConceptId("b", "a"), ConceptId("a", "z")]) == [ConceptId("a", "z"), ConceptId("b", "a")]


@pytest.mark.parametrize("bad", ["Acme", "a.b", "a/b", "", "x" * 64, "a'b", "-a", "a\n", "ä"])
def test_names_outside_the_rule_are_refused(bad):
    with pytest.raises(ValueError, match="not allowed"):
        ConceptId(bad, "rex")
    with pytest.raises(ValueError):
        ConceptId("acme", bad)


@pytest.mark.parametrize("bad_key", ["acme", "acme/rex/x", "/rex", "acme/", 3])
def test_malformed_keys_are_refused(bad_key):
    with pytest.raises(ValueError):
        ConceptId.parse(bad_key)


def test_model_names_and_uris_parse_back():
    c = ConceptId("acme", "maeve")
    assert c.model_name() == "omnipersona.acme.maeve"
    assert parse_model_name(c.model_name("staging")) == ("staging", c)
    ref = parse_model_uri("models:/omnipersona.acme.maeve@champion")
    assert (ref.prefix, ref.concept, ref.alias, ref.version) == ("omnipersona", c, "champion", None)
    assert ref.uri == c.model_uri(alias="champion")
    ref = parse_model_uri(c.model_uri(version=3))
    assert (ref.alias, ref.version, ref.uri) == (None, 3, "models:/omnipersona.acme.maeve/3")
    for bad in ("models:/omnipersona.acme@champion", "models:/a.b.c", "runs:/x/y", "models:/a.B.c@x"):
        with pytest.raises(ValueError, match="models:/"):
            parse_model_uri(bad)



def test_any_standard_mlflow_model_uri_parses():
    model_id = "m-" + "0123456789abcdef" * 2
    assert parse_any_model_uri(f"models:/{model_id}").model_id == model_id
    ref = parse_any_model_uri("models:/omnipersona.acme.maeve@champion")
    assert (ref.name, ref.alias, ref.version, ref.model_id) == ("omnipersona.acme.maeve", "champion", None, None)
    ref = parse_any_model_uri("models:/Any_Name-1/7")  # any registered model name, checked when resolved
    assert (ref.name, ref.alias, ref.version) == ("Any_Name-1", None, 7)
    bad = ["models:/omnipersona.acme.maeve", "models:/m-123", "models:/a b@x", "models:/a/b/1", "models:/a@", "runs:/r/model",
           "models:/a@x\n", "", None]
    for uri in bad:
        with pytest.raises(ValueError, match="models:/<name>@<alias>, models:/<name>/<version> or models:/m-"):
            parse_any_model_uri(uri)

def test_identity_needs_no_torch():
    """The data workers and the CLI read concept ids without importing the model."""
    code = "import sys, omnipersona.identity; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_no_class_name_is_defined_twice_in_the_package():
    """Two unrelated classes with one name (there were two `ConceptSpec`s) make every import a guess."""
    import ast
    from collections import defaultdict
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    where = defaultdict(list)
    for package in ("omnipersona", "pipelines", "jobs"):
        for path in sorted((repo / package).rglob("*.py")):
            for node in ast.parse(path.read_text()).body:
                if isinstance(node, ast.ClassDef):
                    where[node.name].append(f"{path.relative_to(repo)}:{node.lineno}")
    assert len(where) > 50  # the scan really read the package
    assert {name: places for name, places in where.items() if len(places) > 1} == {}
