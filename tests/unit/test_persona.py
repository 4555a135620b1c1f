"""Concept artifacts, the inference API, knowledge replay and a real learning signal (tiny model)."""
import numpy as np
import pytest
import torch

from omnipersona.concepts.artifact import BaseModelMismatchError, ConceptArtifact, ConceptManifest
from omnipersona.concepts.bank import ConceptBank
from omnipersona.concepts.init import init_concept
from omnipersona.concepts.samples import ConceptExample, SampleBuilder
from omnipersona.infer.engine import Persona
from omnipersona.infer.replay import KnowledgeReplay
from omnipersona.training import ConceptPool, TrainConfig, compute_loss, train_pack


def views(seed, n, colour, size=64):
    """Noisy views of one 'concept': a fixed colour blob at random places."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img = rng.normal(128, 40, (size, size, 3))
        y, x = rng.integers(8, size - 24, 2)
        img[y : y + 16, x : x + 16] = colour
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def artifact_for(bundle, bank, slot, name):
    tensors = bank.concept_tensors(slot)
    manifest = ConceptManifest(
        tenant="acme", concept=name, display_name=name, class_word="dog", training_config_hash="0" * 16,
        data_digest="d" * 16, base_model_id=bundle.config.model_id, base_fingerprint=bundle.fingerprint,
    )
    return ConceptArtifact(**tensors, manifest=manifest, mode=bank.mode)


@pytest.fixture()
def trained(tiny_bagel):
    cfg = TrainConfig(steps=2, batch_size=2, num_und_tokens=4, num_gen_tokens=4)
    c = tiny_bagel.config.llm
    bank = ConceptBank(1, c.hidden_size, c.vocab_size, 4, 4)
    imgs = views(0, 4, (250, 20, 20))
    init_concept(bank, 0, tiny_bagel, "dog", imgs)
    pool = ConceptPool("acme/maeve", [
        ConceptExample(0, "recognition", "Is <sks> in this image?", "Yes", image=imgs[0]),
        ConceptExample(0, "t2i", "A photo of <sks>.", target=imgs[1]),
    ])
    train_pack(tiny_bagel, bank, [pool], cfg)
    return bank


def test_artifact_round_trip_into_persona(tiny_bagel, trained, tmp_path):
    art = artifact_for(tiny_bagel, trained, 0, "maeve")
    art.save(tmp_path / "maeve")
    loaded = ConceptArtifact.load(tmp_path / "maeve", expected_fingerprint=tiny_bagel.fingerprint)
    for name in ("identifier", "und_tokens", "gen_tokens", "identifier_output"):
        assert torch.equal(getattr(loaded, name), getattr(art, name))
    persona = Persona.from_artifacts(tiny_bagel, [loaded, artifact_for(tiny_bagel, trained, 0, "rex")])
    ans = persona.understand("Is <maeve> in this image?", image=views(1, 1, (250, 20, 20))[0])
    assert isinstance(ans.text, str) and 0.0 <= ans.yes_probability <= 1.0
    with pytest.raises(BaseModelMismatchError) as err:
        ConceptArtifact.load(tmp_path / "maeve", expected_fingerprint="f" * 32)
    assert tiny_bagel.fingerprint in str(err.value) and "f" * 32 in str(err.value)


def test_generate_and_edit_with_and_without_replay(tiny_bagel, trained):
    from omnipersona.model.sampling import FlowSampling

    persona = Persona.from_artifacts(tiny_bagel, [artifact_for(tiny_bagel, trained, 0, "maeve")], sampling=FlowSampling(num_steps=3))
    plain = persona.generate("maeve", "Generate a toy for <maeve>.", replay=False)
    assert plain.prompt_used == "Generate a toy for <maeve>." and plain.replay is None
    assert plain.image.size == (64, 64)
    replayed = persona.generate("maeve", "Generate a toy for <maeve>.", replay=True)
    trace = replayed.replay
    assert trace.request == "Generate a toy for <maeve>."
    assert trace.intent_prompt.count("Request:") == 7 and "Question:" in trace.intent_prompt
    assert "<maeve>" in trace.question and isinstance(trace.answer, str)
    assert replayed.prompt_used == trace.rewritten and trace.rewritten.startswith("Generate a toy for <maeve>")
    edited = persona.edit("maeve", views(2, 1, (250, 20, 20))[0], "remove <maeve>.", replay=False)
    assert edited.image.size == (64, 64) and edited.prompt_used == "remove <maeve>."


def test_intent_parsing_names_the_concept_as_a_plain_word_and_binds_it_back():
    replay = KnowledgeReplay(persona=None)
    prompt = replay.intent_prompt("maeve", "Draw <maeve> with its toy.")
    assert "<" not in prompt and prompt.endswith("Request: Draw maeve with its toy.\nQuestion:")
    assert prompt.count("maeve") == 13  # six shots (request and question) + the request
    assert replay.bind_name("maeve", "What is maeve's toy?") == "What is <maeve>'s toy?"
    # already bound, or only part of another word: unchanged
    assert replay.bind_name("maeve", "Is <maeve> near maeves?") == "Is <maeve> near maeves?"


def test_guiding_the_concept_changes_only_the_text_free_branch(tiny_bagel, trained):
    """guide_concept drops the concept's prompt from the text-free CFG branch: no effect without
    guidance, a different picture with it."""
    from omnipersona.model.sampling import FlowSampling

    art = artifact_for(tiny_bagel, trained, 0, "maeve")

    def pixels(guide: bool, scale: float):
        persona = Persona.from_artifacts(tiny_bagel, [art], sampling=FlowSampling(num_steps=3, cfg_text_scale=scale), guide_concept=guide)
        return np.asarray(persona.generate("maeve", "a photo of <maeve>", replay=False).image, dtype=np.int16)

    assert np.array_equal(pixels(True, 1.0), pixels(False, 1.0))
    assert np.abs(pixels(True, 4.0) - pixels(False, 4.0)).max() > 0


class ScriptedPersona:
    """Answers replay's two questions from a script (the replay logic under test, not a model)."""

    def __init__(self, parsed: str, answers: dict[str, str]):
        self.parsed, self.answers, self.asked = parsed, answers, []

    def understand(self, text, concepts=None, max_new_tokens=32):
        from omnipersona.infer.engine import Answer

        self.asked.append(text)
        return Answer(self.parsed if "Request:" in text else self.answers.get(text, ""))


