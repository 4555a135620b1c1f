"""The procedural world: rendering, concepts, negatives, edits, the pretraining stream, uploads."""
from __future__ import annotations

import json
import statistics
import time
from itertools import islice
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest
from PIL import Image
from pydantic import ValidationError

from omnipersona.world import (ACCESSORIES, BACKGROUNDS, BODY_COLOURS, PATTERNS, SHAPES, VISIBLE_ATTRIBUTES, CaptionSample,
                               EditTriplet, ObjectSpec, VQASample, attribute_facts, caption, differing_attributes,
                               make_concept, make_concepts, make_edit, pretraining_sample, pretraining_stream, random_spec,
                               render, render_background)
from omnipersona.world.concepts import NAME_PATTERN, NAMES
from omnipersona.concepts.upload_schema import ConceptDescription
from omnipersona.world.layout import EvalManifest
from omnipersona.world.uploads import (
    EvalSetWriteOptions,
    UploadOptions,
    read_concept_upload,
    read_eval_manifest,
    read_image,
    write_eval_sets,
    write_uploads,
)

STAR = ObjectSpec(
    shape="star", colour="teal", pattern="striped", accessory="hat", accessory_colour="red", background="grass"
)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image)


# ---- rendering ----------------------------------------------------------------------------------


def test_same_seed_gives_identical_pixels_and_another_seed_does_not():
    assert pixels(render(STAR, 64, 7)).tobytes() == pixels(render(STAR, 64, 7)).tobytes()
    assert not np.array_equal(pixels(render(STAR, 64, 7)), pixels(render(STAR, 64, 8)))
    # A Generator is accepted too, and two generators in the same state agree.
    a = render(STAR, 64, np.random.default_rng(3))
    b = render(STAR, 64, np.random.default_rng(3))
    assert np.array_equal(pixels(a), pixels(b))


@pytest.mark.parametrize("size", [32, 64, 97])
def test_render_is_an_rgb_uint8_image_of_the_requested_size(size):
    image = render(STAR, size, 0)
    assert image.mode == "RGB" and image.size == (size, size)
    array = pixels(image)
    assert array.dtype == np.uint8 and array.shape == (size, size, 3)


def test_render_rejects_bad_seeds_and_sizes():
    with pytest.raises(ValueError):
        render(STAR, 64, -1)
    with pytest.raises(ValueError):
        render(STAR, 4, 0)


def test_rendering_a_64px_image_takes_well_under_5_ms():
    rng = np.random.default_rng(0)
    specs = [random_spec(rng) for _ in range(60)]
    render(specs[0], 64, 0)  # warm caches
    times = []
    for i, spec in enumerate(specs):
        start = time.process_time()
        render(spec, 64, i)
        times.append(time.process_time() - start)
    assert statistics.median(times) < 0.005


@pytest.mark.parametrize(
    "field, values",
    [("shape", SHAPES), ("colour", BODY_COLOURS), ("pattern", PATTERNS), ("background", BACKGROUNDS)],
)
def test_every_attribute_value_is_visible_in_the_image(field, values):
    base = ObjectSpec(shape="circle", colour="blue", pattern="plain", accessory="hat", accessory_colour="black")
    images = [pixels(render(base.replace(**{field: value}), 64, 5)) for value in values]
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            assert not np.array_equal(images[i], images[j]), (values[i], values[j])


def test_every_accessory_is_visible_in_the_image():
    base = ObjectSpec(shape="square", colour="yellow")
    images = {
        a: pixels(render(base.replace(accessory=a, accessory_colour=None if a == "none" else "purple"), 64, 5))
        for a in ACCESSORIES
    }
    for a in ACCESSORIES:
        for b in ACCESSORIES:
            if a < b:
                changed = np.any(images[a] != images[b], axis=-1).mean()
                assert changed > 0.01, (a, b)


