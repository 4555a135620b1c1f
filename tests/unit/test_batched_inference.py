"""Batched multi-concept inference: one Persona forward serves requests for many concepts at once,
and every request gets what it gets alone (answers, yes-probabilities, pictures; tiny model).

Break-it check, done once by hand: with `Persona._contexts` and `Persona._ids` of the batched
persona patched so that every row used concept 0's system prompt and identifier,
`test_sixteen_concepts_in_one_batch_equal_one_at_a_time` failed at its first comparison: the
first-step logits of concept c1's row were off by up to 0.118 (1e-5 allowed), all 656 of them.
`test_rows_use_their_own_concepts` keeps a cheaper form of that check in the suite. Measured
differences of the unbroken batch: yes-probabilities 9e-8, float pictures 4.5e-6.
"""
import numpy as np
import pytest
import torch

import omnipersona.infer.engine as engine
from omnipersona.concepts.bank import ConceptBank
from omnipersona.concepts.init import init_concept
from omnipersona.concepts.prompts import encode
from omnipersona.infer.engine import Persona
from omnipersona.infer.requests import Edit, Generate, Understand
from omnipersona.model.sampling import FlowSampling, append_text, decode_text, decode_text_batch, new_context

N = 16
WORDS = ["dog", "cat", "person", "object", "star", "circle", "square", "blob",
         "creature", "toy", "ball", "kite", "boat", "hat", "food", "home"]
NAMES = [f"c{i}" for i in range(N)]


def picture(seed, size=32):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


@pytest.fixture()
def bank(tiny_bagel):
    """16 concepts, each initialised from its own class word, images and noise seed."""
    c = tiny_bagel.config.llm
    bank = ConceptBank(N, c.hidden_size, c.vocab_size, 4, 4)
    for slot in range(N):
        init_concept(bank, slot, tiny_bagel, WORDS[slot], [picture(100 + slot)], seed=slot)
    return bank


def persona(bundle, bank, **kw):
    return Persona(bundle, bank, NAMES, image_size=32, sampling=FlowSampling(num_steps=3), **kw)


TO_PIL = engine.to_pil


def record(monkeypatch, persona):
    """From now on, every logits call of `persona`'s bank and every float picture the engine turns
    into a PIL image (replacing what an earlier `record` recorded)."""
    seen = {"logits": [], "pictures": []}
    bank = persona.bank
    monkeypatch.setattr(bank, "logits", lambda h, head: seen["logits"].append(ConceptBank.logits(bank, h, head)) or seen["logits"][-1])
    monkeypatch.setattr(engine, "to_pil", lambda t: seen["pictures"].append(t.reshape(t.shape[-3:])) or TO_PIL(t))
    return seen


def one_at_a_time(monkeypatch, p, calls):
    """Run each single-request call; returns (results, first-step logits per call, float pictures)."""
    seen = record(monkeypatch, p)
    results, firsts = [], []
    for call in calls:
        seen["logits"].clear()
        results.append(call())
        firsts.append(seen["logits"][0][0] if seen["logits"] else None)
    return results, firsts, seen["pictures"]


def assert_pictures(batch, single, seen_batch, seen_single):
    assert len(seen_batch) == len(seen_single) == len(batch)
    for i, (b, s) in enumerate(zip(seen_batch, seen_single)):
        torch.testing.assert_close(b, s, atol=1e-5, rtol=0, msg=lambda m: f"picture {i}: {m}")
    for b, s in zip(batch, single):
        assert b.prompt_used == s.prompt_used and b.replay == s.replay and b.image.size == s.image.size


