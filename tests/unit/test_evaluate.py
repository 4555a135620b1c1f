"""The evaluation harness: metric arithmetic, the gate, held-out sets and the probe (no pretraining here)."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from omnipersona.evaluation import EvalOptions, aggregate, evaluate_concept
from omnipersona.evaluation.metrics import answer_score, mean_pairwise_cosine, weighted_recognition_accuracy
from omnipersona.pretrain.probe import HEADS, ProbeConfig, probe_accuracy, train_probe
from omnipersona.world import make_concepts
from omnipersona.world.eval_sets import eval_set_from_manifest, eval_set_from_world
from omnipersona.world.judging import Reading, WorldJudge, edit_outcome
from pipelines.evaluate.gate import Gate, gate_concepts


# ----------------------------------------------------------------------------- metric arithmetic
def test_always_yes_scores_half_and_a_perfect_recogniser_one():
    always_yes = weighted_recognition_accuracy([0.9] * 5, [0.9] * 3, [0.9] * 7)
    assert always_yes["recognition_accuracy"] == pytest.approx(0.5)
    perfect = weighted_recognition_accuracy([0.9] * 5, [0.1] * 3, [0.2] * 7)
    assert perfect["recognition_accuracy"] == pytest.approx(1.0)


def test_recognition_weights_positives_and_each_negative_group_evenly():
    # positives all right (1.0); hard negatives half right (0.5); random negatives all right (1.0)
    m = weighted_recognition_accuracy([0.8] * 4, [0.9, 0.1], [0.1] * 6)
    assert m["recognition_positive"] == 1.0
    assert m["recognition_hard_negative"] == 0.5 and m["recognition_random_negative"] == 1.0
    assert m["recognition_accuracy"] == pytest.approx(0.5 * 1.0 + 0.5 * (0.5 + 1.0) / 2)
    # group sizes don't matter: 6 random negatives do not outweigh 2 hard ones
    assert weighted_recognition_accuracy([0.8], [0.9, 0.1], [0.1] * 60)["recognition_accuracy"] == pytest.approx(0.875)


def test_answer_judge_scores_content_words():
    assert answer_score("a black excavator", "a black excavator") == 1.0
    assert answer_score("The toy is a BLACK excavator!", "a black excavator") == pytest.approx(0.8)  # "toy" is extra
    assert answer_score("a red excavator", "a black excavator") == 0.5
    assert answer_score("a red kite", "a black excavator") == 0.0
    assert answer_score("nothing", "nothing") == 1.0 and answer_score("a red hat", "nothing") == 0.0
    assert answer_score("teal", "teal") == 1.0 and answer_score("blue", "teal") == 0.0


def test_edit_outcomes_check_the_instruction_and_the_identity():
    concept = {"shape": "star", "colour": "teal", "pattern": "plain", "accessory": "red hat"}
    before = {**concept, "present": "yes", "background": "grass"}
    assert edit_outcome("remove", before, {"present": "no", "background": "grass"}, concept) == (1.0, 1.0)
    assert edit_outcome("remove", before, {**before}, concept) == (0.0, 1.0)
    moved = {**concept, "present": "yes", "background": "snow"}
    assert edit_outcome("background", before, moved, {**concept, "background": "snow"}) == (1.0, 1.0)
    lost = {**moved, "colour": "red", "shape": "circle"}
    assert edit_outcome("background", before, lost, {**concept, "background": "snow"}) == (1.0, 0.5)
    hat = {**before, "accessory": "blue bow"}
    assert edit_outcome("accessory", before, hat, {**concept, "accessory": "blue bow"}) == (1.0, 1.0)


def test_clip_i_is_a_mean_cosine():
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    assert mean_pairwise_cosine(a[:1], a[:1]) == pytest.approx(1.0)
    assert mean_pairwise_cosine(a[:1], a[1:]) == pytest.approx(0.0)
    assert mean_pairwise_cosine(a, a) == pytest.approx(0.5)


# ----------------------------------------------------------------------------- gate
def test_gate_passes_and_fails_with_reasons():
    gate = Gate(minimums={"recognition_accuracy": 0.7}, maximums={"loss": 2.0}, minimum_gains={"text_qa_accuracy": 0.2})
    good = {"recognition_accuracy": 0.8, "loss": 1.0, "text_qa_accuracy": 0.6}
    assert gate.evaluate(good, baseline={"text_qa_accuracy": 0.3}).passed
    bad = gate.evaluate({"recognition_accuracy": 0.6, "loss": float("nan"), "text_qa_accuracy": 0.4}, baseline={"text_qa_accuracy": 0.3})
    assert not bad.passed
    assert any("recognition_accuracy=0.6 < 0.7" in r for r in bad.reasons)
    assert any(r.startswith("loss missing") for r in bad.reasons)
    assert any("text_qa_accuracy gained +0.1" in r for r in bad.reasons)
    assert not gate.evaluate(good).passed  # gains need a baseline
    assert Gate().evaluate({}).passed
    decisions = gate_concepts({"a": good, "b": {}}, gate, {"a": {"text_qa_accuracy": 0.0}})
    assert decisions["a"].passed and not decisions["b"].passed


# ----------------------------------------------------------------------------- held-out sets
@pytest.fixture(scope="module")
def concept():
    return make_concepts(2, seed=7)[0]


def _pixels(image) -> bytes:
    return np.asarray(image).tobytes()


def test_world_eval_set_is_held_out_and_names_the_concept(concept):
    from omnipersona.pretrain.world_concepts import concept_examples

    opts = EvalOptions(views=3, hard_negatives=2, random_negatives=2, vqa_per_view=2, generations=2, edits=3)
    es = eval_set_from_world(concept, opts)
    assert (len(es.views), len(es.hard_negatives), len(es.random_negatives), len(es.vqa)) == (3, 2, 2, 6)
    assert len(es.text_qa) == 8 and len(es.parg) == 3 and [e.kind for e in es.edits] == ["remove", "background", "accessory"]
    texts = [q.question for q in es.text_qa + es.vqa] + es.generation_prompts + [p.request for p in es.parg] + [e.instruction for e in es.edits]
    assert "{name}" not in " ".join(texts)
    assert all(f"<{concept.name}>" in q.question for q in es.text_qa)
    # nothing of the evaluation is in the training examples: images nor question wording
    train = concept_examples(concept, size=32, views=10, negatives=5, edits=3)
    train_images = {_pixels(im) for ex in train for im in (ex.image, ex.target) if im is not None}
    assert not train_images & {_pixels(im) for im in es.views + es.hard_negatives + es.random_negatives}
    train_questions = {ex.prompt.replace("<sks>", f"<{concept.name}>") for ex in train}
    assert not train_questions & {q.question for q in es.text_qa}


def test_manifest_eval_set_matches_the_world_one(concept, tmp_path):
    import pyarrow.fs as pafs

    from omnipersona.world.uploads import EvalSetWriteOptions as WriteOptions
    from omnipersona.world.uploads import write_eval_set

    write_eval_set(concept, pafs.LocalFileSystem(), str(tmp_path / "c"), WriteOptions(size=32, views=3, hard_negatives=2, random_negatives=2))
    opts = EvalOptions(views=3, hard_negatives=2, random_negatives=2)
    disk, world = eval_set_from_manifest(str(tmp_path / "c"), options=opts), eval_set_from_world(concept, opts)
    assert disk.attributes == world.attributes
    assert [(q.question, q.answer) for q in disk.text_qa] == [(q.question, q.answer) for q in world.text_qa]
    assert [(p.request, p.item_kind) for p in disk.parg] == [(p.request, p.item_kind) for p in world.parg]
    assert disk.generation_prompts == world.generation_prompts
    assert [_pixels(v) for v in disk.views] == [_pixels(v) for v in world.views]


# ----------------------------------------------------------------------------- the harness end to end
class OracleProbe(WorldJudge):
    """Reads images by identity from a table (what a perfect judge would say)."""

    def __init__(self):
        self.table: dict[int, Reading] = {}

    def register(self, image, reading: Reading):
        self.table[id(image)] = reading
        return image

    def read(self, images):
        return [self.table[id(im)] for im in images]

    def features(self, images):
        return np.stack([np.frombuffer(_pixels(im), dtype=np.uint8)[:64].astype(float) + 1 for im in images])


def reading(attrs, present=True, background="white", item="none", **change):
    values = {**{k: attrs[k] for k in ("shape", "colour", "pattern", "accessory")}, **change}
    return Reading(present, values["shape"], values["colour"], values["pattern"], values["accessory"], background, item)


class OraclePersona:
    """Answers from the eval set's ground truth; makes images the probe reads as the right result."""

    def __init__(self, es, probe: OracleProbe):
        self.es, self.probe = es, probe
        self.answers = {(q.question, id(q.image) if q.image is not None else None): q.answer for q in es.text_qa + es.vqa}
        for im in es.views:
            probe.register(im, reading(es.attributes))

    def recognition_yes_probability(self, name, image):
        return 1.0 if any(image is v for v in self.es.views) else 0.0

    def understand(self, question, image=None, concepts=None, max_new_tokens=32):
        return SimpleNamespace(text=self.answers[(question, id(image) if image is not None else None)])

    def generate(self, concept, prompt, replay=True):
        case = next((c for c in self.es.parg if c.request == prompt), None)
        image = Image.new("RGB", (32, 32))
        self.probe.register(image, reading(self.es.attributes, item=case.item_kind if case else "none"))
        return SimpleNamespace(image=image, replay=SimpleNamespace(answer=case.answer) if case else None)

    def edit(self, concept, image, instruction, replay=True):
        case = next(e for e in self.es.edits if e.instruction == instruction and e.source is image)
        out = Image.new("RGB", (32, 32))
        if case.kind == "remove":
            self.probe.register(out, reading(self.es.attributes, present=False))
        else:
            self.probe.register(out, reading(case.requested, background=case.requested.get("background", "white")))
        return SimpleNamespace(image=out)