def test_background_alone_is_exactly_the_scene_behind_the_object():
    with_object = pixels(render(STAR, 64, 11)).astype(int)
    scene = pixels(render_background("grass", 64, 11)).astype(int)
    same = np.all(with_object == scene, axis=-1)
    assert 0.4 < same.mean() < 0.95  # identical everywhere but under the object
    assert same[:, :4].all()  # the object never reaches the left edge


def test_spec_rejects_an_accessory_that_would_be_invisible_or_uncoloured():
    with pytest.raises(ValidationError):
        ObjectSpec(shape="star", colour="red", accessory="hat", accessory_colour="red")
    with pytest.raises(ValidationError):
        ObjectSpec(shape="star", colour="red", accessory="hat")
    with pytest.raises(ValidationError):
        ObjectSpec(shape="star", colour="red", accessory_colour="blue")
    with pytest.raises(ValidationError):
        ObjectSpec(shape="pyramid", colour="red")


# ---- text ---------------------------------------------------------------------------------------


def test_caption_reads_naturally_and_mentions_every_visible_attribute():
    assert caption(STAR) == "a striped teal star wearing a red hat on grass"
    assert caption(ObjectSpec(shape="circle", colour="orange")) == "an orange circle on a plain white background"
    glasses = ObjectSpec(shape="creature", colour="pink", pattern="dotted", accessory="glasses",
                         accessory_colour="black", background="snow")
    assert caption(glasses, "a black excavator") == (
        "a dotted pink creature wearing black glasses next to a black excavator in the snow"
    )


def test_attribute_facts_list_the_visible_attributes():
    assert attribute_facts(STAR) == {
        "shape": "star", "colour": "teal", "pattern": "striped", "accessory": "red hat", "background": "grass",
    }
    assert attribute_facts(STAR.replace(accessory="none", accessory_colour=None))["accessory"] == "none"


# ---- concepts -----------------------------------------------------------------------------------


def test_concepts_are_deterministic_unique_and_safely_named():
    concepts = make_concepts(40, seed=3)
    assert concepts == make_concepts(40, seed=3)
    assert [c.spec for c in concepts] != [c.spec for c in make_concepts(40, seed=4)]
    names = [c.name for c in concepts]
    assert len(set(names)) == len(names) and all(NAME_PATTERN.match(n) for n in names)
    for i, a in enumerate(concepts):
        for b in concepts[i + 1:]:
            assert len(differing_attributes(a.spec, b.spec)) >= 2, (a.name, b.name)


def test_more_concepts_than_names_still_get_unique_safe_names():
    names = [c.name for c in make_concepts(len(NAMES) + 5, seed=0)]
    assert len(set(names)) == len(names) and all(NAME_PATTERN.match(n) for n in names)


def test_concept_looks_depend_on_the_seed_only_and_names_are_checked():
    assert make_concept(5).spec == make_concept(5, name="custom_name-1").spec
    assert make_concept(5).private == make_concept(5, name="other").private
    with pytest.raises(ValidationError):
        make_concept(5, name="Bad Name")
    with pytest.raises(ValidationError):
        make_concept(5, name="../escape")


def test_concept_facts_questions_and_parg_requests_carry_its_attributes():
    concept = make_concept(12, name="maeve")
    facts = " ".join(concept.facts())
    attributes = concept.attributes()
    assert set(attributes) == {"shape", "colour", "pattern", "accessory", "toy", "favourite_food", "home", "hobby"}
    for key in ("colour", "toy", "favourite_food", "home", "hobby"):
        assert attributes[key] in facts
    assert concept.class_word == concept.spec.shape

    train, held_out = concept.questions(), concept.questions(held_out=True)
    assert [q.attribute for q in train] == [q.attribute for q in held_out]
    assert all(a.answer == b.answer for a, b in zip(train, held_out))
    assert all(a.question != b.question for a, b in zip(train, held_out))
    assert {q.attribute for q in train if q.visible} == set(VISIBLE_ATTRIBUTES)
    assert all("maeve" in q.question for q in train)
    assert [q.question for q in concept.questions(subject="<sks>")][1] == "What colour is <sks>?"

    toy_request = next(r for r in concept.parg_requests() if r.attribute == "toy")
    assert toy_request.answer == concept.private.toy.phrase
    assert toy_request.answer in toy_request.rewritten and "toy" not in toy_request.rewritten


