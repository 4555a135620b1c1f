"""The task registry: a task type is one entry (sample layout, loss, held-out check), and a task
name nobody registered fails loudly wherever it turns up."""
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from omnipersona.concepts.prompts import encode, sks, system_prompt_ids
from omnipersona.concepts.samples import ConceptExample, SampleBuilder, latent_images
from omnipersona.model.packing import Text
from omnipersona.objectives import LossWeights, concept_losses
from omnipersona.tasks import (
    AnswerLoss,
    FlowLoss,
    TaskType,
    UnknownTaskError,
    answer_check,
    register_task,
    task_names,
    text_to_image,
    unregister_task,
)
from omnipersona.training import ConceptPool, TrainConfig, compute_loss, step_examples, train_pack
from tests.unit.test_concepts import images, new_bank

BUILT_IN = ("recognition", "vqa", "text_qa", "t2i", "edit")
DESCRIBE_PROMPT = "Describe <sks> in a few words."


def describe(parts, ex):
    """A text-only task with its own prompt: its examples carry only the answer."""
    return [parts.text(DESCRIBE_PROMPT), parts.text(ex.answer or "", loss=True)]


@pytest.fixture
def describe_task():
    task = register_task(TaskType("describe", describe, AnswerLoss(), answer_check(with_image=False, prompt=DESCRIBE_PROMPT)))
    yield task
    unregister_task(task.name)


def describe_pool(key: str, answers: list[str]) -> ConceptPool:
    return ConceptPool(key, [ConceptExample(0, "describe", "", answer) for answer in answers])


def test_built_in_tasks_are_registered_in_order():
    assert task_names()[:5] == BUILT_IN


def test_a_registered_task_builds_its_samples_and_trains(tiny_bagel, describe_task):
    bank = new_bank(tiny_bagel, 2)
    builder = SampleBuilder(tiny_bagel, bank)
    example = ConceptExample(1, "describe", "", "a teal star with a red hat")
    items, noises = builder.items(example, torch.Generator().manual_seed(0))
    tok = tiny_bagel.tokenizer
    assert [(type(i), i.loss) for i in items] == [(Text, False), (Text, False), (Text, True)] and noises == []
    assert items[0].ids == system_prompt_ids(tok, bank, 1)
    assert items[1].ids == encode(tok, DESCRIBE_PROMPT, sks(bank, 1))  # the task's own prompt, with the concept's identifier
    assert items[2].ids == encode(tok, "a teal star with a red hat", sks(bank, 1))
    assert latent_images(example) == []

    before = {k: v.clone() for k, v in bank.state_dict().items()}
    pools = [describe_pool("t/a", ["a teal star with a red hat", "a striped circle"]), describe_pool("t/b", ["a red square"])]
    cfg = TrainConfig(steps=6, batch_size=2, lr=5e-2, num_und_tokens=4, num_gen_tokens=4)
    probe_batch = builder.batch(step_examples(pools, 0, 3, seed=99))

    def loss() -> float:
        with torch.no_grad():
            return float(compute_loss(tiny_bagel, bank, probe_batch, cfg.loss_weights)[0])

    start = loss()
    train_pack(tiny_bagel, bank, pools, cfg)
    assert loss() < start
    for name in ("identifier", "und_tokens"):
        assert not torch.equal(before[name], bank.state_dict()[name]), f"{name} did not train"


def test_a_registered_task_has_held_out_metrics(describe_task):
    from pipelines.evaluate.heldout import heldout_metrics

    asked = []

    def understand(prompt, image=None, max_new_tokens=32):
        asked.append((prompt, image))
        return SimpleNamespace(text="a teal star")

    examples = [ConceptExample(0, "describe", "", "a teal star"), ConceptExample(0, "describe", "", "a red <sks> toy")]
    metrics = heldout_metrics(SimpleNamespace(understand=understand), "maeve", examples, max_examples=4)
    assert metrics == {"describe_accuracy": pytest.approx(0.5)}  # 1 + 0 ("red", "maeve", "toy" missing)
    assert asked == [("Describe <maeve> in a few words.", None)] * 2  # the task's own question, no image