class SilentPersona(OraclePersona):
    """Says yes to everything and nothing useful."""

    def recognition_yes_probability(self, name, image):
        return 0.9

    def understand(self, question, image=None, concepts=None, max_new_tokens=32):
        return SimpleNamespace(text="I don't know")


def test_oracle_scores_one_and_a_silent_model_scores_chance(concept):
    opts = EvalOptions(views=2, hard_negatives=2, random_negatives=2, vqa_per_view=2, generations=2, edits=3)
    es = eval_set_from_world(concept, opts)
    probe = OracleProbe()
    best = evaluate_concept(OraclePersona(es, probe), es, probe)
    for key in ("recognition_accuracy", "text_qa_accuracy", "vqa_accuracy", "generation_probe", "parg", "edit_score", "parg_recall",
                "text_qa_visible", "text_qa_private"):
        assert best[key] == pytest.approx(1.0), key
    assert 0.0 < best["clip_i"] <= 1.0
    # A job config may gate on exactly what the harness with the world judge computes.
    from omnipersona.evaluation.metric_names import known_metrics, unknown_metric
    assert [k for k in best if unknown_metric(k, eval_sets=True, judge="world")] == []
    names, _ = known_metrics(eval_sets=True, judge="world")
    assert names <= set(best), names - set(best)
    worst = evaluate_concept(SilentPersona(es, probe), es, probe)
    assert worst["recognition_accuracy"] == pytest.approx(0.5)
    assert worst["text_qa_accuracy"] == 0.0 and worst["vqa_accuracy"] == 0.0
    assert worst["text_qa_visible"] == worst["text_qa_private"] == 0.0
    table = aggregate({"a": best, "b": worst})
    assert table["text_qa_accuracy"] == pytest.approx(0.5)