def test_sixteen_concepts_in_one_batch_equal_one_at_a_time(tiny_bagel, bank, monkeypatch):
    """16 requests for 16 different concepts per task, one batch each: answers (rows stop at their own
    lengths), first-step logits, yes-probabilities and pictures (own seeds, two sizes, replay on half)
    equal the one-at-a-time results within 1e-5 -- and differ between concepts, so a row that used
    another concept's tokens would fail."""
    alone, together = persona(tiny_bagel, bank), persona(tiny_bagel, bank)
    questions = [Understand(f"Is <{n}> in this image?" if i % 2 else f"What is the toy of <{n}>?",
                            image=picture(i) if i % 2 else None, max_new_tokens=1 + i % 5) for i, n in enumerate(NAMES)]
    single, firsts, _ = one_at_a_time(monkeypatch, alone, [
        lambda q=q: alone.understand(q.question, image=q.image, concepts=q.concepts, max_new_tokens=q.max_new_tokens) for q in questions])
    seen = record(monkeypatch, together)
    batch = together.understand_batch(questions)
    for i, (b, s, first) in enumerate(zip(batch, single, firsts)):
        torch.testing.assert_close(seen["logits"][0][i], first, atol=1e-5, rtol=0, msg=lambda m: f"{NAMES[i]}: {m}")
        assert b.text == s.text and abs(b.yes_probability - s.yes_probability) < 1e-5, (i, b, s)
    assert sorted({len(s.text) for s in single}) != [0] and len(seen["logits"]) == max(q.max_new_tokens for q in questions)
    assert min((firsts[i] - firsts[0]).abs().max() for i in range(1, N)) > 1e-3  # concepts answer differently

    pairs = [(n, picture(50 + i)) for i, n in enumerate(NAMES)]
    yes = together.recognition_yes_probability_batch(pairs)
    want = [alone.recognition_yes_probability(n, im) for n, im in pairs]
    np.testing.assert_allclose(yes, want, atol=1e-5, rtol=0)
    assert min(abs(w - want[0]) for w in want[1:]) > 1e-6

    draws = [Generate(n, f"a photo of <{n}> with its toy", replay=i % 2 == 0, size=32 if i % 3 else 48, seed=i % 5)
             for i, n in enumerate(NAMES)]
    single, _, pictures = one_at_a_time(monkeypatch, alone, [
        lambda r=r: alone.generate(r.concept, r.prompt, replay=r.replay, size=r.size, seed=r.seed) for r in draws])
    seen = record(monkeypatch, together)
    assert_pictures(together.generate_batch(draws), single, seen["pictures"], pictures)
    same_seed = [i for i in range(1, N) if draws[i].seed == draws[0].seed and draws[i].size == draws[0].size]
    assert min((pictures[i] - pictures[0]).abs().max() for i in same_seed) > 1e-3  # concepts draw differently

    edits = [Edit(n, picture(200 + i), f"remove <{n}>.", replay=i % 4 == 1, seed=i) for i, n in enumerate(NAMES)]
    single, _, pictures = one_at_a_time(monkeypatch, alone, [
        lambda r=r: alone.edit(r.concept, r.image, r.instruction, replay=r.replay, seed=r.seed) for r in edits])
    seen = record(monkeypatch, together)
    assert_pictures(together.edit_batch(edits), single, seen["pictures"], pictures)