def test_replay_rewrites_knowledge_requests_and_leaves_appearance_ones_by_default():
    toy = ScriptedPersona("What is maeve's toy?\nRequest: ...", {"What is <maeve>'s toy?": "a red rocket"})
    trace = KnowledgeReplay(toy).run("maeve", "a photo of <maeve> with its toy")
    assert trace.question == "What is <maeve>'s toy?" and trace.answer == "a red rocket"
    assert trace.rewritten == "a photo of <maeve> with its toy. a red rocket"

    look = "What does <maeve> look like?"
    garbled = ScriptedPersona("What is ike's toy?", {look: "a striped teal star"})  # the name not copied
    assert KnowledgeReplay(garbled, appearance=True).run("maeve", "remove <maeve>").rewritten == "remove <maeve>. a striped teal star"
    plain = KnowledgeReplay(garbled, appearance=False).run("maeve", "remove <maeve>")
    assert plain.question == look and plain.rewritten == "remove <maeve>" and len(garbled.asked) == 3  # no memory query


def test_training_lowers_held_out_recognition_loss(tiny_bagel):
    """Held-out views of the concept ('Yes') and negatives ('No'): trained tokens beat untrained ones."""
    colour = (250, 20, 20)
    train_pos, train_neg = views(10, 6, colour), views(11, 6, (20, 20, 250))
    held_pos, held_neg = views(20, 6, colour), views(21, 6, (20, 250, 20))
    c = tiny_bagel.config.llm
    bank = ConceptBank(1, c.hidden_size, c.vocab_size, 16, 16)
    init_concept(bank, 0, tiny_bagel, "dog", train_pos[:2])
    q = "Is <sks> in this image?"
    pool = ConceptPool("acme/maeve", [ConceptExample(0, "recognition", q, "Yes", image=i) for i in train_pos]
                       + [ConceptExample(0, "recognition", q, "No", image=i) for i in train_neg])
    held = [ConceptExample(0, "recognition", q, "Yes", image=i, seed=k) for k, i in enumerate(held_pos)] + \
           [ConceptExample(0, "recognition", q, "No", image=i, seed=k) for k, i in enumerate(held_neg)]
    # A random tiny backbone caps how far tokens can move its outputs; the paper's defaults (16+16
    # tokens) and a high lr show the effect within seconds. Issue 7's pretrained base measures more.
    cfg = TrainConfig(steps=30, batch_size=4, lr=0.1, vit_size=32)

    def held_out_loss():
        with torch.no_grad():
            batch = SampleBuilder(tiny_bagel, bank, vit_size=32).batch(held)
            _, table = compute_loss(tiny_bagel, bank, batch, cfg.loss_weights)
        return float(table["ce"][0])

    before = held_out_loss()
    train_pack(tiny_bagel, bank, [pool], cfg)
    after = held_out_loss()
    assert after < before - 1.0, f"held-out recognition loss {before:.3f} -> {after:.3f} (nats per answer token)"


