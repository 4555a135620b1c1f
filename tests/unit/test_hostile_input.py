"""The hostile corpus (`tests/hostile_corpus.py`, generated per run) through ingest in process:
every kind gets exactly its outcome, the good concepts beside it give exactly the examples they give
alone, the hostile texts that are accepted train as ordinary tokens, and the summary prints every
message as text. `docs/faults.md` lists each kind."""

from __future__ import annotations

import re
import warnings
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import pytest
import torch

from omnipersona.concepts.samples import ConceptExample, SampleBuilder
from omnipersona.model.tokenizer import control_token_ids
from pipelines.ingest.config import IngestConfig, ValidationLimits
from pipelines.ingest.dataset import image_or_none
from pipelines.ingest.examples import plan_examples
from pipelines.summary import ConceptOutcome, JobSummary, markdown_cell, markdown_code
from tests.hostile_corpus import GOOD, MAX_CONCEPT_JSON_BYTES, MAX_FILE_BYTES, QWEN_ADDED_TOKENS, write_corpus, write_good
from tests.unit.ingest_in_process import ingest_in_process
from tests.unit.test_ingest_determinism import assert_same_examples, plan_with_hashes, run_examples
from tests.unit.test_text_is_data import assert_template_only, new_bank

FAULTS_DOC = Path(__file__).resolve().parents[2] / "docs" / "faults.md"


def config(root: Path) -> IngestConfig:
    return IngestConfig(
        uploads_uri=str(root / "uploads"), negatives_uri=str(root / "negatives"), vit_size=32, vae_size=32, samples_per_task=4,
        limits=ValidationLimits(min_side=16, max_file_bytes=MAX_FILE_BYTES, max_concept_json_bytes=MAX_CONCEPT_JSON_BYTES),
    )


def ingest(root: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL warns about the broken EXIF block it tolerates
        return ingest_in_process(config(root))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_bagel_dir):
    """The good part ingested alone, then the whole corpus in the same folders."""
    from omnipersona.model.tokenizer import load_tokenizer

    tok, _ = load_tokenizer(tiny_bagel_dir)
    root = tmp_path_factory.mktemp("hostile")
    write_good(root / "uploads", root / "negatives")
    alone = ingest(root)
    kinds = write_corpus(root / "uploads", root / "negatives", [t.content for t in tok.added_tokens_decoder.values()]
                         + list(QWEN_ADDED_TOKENS))
    materials, rows = ingest(root)
    return root, kinds, alone, {m.concept_key: m for m in materials}, rows


def test_every_hostile_kind_gets_its_outcome(corpus):
    _, kinds, _, materials, rows = corpus
    assert len(kinds) >= 40 and len({k.name for k in kinds}) == len(kinds)
    got = sorted((r.source, r.key, r.reason.value) for r in rows)
    assert len(got) == len(set(got))
    assert set(got) == set().union(*(k.rows for k in kinds))  # every row explained by a kind, every kind's rows there
    assert set(materials) == {k.accepted for k in kinds if k.accepted} | set(GOOD)
    for k in kinds:
        if k.positive:
            # accepted: a training image, or one of the images held out for the gate
            assert any(p.endswith(k.positive) for p in materials[k.accepted].positives + materials[k.accepted].held_out), k.name
        for _, key, _ in k.rows:  # a refused object never reaches the examples
            for m in materials.values():
                assert not any(p.endswith(key) for p in m.positives + m.held_out + m.hard_negatives + m.random_negatives), (k.name, key)
    messages = {(r.source, r.key): r.message for r in rows}
    for k in kinds:
        if k.message:  # what the user is told names the problem
            assert all(k.message in messages[source, key] for source, key, _ in k.rows), (k.name, [messages[s, x] for s, x, _ in k.rows])
    reasons = {r.reason.value for r in rows}
    assert {"bad_display_name", "bad_concept_json", "unsafe_name", "corrupt_image", "decompression_bomb"} <= reasons


def test_good_concepts_give_the_same_examples_beside_the_hostile_ones(corpus):
    root, _, (alone_materials, alone_rows), materials, _ = corpus
    assert alone_rows == [] and sorted(m.concept_key for m in alone_materials) == list(GOOD)
    beside = [materials[key] for key in GOOD]
    for a, b in zip(sorted(alone_materials, key=lambda m: m.concept_key), beside):
        assert a == b  # digest, description, positives, negatives (pool and tenant unchanged), edits, notes
    cfg = config(root)
    plan_alone, plan_beside = plan_with_hashes(alone_materials, cfg), plan_with_hashes(beside, cfg)
    assert plan_alone == plan_beside
    assert_same_examples(run_examples(plan_alone, cfg, batch_size=7), run_examples(plan_beside, cfg, batch_size=32))


