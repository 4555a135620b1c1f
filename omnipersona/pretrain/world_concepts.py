"""Training examples of a world concept for OmniPersona's concept tokens (the benchmark's data).

What a user would upload, made from the world, in the paper's task mix:
    recognition  training views -> "Yes"; hard negatives (one attribute off) and random objects -> "No"
    vqa          training views + questions about visible attributes, the scene and the name
    text_qa      facts, visible and private (toy, food, home, hobby), training wording
    t2i          "a photo of <sks> on grass" -> the training view
    edit         "remove <sks>" / "change the background to ..." / "give <sks> a blue hat" triplets
Held-out material (other views, other negatives, other wordings, the private items' pictures) is
never used here: see `omnipersona.world.eval_sets.eval_set_from_world`.
"""
from __future__ import annotations

import numpy as np
import torch

from ..concepts.init import image_features, init_concept, latent_features
from ..concepts.samples import ConceptExample
from ..training import ConceptPool
from ..world import seeds
from ..world.attributes import BACKGROUND_PHRASE, object_phrase
from ..world.concepts import WorldConcept, random_objects_unlike

SKS = "<sks>"
# Hard negatives 0..TRAIN_HARD_OFFSET-1 are the held-out ones (`write_eval_set` uses the first n).
TRAIN_HARD_OFFSET = 8


def _array(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def concept_examples(
    concept: WorldConcept,
    slot: int = 0,
    *,
    size: int = 32,
    views: int = 10,
    negatives: int = 5,
    edits: int = 3,
    tasks: tuple[str, ...] = ("recognition", "vqa", "text_qa", "t2i", "edit"),
) -> list[ConceptExample]:
    train_views = concept.train_views(views, size)
    out: list[ConceptExample] = []

    def add(task, prompt, answer=None, image=None, target=None):
        if task in tasks:
            out.append(ConceptExample(slot, task, prompt, answer,
                                      None if image is None else _array(image), None if target is None else _array(target)))

    question = f"Is {SKS} in this image?"
    for view in train_views:
        add("recognition", question, "Yes", image=view.image)
    hard = concept.hard_negatives(TRAIN_HARD_OFFSET + negatives, size)[TRAIN_HARD_OFFSET:]
    rand = random_objects_unlike([concept.spec], negatives, size, seeds.derive_seed(concept.seed, seeds.RANDOM_NEGATIVE, 1))
    for negative in [*hard, *rand]:
        add("recognition", question, "No", image=negative.image)

    visible = [q for q in concept.questions(subject=SKS) if q.visible]
    for view in train_views:
        for q in visible:
            add("vqa", q.question, q.answer, image=view.image)
        add("vqa", f"Where is {SKS}?", BACKGROUND_PHRASE[view.spec.background], image=view.image)
        add("vqa", f"What is the name of the {concept.class_word} in this image?", f"This is {SKS}.", image=view.image)

    for q in concept.questions(subject=SKS):
        add("text_qa", q.question, q.answer)
    add("text_qa", f"What does {SKS} look like?", object_phrase(concept.spec))

    for view in train_views:
        add("t2i", f"a photo of {SKS} {BACKGROUND_PHRASE[view.spec.background]}", target=view.image)

    for edit in concept.edits(edits, size, subject=SKS):
        add("edit", edit.instruction, image=edit.source, target=edit.target)
    return out


def concept_pool(concept: WorldConcept, slot: int = 0, **kw) -> ConceptPool:
    return ConceptPool(f"world/{concept.name}", concept_examples(concept, slot, **kw))


@torch.no_grad()
def init_world_concept(bank, slot: int, bundle, concept: WorldConcept, size: int = 32, seed: int = 0, views: int = 4,
                       noise_scale: float = 0.1) -> None:
    """`init_concept(strategy="image")` at the base's image size.

    `omnipersona.concepts.init.init_concept` encodes images at its default 64 pixels; the world base
    sees 32. So: class-word init for the identifier (input and output rows), then the understanding /
    generation tokens from the mean ViT / latent features of training views at `size`, plus the same
    small per-token noise.
    """
    init_concept(bank, slot, bundle, concept.class_word, strategy="class_word", seed=seed, noise_scale=noise_scale)
    images = [np.asarray(v.image) for v in concept.train_views(views, size)]
    embed = bundle.model.language_model.model.embed_tokens.weight
    std = float(embed.float().std())
    g = torch.Generator().manual_seed(seed + 1)

    def noise(n):
        return torch.randn(n, bank.hidden_size, generator=g).to(embed) * std * noise_scale

    bank.und_tokens[slot] = image_features(bundle, images, vit_size=size).mean(0)[None] + noise(bank.num_und)
    if bank.num_gen:
        bank.gen_tokens[slot] = latent_features(bundle, images, vae_size=size).mean(0)[None] + noise(bank.num_gen)