def test_held_out_checks_of_the_built_in_tasks():
    """Recognition scores at most `max_examples` examples, QA and VQA half of it each, in example order;
    prompts name the concept as <name>, answers as a plain word; t2i and edit add nothing."""
    from pipelines.evaluate.heldout import heldout_metrics

    seen, said = [], {}

    def understand(prompt, image=None, max_new_tokens=32):
        seen.append(prompt)
        text, p_yes = said[(prompt, None if image is None else int(image[0, 0, 0]))]
        return SimpleNamespace(text=text, yes_probability=p_yes)

    def image(marker):
        return np.full((4, 4, 3), marker, dtype=np.uint8)

    examples = []
    for i, (answer, p_yes) in enumerate([("Yes", 0.9), ("No", 0.8), ("Yes", 0.9), ("No", 0.3), ("Yes", 0.1)]):
        examples.append(ConceptExample(0, "recognition", "Is <sks> here?", answer, image=image(i)))
        said[("Is <maeve> here?", i)] = ("", p_yes)
    for i, reply in enumerate(["a red hat", "a red hat", "nothing"]):
        examples.append(ConceptExample(0, "vqa", f"What does <sks> wear? {i}", "a red hat", image=image(10 + i)))
        said[(f"What does <maeve> wear? {i}", 10 + i)] = (reply, None)
        examples.append(ConceptExample(0, "text_qa", f"Toy of <sks>? {i}", "The toy of <sks> is a kite."))
        said[(f"Toy of <maeve>? {i}", None)] = (["maeve plays with a kite toy", "a kite toy", "no idea"][i], None)
    examples.append(ConceptExample(0, "t2i", "A photo of <sks>.", target=image(20)))
    examples.append(ConceptExample(0, "edit", "remove <sks>", image=image(21), target=image(22)))

    metrics = heldout_metrics(SimpleNamespace(understand=understand), "maeve", examples, max_examples=4)
    assert metrics == pytest.approx({
        "recognition_accuracy": 0.75, "recognition_positive": 1.0, "recognition_random_negative": 0.5,  # 4 of 5 scored
        "vqa_accuracy": 1.0,  # 2 of 3
        # answer_score is the F1 of content words: "maeve", "toy", "kite" all said plus "plays" (P 3/4, R 1: 6/7),
        # then "kite", "toy" (P 1, R 2/3: 0.8)
        "text_qa_accuracy": (6 / 7 + 0.8) / 2,
    })
    # What a job config may gate on (checked when the config is read) covers what the checks compute.
    from omnipersona.evaluation.metric_names import HELDOUT, RECOGNITION
    assert set(metrics) | {"recognition_hard_negative"} <= set(HELDOUT) and set(RECOGNITION) <= set(HELDOUT)
    assert len(seen) == 4 + 2 + 2


def test_a_flow_task_adds_its_own_weighted_term(tiny_bagel):
    """A second text-to-image task with its own weight: its own per-concept mean, added after t2i's."""
    register_task(TaskType("sketch", text_to_image, FlowLoss(0.25)))
    try:
        bank = new_bank(tiny_bagel, 2)
        target = images(3, 1)[0]
        batch = SampleBuilder(tiny_bagel, bank).batch([
            ConceptExample(0, "t2i", "A photo of <sks>.", target=target, seed=1),
            ConceptExample(1, "sketch", "A sketch of <sks>.", target=target, seed=2),
            ConceptExample(1, "t2i", "A photo of <sks>.", target=target, seed=3),
        ])
        rows = batch.packed.mse_sample_ids
        per_row = torch.rand(len(rows), 16, generator=torch.Generator().manual_seed(0))
        total, table = concept_losses({"mse": per_row, "ce": None}, batch, 2, LossWeights(lambda_img=2.0))
        row_mean = per_row.mean(-1)

        def mean_of(sample_ids):
            return torch.stack([row_mean[i] for i, s in enumerate(rows.tolist()) if s in sample_ids]).mean()

        assert torch.isnan(table["sketch"][0])
        torch.testing.assert_close(table["sketch"][1], mean_of({1}))
        torch.testing.assert_close(table["t2i"], torch.stack([mean_of({0}), mean_of({2})]))
        torch.testing.assert_close(total, 2.0 * (mean_of({0}) + mean_of({2})) + 0.25 * mean_of({1}))
    finally:
        unregister_task("sketch")


