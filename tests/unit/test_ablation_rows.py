"""The ablation table's new rows (issue 18): the text profile in a persona's prompt, the no-op
edit floor, and the table's defaults and cells (benchmarks/ablations.py).

Break-it checks, done once by hand: with the profile left out of `Persona._contexts` (the batched
prefill), `test_profile_reaches_batched_and_single_requests` failed (batched yes-probabilities
equal to the profile-free ones); with `plain_names` still prefilling the system prompt,
`test_plain_names_use_no_concept_tokens` failed; with `unchanged_edit_metrics` judging the
eval set's views instead of its edit sources, `test_noop_edit_judges_the_unchanged_sources` failed; with saved runs pooled by concept name alone
(dev's oscar overwriting dev2's), `test_saved_runs_pool_by_split_and_the_edit_breakdown_reads_the_floor` failed.
"""
import numpy as np
import pytest

import benchmarks.ablations as ablations
from omnipersona.concepts.bank import ConceptBank
from omnipersona.concepts.init import init_concept
from omnipersona.evaluation import EditCase, GeneratedImages, unchanged_edit_metrics
from omnipersona.evaluation.eval_set import ConceptEvalSet
from omnipersona.infer.engine import Persona
from omnipersona.infer.requests import Understand
from omnipersona.model.sampling import FlowSampling
from omnipersona.world import make_concepts

NAMES = ["rex", "kiki"]
PROFILES = {"rex": "<rex> is a red star. <rex>'s toy is a blue kite.", "kiki": "<kiki> is a green blob."}


def picture(seed, size=32):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


@pytest.fixture()
def bank(tiny_bagel):
    c = tiny_bagel.config.llm
    bank = ConceptBank(len(NAMES), c.hidden_size, c.vocab_size, 2, 2)
    for slot, word in enumerate(("dog", "cat")):
        init_concept(bank, slot, tiny_bagel, word, [picture(slot)], seed=slot)
    return bank


def persona(bundle, bank, **kw):
    return Persona(bundle, bank, NAMES, image_size=32, sampling=FlowSampling(num_steps=2), **kw)


def yes(p, batched: bool) -> list[float]:
    asked = [(n, picture(10 + i)) for i, n in enumerate(NAMES)]
    if batched:
        return p.recognition_yes_probability_batch(asked)
    return [p.recognition_yes_probability(n, im) for n, im in asked]


def test_profile_reaches_batched_and_single_requests(tiny_bagel, bank):
    # A fresh persona per path: a persona caches its prefilled prefixes, so one path could reuse the other's.
    def fresh(**kw):
        return persona(tiny_bagel, bank, **kw)

    single, batched = yes(fresh(profiles=PROFILES), False), yes(fresh(profiles=PROFILES), True)
    np.testing.assert_allclose(batched, single, atol=1e-5)
    bare = yes(fresh(), False)
    assert np.abs(np.subtract(single, bare)).min() > 1e-4  # the profile changed every answer
    # One concept with a profile, one without: the batch still equals the requests alone.
    half = {"rex": PROFILES["rex"]}
    half_single = yes(fresh(profiles=half), False)
    np.testing.assert_allclose(yes(fresh(profiles=half), True), half_single, atol=1e-5)
    np.testing.assert_allclose(half_single[1], bare[1], atol=1e-6)


def test_profile_is_the_concepts_own_segment_after_its_system_prompt(tiny_bagel, bank):
    p = persona(tiny_bagel, bank, profiles=PROFILES)
    segments = p._prefix_segments(0)
    assert len(segments) == 2
    assert segments[1] == p._ids(PROFILES["rex"])
    assert bank.identifier_id(0) in segments[1]  # <rex> in the profile is the concept's identifier
    assert persona(tiny_bagel, bank)._prefix_segments(0) == segments[:1]


def test_plain_names_use_no_concept_tokens(tiny_bagel, bank):
    p = persona(tiny_bagel, bank, profiles=PROFILES, plain_names=True)
    assert p._prefix_segments(0) == [p._ids("rex is a red star. rex's toy is a blue kite.")]
    assert p._ids("Is <rex> in this image?") == p._ids("Is rex in this image?")
    ids = [i for seg in p._prefix_segments(0) + p._prefix_segments(1) for i in seg] + p._ids("Is <rex> with <kiki>?")
    assert max(ids) < tiny_bagel.config.llm.vocab_size  # no identifier, no concept token
    np.testing.assert_allclose(yes(p, True), yes(p, False), atol=1e-5)
    # Without a profile a plain name is just a word: nothing stands for the concept.
    bare = persona(tiny_bagel, bank, plain_names=True)
    assert bare._prefix_segments(0) == []


def test_profile_for_an_unloaded_concept_is_refused(tiny_bagel, bank):
    with pytest.raises(ValueError, match="not loaded"):
        persona(tiny_bagel, bank, profiles={"zed": "<zed> is a dog."})


class RecordingJudge:
    """Reads each picture as its mean pixel value; records what it was asked to score."""

    def __init__(self):
        self.asked: list[GeneratedImages] = []

    def feature_extractors(self):
        return {}

    def score(self, eval_set, images):
        self.asked.append(images)
        out = {"generation_probe": float("nan")}
        if images.edited:
            kept = [float(np.array_equal(np.asarray(a), np.asarray(e.source))) for a, e in zip(images.edited, eval_set.edits)]
            out.update(edit_applied=0.0, edit_kept=float(np.mean(kept)), edit_score=0.5 * float(np.mean(kept)))
        return out