def test_harness_runs_a_real_persona(tiny_bagel, concept):
    """Plumbing with the model library: a random tiny model, every metric present and in range."""
    from omnipersona.concepts.bank import ConceptBank
    from omnipersona.concepts.init import init_concept
    from omnipersona.infer.engine import Persona
    from omnipersona.model.sampling import FlowSampling

    llm = tiny_bagel.config.llm
    bank = ConceptBank(1, llm.hidden_size, llm.vocab_size, 2, 2)
    init_concept(bank, 0, tiny_bagel, concept.class_word, strategy="class_word")
    persona = Persona(tiny_bagel, bank, [concept.name], image_size=64, sampling=FlowSampling(num_steps=2))
    es = eval_set_from_world(concept, EvalOptions(views=1, hard_negatives=1, random_negatives=1, vqa_per_view=1, generations=1, edits=1, image_size=64))
    es.text_qa, es.parg = es.text_qa[:1], es.parg[:1]
    probe = OracleProbe()
    probe.read = lambda images: [Reading(True, "star", "red", "plain", "none", "white", "none") for _ in images]
    m = evaluate_concept(persona, es, probe, replay=False, max_new_tokens=2)
    for key in ("recognition_accuracy", "text_qa_accuracy", "vqa_accuracy", "generation_probe", "clip_i", "parg", "edit_score"):
        assert key in m and 0.0 <= m[key] <= 1.0, (key, m.get(key))