def test_flow_targets_of_a_task_without_flow_loss_are_refused(tiny_bagel):
    register_task(TaskType("draw_wrong", text_to_image, AnswerLoss()))  # would silently train nothing
    try:
        bank = new_bank(tiny_bagel, 1)
        batch = SampleBuilder(tiny_bagel, bank).batch([ConceptExample(0, "draw_wrong", "A photo of <sks>.", target=images(3, 1)[0])])
        out = {"mse": torch.rand(len(batch.packed.mse_sample_ids), 16), "ce": None}
        with pytest.raises(ValueError, match=r"\['draw_wrong'\] have flow-matching targets but no FlowLoss"):
            concept_losses(out, batch, 1, LossWeights())
    finally:
        unregister_task("draw_wrong")


def test_unknown_task_names_fail_naming_the_known_ones(tiny_bagel):
    known = "known tasks: recognition, vqa, text_qa, t2i, edit"
    with pytest.raises(UnknownTaskError, match=f"unknown task 'caption'; {known}"):
        ConceptExample(0, "caption", "Describe <sks>.", "a dog")

    bank = new_bank(tiny_bagel, 1)
    builder = SampleBuilder(tiny_bagel, bank)
    example = ConceptExample(0, "text_qa", "What is <sks>?", "a dog")
    batch = builder.batch([example])
    example.task = "caption"  # e.g. read back from storage written by another version
    with pytest.raises(UnknownTaskError, match=known):
        builder.batch([example])

    batch.sample_tasks = ["caption"]
    with pytest.raises(UnknownTaskError, match=known):
        concept_losses({"ce": torch.ones(len(batch.packed.ce_sample_ids))}, batch, 1, LossWeights())


def test_ingest_config_accepts_only_tasks_it_can_plan(describe_task):
    from pipelines.ingest.config import ALL_TASKS, IngestConfig
    from pipelines.ingest.examples import TASK_PLANNERS

    assert tuple(TASK_PLANNERS) == ALL_TASKS == BUILT_IN
    base = {"uploads_uri": "/uploads", "vit_size": 32, "vae_size": 32}
    assert IngestConfig(**base).tasks == BUILT_IN
    with pytest.raises(ValidationError, match="unknown task 'caption'; known tasks: recognition, vqa, text_qa, t2i, edit, describe"):
        IngestConfig(**base, tasks=("recognition", "caption"))
    with pytest.raises(ValidationError, match=r"ingest cannot plan examples of task\(s\) \['describe'\]"):
        IngestConfig(**base, tasks=("recognition", "describe"))


def test_registration_refuses_duplicates_and_odd_names():
    with pytest.raises(ValueError, match="already registered"):
        register_task(TaskType("t2i", text_to_image, FlowLoss("lambda_img")))
    with pytest.raises(ValueError, match="lowercase"):
        register_task(TaskType("Caption!", text_to_image, AnswerLoss()))
    assert task_names()[:5] == BUILT_IN


def test_task_names_are_checked_without_torch():
    """Ingest's config (read by its data workers) validates task names without importing the model."""
    code = "import sys, omnipersona.tasks, pipelines.ingest.config\nassert 'torch' not in sys.modules, 'torch imported'\n"
    subprocess.run([sys.executable, "-c", code], check=True)