def distinct_artifacts(bundle, names, mode="decoupled"):
    """One artifact per name, each from its own class word and images: all four tensors differ."""
    c = bundle.config.llm
    bank = ConceptBank(len(names), c.hidden_size, c.vocab_size, 4, 4, mode=mode)
    looks = [("dog", (250, 20, 20)), ("cat", (20, 250, 20)), ("person", (20, 20, 250))]
    for slot, (word, colour) in enumerate(looks[: len(names)]):
        init_concept(bank, slot, bundle, word, views(slot, 2, colour), seed=slot)
    arts = [artifact_for(bundle, bank, slot, name) for slot, name in enumerate(names)]
    for i in range(len(arts)):
        for j in range(i):
            for t in ("identifier", "und_tokens", "gen_tokens", "identifier_output"):
                assert (getattr(arts[i], t) - getattr(arts[j], t)).abs().max() > 1e-2, (t, i, j)
    return arts


def record_answers(persona, monkeypatch):
    """Wrap the persona's logits so every `understand` call leaves its first step's logits behind."""
    seen, logits = [], persona.bank.logits
    monkeypatch.setattr(persona.bank, "logits", lambda h, head: seen.append(logits(h, head)) or seen[-1])
    return seen


def record_latents(monkeypatch):
    """Every latent `Persona.generate` / `edit` samples, in call order."""
    import omnipersona.infer.engine as engine

    seen, sample = [], engine.sample_latent
    monkeypatch.setattr(engine, "sample_latent", lambda *a, **kw: seen.append(sample(*a, **kw)) or seen[-1])
    return seen


def test_concepts_loaded_together_answer_and_draw_by_their_own_names(tiny_bagel, monkeypatch):
    """Three concepts with different tensors in one Persona (in two slot orders): a prompt naming one
    gives that concept's answer logits and picture as when it is loaded alone, and not another's."""
    from omnipersona.model.sampling import FlowSampling

    names = ["maeve", "rex", "kiki"]
    arts = dict(zip(names, distinct_artifacts(tiny_bagel, names)))
    opts = dict(sampling=FlowSampling(num_steps=3), image_size=32)
    image = views(7, 1, (120, 120, 120))[0]
    vocab = tiny_bagel.config.llm.vocab_size
    latents = record_latents(monkeypatch)

    def ask(persona, name):
        """(answer text, vocabulary logits, the named identifier's logit, sampled latent)."""
        seen = record_answers(persona, monkeypatch)
        answer = persona.understand(f"Is <{name}> in this image?", image=image, max_new_tokens=4)
        first = seen[0][0]
        persona.generate(name, f"a photo of <{name}>", replay=False)
        return answer.text, first[:vocab], first[vocab + persona.slots[name]], latents[-1]

    alone = {n: ask(Persona.from_artifacts(tiny_bagel, [arts[n]], **opts), n) for n in names}
    for order in (names, names[1:] + names[:1]):
        together = Persona.from_artifacts(tiny_bagel, [arts[n] for n in order], **opts)
        for name in order:
            text, vocab_logits, own, latent = ask(together, name)
            want_text, want_logits, want_own, want_latent = alone[name]
            torch.testing.assert_close(vocab_logits, want_logits, atol=1e-5, rtol=0, msg=lambda m: f"{order} {name}: {m}")
            torch.testing.assert_close(own, want_own, atol=1e-5, rtol=0)
            torch.testing.assert_close(latent, want_latent, atol=1e-4, rtol=0, msg=lambda m: f"{order} {name}: {m}")
            assert text == want_text, (order, name)
        assert together.names == order and [together.slots[n] for n in order] == [0, 1, 2]
    # The comparison can tell concepts apart: each concept's answer and picture differ from the others'.
    for i, a in enumerate(names):
        for b in names[:i]:
            assert (alone[a][1] - alone[b][1]).abs().max() > 1e-2, (a, b)
            assert (alone[a][3] - alone[b][3]).abs().max() > 1e-2, (a, b)