# ----------------------------------------------------------------------------- plug-ins
def test_plugin_names_are_checked_when_the_config_is_read():
    from pydantic import ValidationError

    from pipelines.config import EvaluationSettings

    default = EvaluationSettings()
    assert default.eval_set_reader == "world" and default.judge is None
    assert EvaluationSettings(judge="world").judge == "world"
    assert EvaluationSettings(judge="my_lab.judges:clip_judge").judge == "my_lab.judges:clip_judge"  # imported when the stage runs
    for bad in ("wrold", "my_lab.judges", "my lab:judge", ""):
        with pytest.raises(ValidationError, match="neither a known name"):
            EvaluationSettings(judge=bad)
    with pytest.raises(ValidationError, match="eval_set_reader 'manifest' is neither a known name"):
        EvaluationSettings(eval_set_reader="manifest")


def test_plugins_load_when_the_stage_runs_with_clear_errors():
    from omnipersona.evaluation.plugins import load_plugin
    from omnipersona.pretrain.probe import world_judge
    from omnipersona.world.eval_sets import read_eval_set

    assert load_plugin("judge", "world") is world_judge
    assert load_plugin("eval_set_reader", "world") is read_eval_set
    assert load_plugin("eval_set_reader", "omnipersona.world.eval_sets:read_eval_set") is read_eval_set
    with pytest.raises(ValueError, match="cannot import 'no_such_module'"):
        load_plugin("judge", "no_such_module:judge")
    with pytest.raises(ValueError, match="omnipersona.pretrain.probe:no_such_judge does not exist"):
        load_plugin("judge", "omnipersona.pretrain.probe:no_such_judge")
    with pytest.raises(ValueError, match="is not callable"):
        load_plugin("judge", "omnipersona.world.eval_sets:TEXT_QA_GROUPS")


def test_the_stage_scores_with_the_plugins_its_config_names(concept, tmp_path):
    """`evaluation.eval_set_reader` / `evaluation.judge` as 'module:attr': the stage reads and judges
    with them and nothing else."""
    from omnipersona.identity import ConceptId
    from pipelines.config import EvaluationSettings
    from pipelines.evaluate.benchmark import benchmark_metrics, load_judge
    from pipelines.storage import StorageConfig
    from tests.unit import evaluation_plugins as plugins

    settings = EvaluationSettings(eval_sets_uri=str(tmp_path), eval_set_reader="tests.unit.evaluation_plugins:read_eval_set",
                                  judge="tests.unit.evaluation_plugins:counting_judge")
    logged = []
    judge = load_judge(settings, 32, logged.append)
    assert logged == ["counting judge for 32-pixel pictures"]
    assert load_judge(settings.model_copy(update={"judge": None}), 32) is None
    assert load_judge(settings.model_copy(update={"eval_sets_uri": None}), 32) is None

    es = eval_set_from_world(concept, EvalOptions(views=2, hard_negatives=1, random_negatives=1, vqa_per_view=1, generations=2, edits=2))
    plugins.EVAL_SETS[concept.name] = es
    try:
        m = benchmark_metrics(settings, StorageConfig(), SilentPersona(es, OracleProbe()), ConceptId("acme", concept.name), 32, judge)
        assert m["pictures_judged"] == len(es.generation_prompts) + len(es.parg) + len(es.edits) == 2 + 3 + 2
        assert m["recognition_accuracy"] == pytest.approx(0.5) and "generation_probe" not in m and "clip_i" not in m
        assert benchmark_metrics(settings, StorageConfig(), None, ConceptId("acme", "nobody"), 32, judge) == {}
        assert [(c.key, o.image_size) for c, o in plugins.READS[-2:]] == [(f"acme/{concept.name}", 32), ("acme/nobody", 32)]
    finally:
        plugins.EVAL_SETS.clear()
        plugins.READS.clear()