def test_train_and_held_out_views_differ_and_vary_the_background():
    concept = make_concept(21)
    train, held_out = concept.train_views(6), concept.held_out_views(6)
    train_bytes = {pixels(v.image).tobytes() for v in train}
    assert len(train_bytes) == 6
    assert not train_bytes & {pixels(v.image).tobytes() for v in held_out}
    assert len({v.spec.background for v in train}) == 6
    assert all(differing_attributes(v.spec, concept.spec) == [] for v in train + held_out)
    assert concept.train_views(3)[2].image.tobytes() == train[2].image.tobytes()  # prefix-stable


def test_hard_negatives_differ_in_exactly_one_visible_attribute():
    concept = make_concept(8)
    negatives = concept.hard_negatives(12)
    assert {n.differs_in for n in negatives} == set(VISIBLE_ATTRIBUTES)
    for negative in negatives:
        assert differing_attributes(concept.spec, negative.spec) == [negative.differs_in]
        assert negative.kind == "hard"
    assert len({n.spec.replace(background="white") for n in negatives}) == 12  # no look-alike twice


def test_random_negatives_are_unlike_the_concept_and_the_avoided_specs():
    concepts = make_concepts(4, seed=1)
    negatives = concepts[0].random_negatives(10, avoid=[c.spec for c in concepts[1:]])
    for negative in negatives:
        for concept in concepts:
            assert len(differing_attributes(negative.spec, concept.spec)) >= 2


def test_item_views_show_a_different_icon_per_private_item():
    concept = make_concept(30)
    corners = {c: pixels(concept.item_view(c))[44:, 44:] for c in ("toy", "favourite_food", "home")}
    assert np.array_equal(corners["toy"], pixels(concept.item_view("toy"))[44:, 44:])  # deterministic
    assert not np.array_equal(corners["toy"], corners["favourite_food"])
    assert not np.array_equal(corners["favourite_food"], corners["home"])
    toy, home = pixels(concept.item_view("toy")), pixels(concept.item_view("home"))
    assert np.array_equal(toy[:40], home[:40])  # same scene: only the item changes


def test_private_item_is_rendered_only_in_its_corner():
    concept = make_concept(30)
    spec = concept.spec.replace(background="white")
    plain = pixels(render(spec, 64, 4)).astype(int)
    with_toy = pixels(render(spec, 64, 4, item=concept.private.toy)).astype(int)
    changed = np.any(plain != with_toy, axis=-1)
    assert changed.sum() > 40
    assert not changed[:40, :].any() and not changed[:, :40].any()


# ---- edits --------------------------------------------------------------------------------------


def test_edit_triplets_change_exactly_what_the_instruction_says():
    spec = STAR
    removed = make_edit(spec, "remove", "maeve", 64, 9)
    assert removed.instruction == "remove maeve"
    assert pixels(removed.source).tobytes() == pixels(render(spec, 64, 9)).tobytes()
    assert pixels(removed.target).tobytes() == pixels(render_background("grass", 64, 9)).tobytes()
    assert removed.target_spec is None

    snow = make_edit(spec, "background", "maeve", 64, 9)
    assert snow.target_spec is not None and snow.target_spec.background != "grass"
    assert snow.instruction.startswith("change the background to ")
    assert differing_attributes(spec, snow.target_spec) == []

    hat = make_edit(spec, "accessory", "maeve", 64, 9)
    assert hat.instruction.startswith("give maeve ")
    assert hat.target_spec is not None and differing_attributes(spec, hat.target_spec) == ["accessory"]
    assert hat.target_spec.accessory_colour in hat.instruction and hat.target_spec.accessory in hat.instruction

    recolour = make_edit(spec, "recolour", "the star", 64, 9)
    assert recolour.target_spec is not None and differing_attributes(spec, recolour.target_spec) == ["colour"]
    assert recolour.instruction == f"make the star {recolour.target_spec.colour}"

    added = make_edit(spec, "add_item", "maeve", 64, 9)
    assert added.instruction.startswith("add ") and added.instruction.endswith(" next to maeve")

    for edit in (removed, snow, hat, recolour, added):
        assert not np.array_equal(pixels(edit.source), pixels(edit.target)), edit.kind
    with pytest.raises(ValueError):
        make_edit(spec, "explode", "maeve")


