"""A bad job config fails in seconds, before anything heavy loads, with one line per problem that
names the field and says what to do."""
from __future__ import annotations

import copy

import pytest

from tests.preflight_cli import personalize, write_config

CONFIG_SECONDS = 10.0


def good_config(tmp_path) -> dict:
    (tmp_path / "uploads" / "acme" / "rex").mkdir(parents=True)
    (tmp_path / "mlflow").mkdir()
    return {
        "ingest": {"uploads_uri": str(tmp_path / "uploads"), "vit_size": 32, "vae_size": 32},
        "model": {"uri": "tiny"},
        "train": {"recipe": {"steps": 4}, "deepspeed": {"zero_stage": 2}, "scaling": {"num_workers": 1}},
        "artifacts": {"root": str(tmp_path / "store")},
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"},
        "gate": {"minimums": {"recognition_accuracy": 0.0}},
        "evaluation": {"max_examples": 4},
        "ray": {"num_cpus": 2},
        "storage": {"max_attempts": 2},
    }


def set_path(config: dict, dotted: str, value) -> dict:
    config = copy.deepcopy(config)
    *parents, last = dotted.split(".")
    node = config
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return config


def assert_fails_fast(run, *expected: str) -> None:
    assert run.returncode == 2, run.stderr
    assert run.seconds < CONFIG_SECONDS, f"took {run.seconds:.1f}s"
    assert run.heavy_imports == [], f"imported {run.heavy_imports} before answering"
    assert run.problems, run.stderr
    assert "Traceback" not in run.stderr
    text = "\n".join(run.problems)
    for part in expected:
        assert part in text, text


def test_the_good_config_validates(tmp_path):
    run = personalize(write_config(tmp_path, good_config(tmp_path)), "--validate")
    assert run.returncode == 0, run.stderr
    assert "config valid" in run.stdout
    assert run.heavy_imports == []
    assert not list((tmp_path / "store").rglob(".preflight-*")), "the write probe is removed again"


@pytest.mark.parametrize("section", ["", "ingest.", "ingest.augment.", "ingest.limits.", "model.", "train.", "train.recipe.",
                                     "train.deepspeed.", "train.scaling.", "artifacts.", "mlflow.", "gate.", "evaluation.",
                                     "ray.", "storage."])
def test_an_unknown_key_in_any_section_names_it(tmp_path, section):
    run = personalize(write_config(tmp_path, set_path(good_config(tmp_path), f"{section}setps", 7)))
    assert_fails_fast(run, f"personalize: {section}setps: unknown key")


def test_a_missing_section_is_named(tmp_path):
    config = good_config(tmp_path)
    del config["mlflow"]
    assert_fails_fast(personalize(write_config(tmp_path, config)), "mlflow: required")


def test_a_wrong_type_names_the_field_and_the_value(tmp_path):
    run = personalize(write_config(tmp_path, set_path(good_config(tmp_path), "train.recipe.steps", "many")))
    assert_fails_fast(run, "train.recipe.steps:", "'many'")


def test_every_bad_field_gets_its_own_line(tmp_path):
    config = set_path(set_path(good_config(tmp_path), "ingest.vit_size", -1), "train.recipe.lr", "fast")
    run = personalize(write_config(tmp_path, config))
    assert_fails_fast(run, "ingest.vit_size:", "train.recipe.lr:")
    assert len(run.problems) == 2


def test_a_misspelt_gate_metric_fails_before_training_and_suggests_the_name(tmp_path):
    run = personalize(write_config(tmp_path, set_path(good_config(tmp_path), "gate.minimums", {"recognition_acuracy": 0.6})))
    assert_fails_fast(run, "gate.minimums.recognition_acuracy: no evaluation of this job computes it",
                      "did you mean recognition_accuracy?")


def test_a_harness_metric_without_eval_sets_says_what_it_needs(tmp_path):
    run = personalize(write_config(tmp_path, set_path(good_config(tmp_path), "gate.minimums", {"parg_recall": 0.5})))
    assert_fails_fast(run, "gate.minimums.parg_recall:", "needs evaluation.eval_sets_uri")


def test_a_bad_value_from_the_environment_says_which_variable(tmp_path):
    run = personalize(write_config(tmp_path, good_config(tmp_path)), env={"OMNIPERSONA_TRAIN__SCALING__NUM_WORKERS": "zero"})
    assert_fails_fast(run, "train.scaling.num_workers:", "OMNIPERSONA_TRAIN__SCALING__NUM_WORKERS")


def test_a_config_that_is_not_a_mapping_or_missing(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("- just\n- a list\n")
    assert_fails_fast(personalize(path), "must hold a mapping")
    assert_fails_fast(personalize(tmp_path / "nope.yaml"), "nope.yaml: job config", "does not exist")