# ----------------------------------------------------------------------------- the probe
def test_probe_reads_clean_renders_far_above_chance():
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        probe = train_probe(ProbeConfig(steps=100, batch_size=32, width=16, feature_dim=64, lr=3e-3), log=None)
        acc = probe_accuracy(probe, n=192)
    finally:
        torch.set_num_threads(threads)
    chance = {name: 1 / len(values) for name, values in HEADS.items()}
    assert acc["background"] > chance["background"] + 0.4, acc
    assert acc["colour"] > chance["colour"] + 0.1, acc
    features = probe.features([Image.new("RGB", (32, 32), "white")] * 2)
    assert features.shape == (2, 64)


def test_clip_style_extractor_feeds_the_cosine(tmp_path):
    """A (random, tiny) CLIP vision tower saved locally loads like real weights would."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from pipelines.evaluate.features import standard_extractors

    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8, projection_dim=16)
    CLIPVisionModelWithProjection(cfg).save_pretrained(tmp_path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    extract = standard_extractors(clip=str(tmp_path))["clip_i"]
    red, blue = Image.new("RGB", (48, 48), "red"), Image.new("RGB", (48, 48), "blue")
    feats = extract([red, red, blue])
    assert feats.shape == (3, 16)
    assert mean_pairwise_cosine(feats[:1], feats[1:2]) == pytest.approx(1.0, abs=1e-5)


# ----------------------------------------------------------------------------- the world base recipe
def test_world_base_recipe_builds_a_loadable_cached_bagel(tmp_path):
    """A few steps of every stage: release layout, strict load, cache hit, same bytes when rebuilt —
    every shipped file (`write_shipped`: tokenizer and recipe too), not only the weights."""
    from omnipersona.model.checkpoint import load_bagel
    from omnipersona.pretrain import PretrainConfig, Schedule, ensure_world_base
    from omnipersona.pretrain.config import Curriculum
    from omnipersona.pretrain.build import build_world_base
    from omnipersona.pretrain.probe import ensure_probe, probe_folder
    from omnipersona.pretrain.shipped import SUMS_FILE, check_shipped, write_shipped

    cfg = PretrainConfig(vae_crop_steps=2, vae_steps=1, vit_steps=2, schedule=Schedule(steps=2, batch_size=4, warmup_steps=1),
                         curriculum=Curriculum(item_steps=1, plain_colour_steps=1, single_attribute_steps=1, named_steps=2, batch_size=6,
                                               named_batch=(1, 1, 1, 1), named_item_samples=1, named_intent_samples=1))
    folder = ensure_world_base(cfg, tmp_path / "cache", log=None)
    assert folder.name == f"world-base-{cfg.digest()}"
    for name in ("llm_config.json", "vit_config.json", "ema.safetensors", "ae.safetensors", "tokenizer.json"):
        assert (folder / name).exists(), name
    bundle = load_bagel(str(folder))
    assert bundle.config.vit.image_size == 32 and bundle.config.latent_downsample == 8
    assert ensure_world_base(cfg, tmp_path / "cache", log=None) == folder  # cached: no rebuild
    again = build_world_base(tmp_path / "again", cfg, log=None)  # no stage cache: every stage retrained
    assert (again / "ema.safetensors").read_bytes() == (folder / "ema.safetensors").read_bytes()
    assert (again / "ae.safetensors").read_bytes() == (folder / "ae.safetensors").read_bytes()

    probe_cfg = ProbeConfig(steps=2, batch_size=4, width=8, feature_dim=16)
    ensure_probe(probe_cfg, tmp_path / "cache", log=None)
    first = write_shipped(folder, probe_folder(probe_cfg, tmp_path / "cache"), tmp_path / "shipped")
    second = write_shipped(again, probe_folder(probe_cfg, tmp_path / "cache"), tmp_path / "shipped-again")
    assert first == second and "world-base/tokenizer.json" in first and "world-probe/probe.safetensors" in first
    assert check_shipped(tmp_path / "shipped") == []
    assert load_bagel(str(tmp_path / "shipped" / "world-base")).fingerprint == bundle.fingerprint
    (tmp_path / "shipped" / "world-base" / "ema.safetensors").write_bytes(b"not weights")
    (tmp_path / "shipped" / "world-probe" / "extra.bin").write_bytes(b"")
    problems = check_shipped(tmp_path / "shipped")
    assert len(problems) == 2 and problems[0] == f"world-probe/extra.bin: not listed in {SUMS_FILE}", problems
    assert problems[1].startswith("world-base/ema.safetensors: sha256 "), problems


def test_curriculum_phases_and_annealed_phase_three():
    from omnipersona.pretrain import PretrainConfig
    from omnipersona.pretrain.config import Curriculum
    from omnipersona.pretrain.curriculum_stage import curriculum_lr_factor, curriculum_samples

    cfg = PretrainConfig(curriculum=Curriculum(item_steps=2, plain_colour_steps=2, single_attribute_steps=2, named_steps=5, batch_size=6,
                                               named_batch=(1, 1, 1, 1), named_item_samples=1, named_intent_samples=1))
    drawings = curriculum_samples(cfg, 0)  # phase 0: a described concept drawn with an item spelled out
    assert all(segs[-1].kind == "target" and segs[1].text.startswith("a photo of") for segs in drawings)
    for step in (2, 4):  # phases 1-2: one-attribute checks or the matching VQA, answer as the only loss
        assert all(segs[0].kind == "vit" and segs[-1].loss for segs in curriculum_samples(cfg, step))
    mixed = curriculum_samples(cfg, 6)
    assert len(mixed) == 6 and mixed[-1][-2].text.endswith("Question:")  # the last one: a replay intent prompt
    factors = [curriculum_lr_factor(cfg, step) for step in range(cfg.curriculum.steps)]
    assert factors[:7] == [1.0] * 7 and factors[-1] == pytest.approx(cfg.curriculum.named_min_lr_ratio)
    assert all(a >= b for a, b in zip(factors, factors[1:]))


# ----------------------------------------------------------------------------- the job's evaluate step
def test_job_scores_concepts_on_their_held_out_sets_and_gates_on_the_metrics(tiny_bagel, concept, tmp_path):
    """`evaluation.eval_sets_uri`: a concept with a held-out set gets the harness' metrics (the gate's
    inputs); one without gets none of them."""
    from jobs.demo import demo_config
    from omnipersona.concepts.bank import ConceptBank
    from omnipersona.concepts.init import init_concept
    from omnipersona.infer.engine import Persona
    from omnipersona.model.sampling import FlowSampling
    from omnipersona.world.uploads import EvalSetWriteOptions as WriteOptions
    from omnipersona.world.uploads import write_eval_sets
    from pipelines.config import JobConfig
    from omnipersona.identity import ConceptId
    from pipelines.evaluate.benchmark import benchmark_metrics

    write_eval_sets({"acme": [concept]}, tmp_path / "eval", options=WriteOptions(size=64, views=1, hard_negatives=1, random_negatives=1))
    cfg = JobConfig(**demo_config(tmp_path))
    assert cfg.evaluation.eval_sets_uri == str(tmp_path / "eval")
    llm = tiny_bagel.config.llm
    bank = ConceptBank(1, llm.hidden_size, llm.vocab_size, 2, 2)
    init_concept(bank, 0, tiny_bagel, concept.class_word, strategy="class_word")
    persona = Persona(tiny_bagel, bank, [concept.name], image_size=64, sampling=FlowSampling(num_steps=2))

    m = benchmark_metrics(cfg.evaluation, cfg.storage, persona, ConceptId("acme", concept.name), 64)
    for key in ("recognition_accuracy", "recognition_hard_negative", "text_qa_accuracy", "vqa_accuracy"):
        assert key in m and 0.0 <= m[key] <= 1.0, (key, m.get(key))
    assert "generation_probe" not in m and "clip_i" not in m  # image judges are opt-in (evaluation.judge)
    assert benchmark_metrics(cfg.evaluation, cfg.storage, persona, ConceptId("acme", "nobody"), 64) == {}

    decision = Gate(minimums={"recognition_hard_negative": 1.01}).evaluate(m)
    assert not decision.passed and "recognition_hard_negative" in " ".join(decision.reasons)
