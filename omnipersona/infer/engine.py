"""Personalized understanding, generation and editing with concepts loaded from artifacts.

    persona = Persona.from_artifacts(bundle, [artifact_maeve, artifact_rex])
    persona.understand("Is <maeve> in this image?", image=photo)  -> Answer(text, yes_probability)
    persona.generate("maeve", "Generate a toy for <maeve>")        -> Generated(image, replay texts)
    persona.edit("maeve", photo, "remove <maeve>")                 -> Generated(image, replay texts)

Each loaded concept gets a slot in one inference bank; its system prompt ("<maeve> is <und...>
<gen...>.") is prefilled first, with generation tokens routed to the generation expert.

A concept is named in prompts by its display name in angle brackets, matched literally whatever it
holds (`<Mr. Whiskers>`), and becomes its identifier token; every other character of a prompt is
user text, tokenised with special-token strings split into ordinary tokens
(`omnipersona.model.tokenizer.encode_user_text`): only the template's markers are control ids.

Classifier-free guidance: with `guide_concept` (the default) the text-free branch of generation and
editing leaves out the concept's system prompt too, so guidance pushes towards the concept as well
as the request; without it, the concept's tokens sit in both branches and only the request is
guided. Measured on the world base (docs/evaluation.md), guiding the concept is what lets trained
generation tokens show in the picture.

Knowledge replay: by default (`replay_appearance=False`) a request whose parsed question is only
"What does <maeve> look like?" is used as it is — the generation tokens carry the look, and on the
world base appending a recalled description made the base redraw the concept from text (edits kept
less of it); requests about knowledge ("... with its toy") are always rewritten.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from ..concepts.artifact import ConceptArtifact
from ..concepts.bank import ConceptBank
from ..concepts.prompts import decode, encode, system_prompt_ids
from ..model.images import to_pil, to_tensor
from ..model.tokenizer import encode_user_text
from ..model.sampling import (
    Context,
    FlowSampling,
    append_text,
    append_vae_latent,
    append_vit_image,
    decode_text,
    latent_grid,
    new_context,
    sample_latent,
)
from .replay import KnowledgeReplay, ReplayTrace


@dataclass
class Answer:
    text: str
    yes_probability: float | None = None


@dataclass
class Generated:
    image: Image.Image
    prompt_used: str
    replay: ReplayTrace | None = None
    extras: dict = field(default_factory=dict)


class Persona:
    def __init__(self, bundle, bank: ConceptBank, names: list[str], image_size: int = 64, sampling: FlowSampling | None = None,
                 guide_concept: bool = True, replay_appearance: bool = False):
        if bundle.tokenizer is None:
            raise ValueError("the base model folder has no tokenizer files: inference needs them")
        self.bundle, self.bank, self.names = bundle, bank, list(names)
        twice = sorted({n for n in self.names if self.names.count(n) > 1})
        if twice or "" in self.names:
            # A name is how a prompt reaches a concept's identifier: one name, one concept.
            raise ValueError(f"every loaded concept needs its own non-empty name; repeated or empty: {twice or ['']}")
        self.slots = {name: i for i, name in enumerate(self.names)}
        self.image_size = image_size
        self.sampling = sampling or FlowSampling()
        self.guide_concept = guide_concept
        self.replay = KnowledgeReplay(self, appearance=replay_appearance)
        tok = bundle.tokenizer
        self._yes = encode_user_text(tok, "Yes")[0]
        self._no = encode_user_text(tok, "No")[0]
        self._prefixes: dict[tuple[int, ...], Context] = {}  # system-prompt contexts, forked per call

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_artifacts(cls, bundle, artifacts: list[ConceptArtifact], **kw) -> "Persona":
        if not artifacts:
            raise ValueError("load at least one concept artifact")
        first = artifacts[0]
        modes = {a.mode for a in artifacts}
        if len(modes) != 1:
            raise ValueError(f"cannot mix token modes in one bank: {sorted(modes)}")
        cfg = bundle.config.llm
        bank = ConceptBank(len(artifacts), cfg.hidden_size, cfg.vocab_size, first.num_und_tokens, first.num_gen_tokens, mode=first.mode)
        names = []
        for slot, art in enumerate(artifacts):
            if art.manifest.base_fingerprint != bundle.fingerprint:
                from ..concepts.artifact import BaseModelMismatchError

                raise BaseModelMismatchError(
                    f"concept {art.manifest.concept_id} was trained on base {art.manifest.base_model_id} "
                    f"(fingerprint {art.manifest.base_fingerprint}) but the loaded base is {bundle.config.model_id} "
                    f"(fingerprint {bundle.fingerprint}); load the matching base model or retrain the concept"
                )
            bank.load_concept(slot, {n: getattr(art, n) for n in ("identifier", "und_tokens", "gen_tokens", "identifier_output")})
            names.append(art.manifest.display_name)
        return cls(bundle, bank.to(bundle.model.llm2vae.weight), names, **kw)

    # ------------------------------------------------------------------ shared pieces
    @property
    def identifiers(self) -> dict[str, int]:
        return {name: self.bank.identifier_id(slot) for name, slot in self.slots.items()}

    def _concept_slots(self, text: str, extra: list[str] | None = None) -> list[int]:
        used = [s for n, s in self.slots.items() if f"<{n}>" in text]
        for name in extra or []:
            if name not in self.slots:
                raise KeyError(f"concept {name!r} is not loaded; loaded: {self.names}")
            used.append(self.slots[name])
        return sorted(set(used))

    def _context(self, slots: list[int]) -> Context:
        """A fresh context holding the system prompts of the given concepts (prefilled once, then forked)."""
        key = tuple(slots)
        if key not in self._prefixes:
            model, special = self.bundle.model, self.bundle.special
            ctx = new_context(model)
            table = self.bank.table()
            for slot in slots:
                append_text(model, ctx, system_prompt_ids(self.bundle.tokenizer, self.bank, slot), special, table, self.bank.virtual_gen_start)
            self._prefixes[key] = ctx
        return self._prefixes[key].fork()

    def _append(self, ctx: Context, text: str) -> None:
        ids = encode(self.bundle.tokenizer, text, self.identifiers)
        append_text(self.bundle.model, ctx, ids, self.bundle.special, self.bank.table(), self.bank.virtual_gen_start)

    def _pixels(self, image) -> torch.Tensor:
        return to_tensor(image, (self.image_size, self.image_size)).to(self.bundle.model.llm2vae.weight)

    # ------------------------------------------------------------------ tasks
    @torch.no_grad()
    def understand(self, question: str, image: Image.Image | np.ndarray | None = None, concepts: list[str] | None = None, max_new_tokens: int = 32) -> Answer:
        """Answer `question` (which names concepts as `<name>`) about an optional image."""
        model, special = self.bundle.model, self.bundle.special
        ctx = self._context(self._concept_slots(question, concepts))
        if image is not None:
            append_vit_image(model, ctx, self._pixels(image), special)
        self._append(ctx, question)
        first = {}
        logits_fn = lambda h: self.bank.logits(h, model.language_model.lm_head)
        ids = decode_text(model, ctx, special, max_new_tokens, logits_fn, lambda lg: first.setdefault("logits", lg), self.bank.table())
        names_by_id = {v: k for k, v in self.identifiers.items()}
        text = decode(self.bundle.tokenizer, ids, names_by_id)
        two = first["logits"][[self._yes, self._no]].float().softmax(-1)
        return Answer(text=text, yes_probability=float(two[0]))

    def recognition_yes_probability(self, name: str, image) -> float:
        return self.understand(f"Is <{name}> in this image?", image=image, max_new_tokens=1).yes_probability

    @torch.no_grad()
    def generate(self, concept: str, prompt: str, replay: bool = True, size: int | None = None) -> Generated:
        """Text-to-image of a concept; with replay the request is first made explicit from memory."""
        trace = self.replay.run(concept, prompt) if replay else None
        final = trace.rewritten if trace else prompt
        model, special = self.bundle.model, self.bundle.special
        slots = self._concept_slots(final, [concept])
        ctx, text_free = self._context(slots), self._context([] if self.guide_concept else slots)
        self._append(ctx, final)
        size = size or self.image_size
        latent = sample_latent(model, ctx, latent_grid(model, size, size), special, self.sampling, cfg_text_ctx=text_free)
        return Generated(to_pil(self.bundle.vae.decode(latent)), final, trace)

    @torch.no_grad()
    def edit(self, concept: str, image, instruction: str, replay: bool = True) -> Generated:
        """Edit `image` following `instruction`; the source enters as clean VAE and ViT tokens."""
        trace = self.replay.run(concept, instruction) if replay else None
        final = trace.rewritten if trace else instruction
        model, special, vae = self.bundle.model, self.bundle.special, self.bundle.vae
        slots = self._concept_slots(final, [concept])
        pixels = self._pixels(image)
        z = vae.encode(pixels[None], sample=False)[0]

        def with_source(context_slots: list[int]) -> Context:
            ctx = self._context(context_slots)
            append_vae_latent(model, ctx, z, special)
            append_vit_image(model, ctx, pixels, special)
            return ctx

        full = with_source(slots)
        text_free = with_source([]) if self.guide_concept else full.fork()
        image_free = self._context(slots)
        self._append(full, final)
        self._append(image_free, final)
        hw = latent_grid(model, pixels.shape[1], pixels.shape[2])
        latent = sample_latent(model, full, hw, special, self.sampling, text_free, image_free)
        return Generated(to_pil(vae.decode(latent)), final, trace)