def test_concept_edits_start_with_removal_and_name_the_concept():
    concept = make_concept(2, name="otis")
    edits = concept.edits(3)
    assert [e.kind for e in edits] == ["remove", "background", "accessory"]
    assert all("otis" in e.instruction or e.kind == "background" for e in edits)
    assert concept.edits(1, subject="<sks>")[0].instruction == "remove <sks>"


# ---- pretraining stream -------------------------------------------------------------------------


def _fingerprint(sample) -> tuple:
    if isinstance(sample, EditTriplet):
        return ("edit", sample.instruction, sample.source.tobytes(), sample.target.tobytes())
    if isinstance(sample, VQASample):
        return ("vqa", sample.question, sample.answer, sample.image.tobytes())
    return ("caption", sample.caption, sample.image.tobytes())


def test_pretraining_stream_is_deterministic_indexable_and_mixed():
    first = [_fingerprint(s) for s in islice(pretraining_stream(5), 40)]
    assert first == [_fingerprint(s) for s in islice(pretraining_stream(5), 40)]
    assert _fingerprint(pretraining_sample(5, 17)) == first[17]
    assert [_fingerprint(s) for s in islice(pretraining_stream(5, start=30), 3)] == first[30:33]
    assert first != [_fingerprint(s) for s in islice(pretraining_stream(6), 40)]
    assert {f[0] for f in first} == {"edit", "vqa", "caption"}


def test_pretraining_vqa_answers_match_the_image_spec():
    colour_answers = []
    for i in range(300):
        sample = pretraining_sample(0, i)
        if isinstance(sample, VQASample) and sample.question == "What colour is the object?":
            colour_answers.append(sample.answer)
        if isinstance(sample, CaptionSample):
            assert sample.caption.startswith(("a ", "an "))
    assert colour_answers and set(colour_answers) <= set(BODY_COLOURS)


# ---- uploads and evaluation sets ----------------------------------------------------------------


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_upload_writer_produces_a_valid_tree_that_reads_back(tmp_path):
    concepts = make_concepts(3, seed=0)
    tenants = {"acme": concepts[:2], "globex": concepts[2:]}
    options = UploadOptions(views=3, edits=2, pool_negatives=4)
    written = write_uploads(tenants, tmp_path / "a", options=options)
    assert len(written) == 3

    for tenant, group in tenants.items():
        for concept in group:
            folder = tmp_path / "a" / tenant / concept.name
            raw = json.loads((folder / "concept.json").read_text())
            assert set(raw) == set(ConceptDescription.model_fields)  # written from the one upload schema
            upload = read_concept_upload(folder)
            assert upload.display_name == concept.name and upload.class_word == concept.class_word
            assert upload.attributes["colour"] == concept.spec.colour
            assert upload.attributes["toy"] == concept.private.toy.words
            assert all(set(pair) == {"question", "answer", "with_image"} for pair in raw["qa"])
            assert sorted(p.name for p in (folder / "images").iterdir()) == ["000.png", "001.png", "002.png"]
            image = read_image(folder / "images" / "000.png")
            assert image.size == (64, 64) and image.mode == "RGB"
            assert [e.instruction for e in upload.edits][0] == f"remove {concept.name}"
            assert not (folder / "edits" / "edits.json").exists()  # concept.json is the one list of edits
            for edit in upload.edits:
                assert (folder / edit.source).is_file() and (folder / edit.target).is_file()
    assert len(list((tmp_path / "a" / "_negatives" / "images").glob("*.png"))) == 4

    write_uploads(tenants, tmp_path / "b", options=options)
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")  # same seeds -> identical bytes