def test_mixed_tasks_in_chunks_equal_one_at_a_time(tiny_bagel, bank, monkeypatch):
    """`run_batch` over a shuffled mix of questions, generations and edits of different concepts, in
    chunks of 3 (`batch_size`), without guiding the concept (the edit's text-free branch is a fork
    of its full context): every result in order, as alone."""
    requests = [
        Edit("c3", picture(1), "remove <c3>.", replay=False, seed=4),
        Understand("Is <c1> in this image?", image=picture(2), max_new_tokens=3),
        Generate("c5", "Generate a toy for <c5>.", replay=True, seed=2),
        Understand("What does <c7> look like?", max_new_tokens=5),
        Generate("c2", "a photo of <c2> and <c9>", replay=False, size=48, seed=0),
        Edit("c8", picture(3), "Put <c8> on the beach.", replay=True, seed=1),
        Understand("Is <c4> or <c6> here?", image=picture(4), concepts=["c11"], max_new_tokens=2),
    ]
    alone, together = persona(tiny_bagel, bank, guide_concept=False), persona(tiny_bagel, bank, guide_concept=False, batch_size=3)

    def call(r):
        if isinstance(r, Understand):
            return lambda: alone.understand(r.question, image=r.image, concepts=r.concepts, max_new_tokens=r.max_new_tokens)
        if isinstance(r, Generate):
            return lambda: alone.generate(r.concept, r.prompt, replay=r.replay, size=r.size, seed=r.seed)
        return lambda: alone.edit(r.concept, r.image, r.instruction, replay=r.replay, seed=r.seed)

    single, firsts, pictures = one_at_a_time(monkeypatch, alone, [call(r) for r in requests])
    seen = record(monkeypatch, together)
    batch = together.run_batch(requests)
    answers = [(b, s) for b, s in zip(batch, single) if isinstance(b, engine.Answer)]
    assert len(answers) == 3 and all(b.text == s.text and abs(b.yes_probability - s.yes_probability) < 1e-5 for b, s in answers)
    drawn = [(b, s) for b, s in zip(batch, single) if isinstance(b, engine.Generated)]
    assert_pictures([b for b, _ in drawn], [s for _, s in drawn], seen["pictures"], pictures)
    with pytest.raises(TypeError, match="must be Understand, Generate or Edit, got \\['str'\\]"):
        together.run_batch(["Is <c1> here?"])
    with pytest.raises(TypeError, match="must be Generate, got \\['Edit'\\]"):
        together.generate_batch(requests[:1])


def test_rows_use_their_own_concepts(tiny_bagel, bank):
    """The break-it check kept in the suite: a batch whose rows all read concept 0's prompt and
    identifier (what a wrong slot lookup would do) no longer matches the one-at-a-time answers."""
    questions = [Understand(f"Is <{n}> in this image?", image=picture(i), max_new_tokens=1) for i, n in enumerate(NAMES[:4])]
    alone = persona(tiny_bagel, bank)
    want = [alone.understand(q.question, image=q.image, max_new_tokens=1).yes_probability for q in questions]
    broken = persona(tiny_bagel, bank, batch_size=4)
    contexts = broken._contexts
    broken._contexts = lambda slot_lists: contexts([[0] * len(slots) for slots in slot_lists])
    broken._ids = lambda text: encode(tiny_bagel.tokenizer, text, {n: bank.identifier_id(0) for n in NAMES})
    got = [a.yes_probability for a in broken.understand_batch(questions)]
    assert abs(got[0] - want[0]) < 1e-5  # concept 0's own row is still right
    assert min(abs(g - w) for g, w in zip(got[1:], want[1:])) > 1e-5


def test_greedy_rows_stop_at_their_own_end(tiny_bagel):
    """Rows of one decoding batch end at <|im_end|> at different steps (or at their own token limit);
    each gets the tokens it gets decoded alone."""
    model, special = tiny_bagel.model, tiny_bagel.special
    head = model.language_model.lm_head

    def logits_fn(hidden):
        # <|im_end|> wins whenever the best other token is a multiple of 3: data-dependent stops.
        logits = head(hidden)
        best = logits.argmax(-1)
        return logits.index_put((torch.arange(len(best))[best % 3 == 0], torch.full(((best % 3 == 0).sum(),), special.eos)),
                                logits.max(-1).values[best % 3 == 0] + 1)

    tok = tiny_bagel.tokenizer
    ctxs = []
    for text in ["What colour is the object?", "Describe the image.", "favourite food toy home", "a red hat", "Question: Answer:", "the"]:
        ctx = new_context(model)
        append_text(model, ctx, tok.encode(text, add_special_tokens=False), special)
        ctxs.append(ctx)
    limits = [12, 12, 12, 12, 12, 2]
    alone = [decode_text(model, ctx, special, n, logits_fn) for ctx, n in zip(ctxs, limits)]
    assert decode_text_batch(model, ctxs, special, limits, logits_fn) == alone
    assert len({len(ids) for ids in alone}) > 2 and any(len(ids) < n for ids, n in zip(alone, limits)), alone
    with pytest.raises(ValueError, match="max_new_tokens >= 1"):
        decode_text_batch(model, ctxs, special, 0)