def _examples(corpus, concept_key: str) -> list[dict]:
    root, _, _, materials, _ = corpus
    plan = plan_with_hashes([materials[concept_key]], config(root))
    return run_examples(plan, config(root), batch_size=64)


def test_accepted_hostile_texts_train_as_ordinary_tokens(corpus, tiny_bagel):
    """Each text kind: its hostile string reaches the training examples (or, held-out material, never
    does), and the sample builder turns them into samples whose only control ids are the template's."""
    _, kinds, _, materials, _ = corpus
    tok = tiny_bagel.tokenizer
    control = control_token_ids(tok)
    builder = SampleBuilder(tiny_bagel, new_bank(tiny_bagel), vit_size=32, vae_size=32)
    text_kinds = [k for k in kinds if k.texts or k.held_out_only]
    assert len(text_kinds) >= 12
    for k in text_kinds:
        rows = _examples(corpus, k.accepted)
        said = " ".join(f"{r['prompt']} {r['answer']}" for r in rows)
        for text in k.texts:
            assert text in said, (k.name, text)
        for text in k.held_out_only:
            assert text not in said, k.name
        examples = [ConceptExample(0, str(r["task"]), str(r["prompt"]), str(r["answer"]), image=image_or_none(r["image"]),
                                   target=image_or_none(r["target_image"]), seed=i) for i, r in enumerate(rows)]
        n_texts = n_images = 0
        for ex in examples:
            items, _ = builder.items(ex, torch.Generator().manual_seed(ex.seed))
            for item in items:
                if hasattr(item, "ids"):
                    assert not set(item.ids) & control, (k.name, ex.task, ex.prompt)
                    n_texts += 1
                else:
                    n_images += 1
        assert_template_only(builder.batch(examples), tok, tiny_bagel.special, n_texts, n_images)
        assert {r["task"] for r in rows} >= {"text_qa", "vqa", "t2i", "recognition"}, k.name


def test_concept_summaries_note_what_the_caps_leave_unused(corpus):
    root, _, _, materials, _ = corpus
    # Every image trains here (gate_holdout_every: 0): the caps, not the gate's hold-out, leave images unused.
    cfg = config(root).model_copy(update={"gate_holdout_every": 0})
    formats = materials["img/formats"]
    formats = replace(formats, positives=formats.positives + formats.held_out, held_out=[])
    _, stats = plan_examples([formats, materials["good/alpha"]], cfg)
    notes = " ".join(stats["img/formats"]["notes"])
    n_images = len(formats.positives)
    assert n_images > 3 * cfg.samples_per_task  # more images than one epoch's draws can use
    assert re.search(rf"{n_images} images, at most \d+ used per epoch \(\d+ over 1 epoch\): .*samples_per_task=4", notes), notes
    # 3 images: all used, nothing to say (but the gate's note that none is held out)
    assert not any("images" in n and not n.startswith("gate: ") for n in stats["good/alpha"]["notes"])


def test_summary_prints_hostile_messages_as_text(corpus):
    _, _, _, _, rows = corpus
    summary = JobSummary(job_id="job`|<b>\n# x", run_id="r|`1`", started_at=datetime.now(timezone.utc), snapshot_uri="s3://b/u`p|\x1b[2J",
                         config_hash="h")
    for row in rows:
        if row.concept_key:
            summary.add(ConceptOutcome(concept_key=row.concept_key, outcome="quarantined", reason=f"{row.reason}: {row.message}"))
    text = summary.finish().to_markdown()
    lines = text.splitlines()
    assert len(lines) == 10 + len(summary.concepts)  # nothing added a line
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f\u200b-\u200f\u202a-\u202e]", text)
    for line in lines[9:]:
        assert len(re.findall(r"(?<!\\)\|", line)) == 8, line  # seven cells, every user '|' escaped
        assert not re.search(r"(?<!\\)[<>`*\[\]]", line), line
    assert lines[0] == "# Personalization job ``job`|<b> # x``"
    assert markdown_code("a`b") == "``a`b``" and markdown_cell("<b>|x\n") == "\\<b\\>\\|x"


def test_faults_page_lists_every_kind(corpus):
    _, kinds, _, _, _ = corpus
    page = FAULTS_DOC.read_text()
    missing = [k.name for k in kinds if f"`{k.name}`" not in page]
    assert not missing, f"docs/faults.md does not list: {missing}"