def test_upload_writer_uses_any_pyarrow_filesystem(tmp_path):
    (tmp_path / "bucket").mkdir()
    filesystem = pafs.SubTreeFileSystem(str(tmp_path / "bucket"), pafs.LocalFileSystem())
    concept = make_concept(4, name="pip")
    options = UploadOptions(views=2, edits=1, pool_negatives=1)
    write_uploads({"t1": [concept]}, "uploads", filesystem=filesystem, options=options)
    upload = read_concept_upload("uploads/t1/pip", filesystem=filesystem)
    assert isinstance(upload, ConceptDescription)
    assert (tmp_path / "bucket" / "uploads" / "t1" / "pip" / "images" / "001.png").is_file()
    assert read_image("uploads/t1/pip/edits/000_target.png", filesystem=filesystem).size == (64, 64)


def test_upload_writer_rejects_unsafe_tenants_and_duplicate_concepts(tmp_path):
    concept = make_concept(1, name="juno")
    with pytest.raises(ValueError):
        write_uploads({"_negatives": [concept]}, tmp_path)
    with pytest.raises(ValueError):
        write_uploads({"acme": [concept, concept]}, tmp_path)


def test_eval_set_lists_views_negatives_facts_and_parg_references(tmp_path):
    concepts = make_concepts(2, seed=9)
    options = EvalSetWriteOptions(views=3, hard_negatives=4, random_negatives=3)
    write_eval_sets({"acme": concepts}, tmp_path / "eval", options=options)
    for concept in concepts:
        folder = tmp_path / "eval" / "acme" / concept.name
        manifest = read_eval_manifest(folder)
        assert isinstance(manifest, EvalManifest) and manifest.concept == concept.name
        negatives = manifest.hard_negatives + manifest.random_negatives
        files = [v.file for v in manifest.views] + [n.file for n in negatives] + [p.reference for p in manifest.parg]
        assert len(files) == 3 + 4 + 3 + 3
        assert all((folder / f).is_file() for f in files)
        assert [n.differs_in for n in manifest.hard_negatives] == list(VISIBLE_ATTRIBUTES)
        assert {f.attribute for f in manifest.facts if not f.visible} == {"toy", "favourite_food", "home", "hobby"}
        held_out = {read_image(folder / v.file).tobytes() for v in manifest.views}
        assert not held_out & {v.image.tobytes() for v in concept.train_views(10)}


# ---- identity signal ----------------------------------------------------------------------------


def test_nearest_neighbour_on_pixels_recognises_held_out_views_of_five_concepts():
    """The world carries identity: even raw downsampled pixels tell 5 concepts apart on new views
    (new poses and backgrounds), far above the 20 % of chance."""

    def features(image: Image.Image) -> np.ndarray:
        return np.asarray(image.resize((16, 16), Image.Resampling.BOX), dtype=np.float32).ravel() / 255.0

    concepts = make_concepts(5, seed=0)
    references = [(features(v.image), i) for i, c in enumerate(concepts) for v in c.train_views(8)]
    queries = [(features(v.image), i) for i, c in enumerate(concepts) for v in c.held_out_views(8)]
    bank = np.stack([f for f, _ in references])
    labels = np.asarray([i for _, i in references])
    correct = [labels[np.argmin(((bank - f) ** 2).sum(axis=1))] == i for f, i in queries]
    assert np.mean(correct) >= 0.5