def test_noop_edit_judges_the_unchanged_sources():
    sources = [picture(20 + i) for i in range(3)]
    es = ConceptEvalSet("rex", "star", {}, views=[picture(1)],
                        edits=[EditCase("remove", "remove <rex>", s, {}) for s in sources])
    judge = RecordingJudge()
    m = unchanged_edit_metrics(es, judge)
    assert m == {"edit_applied": 0.0, "edit_kept": 1.0, "edit_score": 0.5}  # only the edit metrics
    (asked,) = judge.asked
    assert asked.generated == [] and asked.parg == []
    assert all(a is s for a, s in zip(asked.edited, sources))


def test_text_profile_is_the_pretraining_description():
    (c,) = make_concepts(1, seed=101)
    profile = ablations.text_profile(c)
    assert profile.replace(f"<{c.name}>", c.name) == " ".join(c.facts())  # the form tasks._context writes
    assert len(c.facts()) == 7 and c.spec.shape in profile  # every fact, the class (shape) among them


def test_defaults_are_the_new_test_split_with_every_row():
    args = ablations.parser().parse_args([])
    assert args.split == "test" and ablations.SPLIT_SEEDS["test"] not in (101, 202)
    assert ablations.SPLIT_SEEDS["dev2"] == 202  # the old test split, now a dev split
    assert args.concepts >= 16
    assert (args.steps, args.batch_size, args.lr, args.edits) == (200, 8, 0.02, 3)  # the frozen recipe
    assert set(args.rows.split(",")) == {r.key for r in ablations.ROWS}
    assert {"text_profile", "noop_edit", "tokens_profile"} <= set(args.rows.split(","))


def test_table_cells_and_paired_differences():
    per_row = {
        "OmniPersona": {"a": {"recognition_accuracy": 0.8, "edit_score": 0.5}, "b": {"recognition_accuracy": 0.6, "edit_score": 0.4}},
        "no-op edit": {"a": {"edit_score": 0.45}, "b": {"edit_score": 0.45}},
    }
    table = {name: ablations.intervals(pc) for name, pc in per_row.items()}
    assert table["OmniPersona"]["recognition_accuracy"][0] == pytest.approx(0.7)
    assert set(table["no-op edit"]) == {"edit_score"}
    text = ablations.format_table(table, {}, {})
    noop_line = next(line for line in text.splitlines() if line.startswith("| no-op edit"))
    assert noop_line.count(" - ") == len(ablations.COLUMNS) - 1 + 1  # every column but Edit, and the gate
    assert "0.700 [0.600, 0.800]" in text
    diffs = ablations.paired_differences(per_row)
    assert set(diffs) == {"no-op edit"}
    m, lo, hi = diffs["no-op edit"]["edit_score"]
    assert m == pytest.approx(0.0) and lo == pytest.approx(-0.05) and hi == pytest.approx(0.05)


def _saved(tmp_path, split, per_concept):
    path = tmp_path / f"{split}.json"
    path.write_text(__import__("json").dumps({
        "args": {"split": split}, "concepts": sorted({c for pc in per_concept.values() for c in pc}),
        "per_concept": per_concept, "timings": {t: 1.0 for t in per_concept}, "gate_passes": {"OmniPersona": "1/2"}}))
    return str(path)


def test_saved_runs_pool_by_split_and_the_edit_breakdown_reads_the_floor(tmp_path):
    edit = lambda a, k: {"edit_applied": a, "edit_kept": k, "edit_score": (a + k) / 2}  # noqa: E731
    dev = _saved(tmp_path, "dev", {"OmniPersona": {"oscar": edit(1.0, 0.2), "theo": edit(0.5, 0.5)},
                                   "no-op edit": {"oscar": edit(0.0, 1.0), "theo": edit(0.0, 1.0)}})
    dev2 = _saved(tmp_path, "dev2", {"OmniPersona": {"oscar": edit(0.0, 0.4), "wynn": edit(0.5, 0.5)},
                                     "no-op edit": {"oscar": edit(0.0, 0.8), "wynn": edit(0.0, 1.0)}})
    per_row, timings, gates, _ = ablations.pooled([dev, dev2])
    assert sorted(per_row["OmniPersona"]) == ["dev/oscar", "dev/theo", "dev2/oscar", "dev2/wynn"]  # oscar twice: two concepts
    assert gates["OmniPersona"] == "2/4" and timings["no-op edit"] == 2.0
    text = ablations.edit_breakdown(per_row)
    omni = next(line for line in text.splitlines() if line.startswith("| OmniPersona"))
    # applied 0.5, kept 0.4, Edit 0.45; minus the no-op's per concept: (0.1 + 0 - 0.2 + 0) / 4
    assert "0.500 [" in omni and "0.400 [" in omni and "0.450 [" in omni and "-0.025 [" in omni
    with pytest.raises(SystemExit):
        ablations.pooled([dev, dev])  # the same rows of one split twice


def test_runs_of_one_split_join_their_rows(tmp_path):
    one = {"a": {"edit_score": 0.5}, "b": {"edit_score": 0.7}}
    (tmp_path / "other").mkdir()  # two files of one split
    first = _saved(tmp_path / "other", "test", {"OmniPersona": one})
    second = _saved(tmp_path, "test", {"no-op edit": {"a": {"edit_score": 0.4}, "b": {"edit_score": 0.4}}})
    per_row, _, gates, splits = ablations.pooled([second, first])
    assert list(per_row) == ["no-op edit", "OmniPersona"]  # the table's order, whichever file came first
    assert per_row["OmniPersona"] == {"test/a": one["a"], "test/b": one["b"]} and gates["OmniPersona"] == "1/2"
    assert len(splits) == 1