def test_shared_mode_tokens_train_and_serve_understanding_and_generation(tiny_bagel, tmp_path, monkeypatch):
    """The ablation's one token set (`mode="shared"`): both tasks train it, an artifact carries it,
    and a Persona answers and draws with it, every token on the understanding expert."""
    from omnipersona.model.sampling import FlowSampling

    c = tiny_bagel.config.llm
    bank = ConceptBank(1, c.hidden_size, c.vocab_size, 4, 4, mode="shared")
    assert (bank.num_und, bank.num_gen, bank.virtual_gen_start) == (8, 0, None)
    imgs, others = views(0, 4, (250, 20, 20)), views(1, 2, (20, 20, 250))
    init_concept(bank, 0, tiny_bagel, "dog", imgs)
    untrained = artifact_for(tiny_bagel, bank, 0, "maeve")
    examples = {
        "understanding": ConceptExample(0, "recognition", "Is <sks> in this image?", "Yes", image=imgs[0]),
        "generation": ConceptExample(0, "t2i", "A photo of <sks>.", target=imgs[1]),
    }
    # One token set for both tasks: an understanding loss and a generation loss each reach every
    # shared token, and no token of the batch goes to the generation expert but the latent ones.
    cfg = TrainConfig(steps=3, batch_size=2, lr=5e-2, mode="shared", num_und_tokens=4, num_gen_tokens=4)
    builder = SampleBuilder(tiny_bagel, bank)
    for task, ex in examples.items():
        batch = builder.batch([ex])
        assert batch.packed.extra_gen_indexes is None or len(batch.packed.extra_gen_indexes) == 0
        bank.zero_grad(set_to_none=True)
        loss, _ = compute_loss(tiny_bagel, bank, batch, cfg.loss_weights)
        loss.backward()
        assert (bank.und_tokens.grad[0].abs().amax(-1) > 0).all(), f"{task} loss misses some shared tokens"
    bank.zero_grad(set_to_none=True)
    pool = ConceptPool("acme/maeve", list(examples.values()) + [
        ConceptExample(0, "recognition", "Is <sks> in this image?", "No", image=others[0]),
        ConceptExample(0, "edit", "remove <sks> from the image.", image=imgs[2], target=others[1]),
    ])
    assert len(train_pack(tiny_bagel, bank, [pool], cfg)) == 3
    assert torch.isfinite(bank.und_tokens).all()
    assert not torch.allclose(bank.und_tokens[0], untrained.und_tokens), "the shared tokens did not train"

    art = artifact_for(tiny_bagel, bank, 0, "maeve")
    art.save(tmp_path / "maeve")
    loaded = ConceptArtifact.load(tmp_path / "maeve", expected_fingerprint=tiny_bagel.fingerprint)
    assert loaded.mode == "shared" and loaded.gen_tokens.shape == (0, c.hidden_size)
    assert torch.equal(loaded.und_tokens, art.und_tokens)

    latents = record_latents(monkeypatch)
    masks = []
    hook = tiny_bagel.model.language_model.register_forward_hook(lambda m, args, out: masks.append(args[2]))

    def serve(artifact):
        persona = Persona.from_artifacts(tiny_bagel, [artifact], sampling=FlowSampling(num_steps=3), image_size=32)
        assert persona.bank.mode == "shared" and persona.bank.virtual_gen_start is None
        seen = record_answers(persona, monkeypatch)
        masks.clear()
        answer = persona.understand("Is <maeve> in this image?", image=imgs[3], max_new_tokens=4)
        # Understanding: the prefilled system prompt, the image, the question, the decoding steps.
        assert masks and not any(bool(m.any()) for m in masks if m is not None)
        generated = persona.generate("maeve", "a photo of <maeve>", replay=False)
        return answer, seen[0], generated, latents[-1]

    try:
        answer, logits, generated, latent = serve(loaded)
        _, untrained_logits, _, untrained_latent = serve(untrained)
    finally:
        hook.remove()
    assert isinstance(answer.text, str) and 0.0 <= answer.yes_probability <= 1.0
    assert generated.image.size == (32, 32)
    # Both tasks read the trained shared tokens: answers and pictures move away from the untrained ones.
    assert (logits - untrained_logits).abs().max() > 1e-3
    assert (latent - untrained_latent).abs().max() > 1e-3
