"""Personalized understanding, generation and editing with concepts loaded from artifacts.

    persona = Persona.from_artifacts(bundle, [artifact_maeve, artifact_rex])
    persona.understand("Is <maeve> in this image?", image=photo)  -> Answer(text, yes_probability)
    persona.generate("maeve", "Generate a toy for <maeve>")        -> Generated(image, replay texts)
    persona.edit("maeve", photo, "remove <maeve>")                 -> Generated(image, replay texts)

Batched (many requests, any mix of concepts, one forward per prefill / decoding / denoising step):

    persona.understand_batch([Understand("Is <maeve> in this image?", image=a), Understand("Who is <rex>?")])
    persona.recognition_yes_probability_batch([("maeve", a), ("rex", b)])
    persona.generate_batch([Generate("maeve", "a toy for <maeve>", seed=1), Generate("rex", "<rex> at home")])
    persona.edit_batch([Edit("kiki", photo, "remove <kiki>")])
    persona.run_batch([...any of the three...])

Every loaded concept's rows live in one bank and a request's token ids address its own concept's
rows (virtual ids), so rows of one forward may each use a different concept: the requests' KV
caches stay separate, their new tokens are packed into one stream, and each row attends to its own
cache only. A batch gives what each request gives alone (float rounding aside: tested within 1e-5):
greedy decoding stops per row, and every picture starts from its own request's seed.

Each loaded concept gets a slot in one inference bank; its system prompt ("<maeve> is <und...>
<gen...>.") is prefilled first, with generation tokens routed to the generation expert.

Text profiles (`profiles={"maeve": "<maeve> is a teal star. <maeve>'s toy is a red rocket. ..."}`):
a concept's written description, prefilled as its own segment right after its system prompt,
wherever the concept's prompt goes (understanding, replay, and the conditional branches of
generation and editing), beside its tokens. With `plain_names=True` there are no concept tokens
at all: no system prompt, and `<maeve>` in any prompt is written as the plain word "maeve", so the
profile alone stands for the concept — the paper's "BAGEL + text prompt" baseline, in the form the
world base was pretrained to read ("maeve is a teal star. maeve is striped. ...", then the request).

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

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

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
    append_text_batch,
    append_vae_latent,
    append_vae_latent_batch,
    append_vit_image,
    append_vit_image_batch,
    decode_text,
    decode_text_batch,
    latent_grid,
    new_context,
    sample_latent,
    sample_latent_batch,
)
from .replay import KnowledgeReplay, ReplayTrace
from .requests import Edit, Generate, Request, Understand


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
                 guide_concept: bool = True, replay_appearance: bool = False, batch_size: int = 16,
                 profiles: Mapping[str, str] | None = None, plain_names: bool = False):
        if bundle.tokenizer is None:
            raise ValueError("the base model folder has no tokenizer files: inference needs them")
        self.bundle, self.bank, self.names = bundle, bank, list(names)
        twice = sorted({n for n in self.names if self.names.count(n) > 1})
        if twice or "" in self.names:
            # A name is how a prompt reaches a concept's identifier: one name, one concept.
            raise ValueError(f"every loaded concept needs its own non-empty name; repeated or empty: {twice or ['']}")
        self.slots = {name: i for i, name in enumerate(self.names)}
        self.profiles = dict(profiles or {})
        self.plain_names = plain_names
        # `<name>` -> `name` for plain names; longest names first, so no name cuts another short.
        ordered = sorted(self.names, key=lambda n: (-len(n), n))
        self._plain = functools.partial(re.compile("<(" + "|".join(re.escape(n) for n in ordered) + ")>").sub, lambda m: m.group(1))
        unknown = sorted(set(self.profiles) - set(self.names))
        if unknown:
            raise ValueError(f"profiles for concepts that are not loaded: {unknown}; loaded: {self.names}")
        self.image_size = image_size
        self.sampling = sampling or FlowSampling()
        self.guide_concept = guide_concept
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size  # the most requests the *_batch methods run in one forward
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
        """A fresh context holding the prompts of the given concepts (prefilled once, then forked)."""
        key = tuple(slots)
        if key not in self._prefixes:
            model, special = self.bundle.model, self.bundle.special
            ctx = new_context(model)
            table = self.bank.table()
            for slot in slots:
                for ids in self._prefix_segments(slot):
                    append_text(model, ctx, ids, special, table, self.bank.virtual_gen_start)
            self._prefixes[key] = ctx
        return self._prefixes[key].fork()

    def _contexts(self, slot_lists: list[list[int]]) -> list[Context]:
        """`_context` for many requests: the prompts not prefilled yet are prefilled together."""
        keys = [tuple(slots) for slots in slot_lists]
        missing = [key for key in dict.fromkeys(keys) if key not in self._prefixes]
        if missing:
            model = self.bundle.model
            ctxs = [new_context(model) for _ in missing]
            table = self.bank.table()
            # Segment by segment, in the order `_context` appends them: one forward per round.
            queues = [[ids for slot in key for ids in self._prefix_segments(slot)] for key in missing]
            for k in range(max((len(q) for q in queues), default=0)):
                rows = [i for i, q in enumerate(queues) if len(q) > k]
                append_text_batch(model, [ctxs[i] for i in rows], [queues[i][k] for i in rows],
                                  self.bundle.special, table, self.bank.virtual_gen_start)
            self._prefixes.update(zip(missing, ctxs))
        return [self._prefixes[key].fork() for key in keys]

    def _prefix_segments(self, slot: int) -> list[list[int]]:
        """What stands for the concept in `slot` before a request, one text segment each: its system
        prompt (unless `plain_names`), then its profile (if it has one)."""
        out = [] if self.plain_names else [system_prompt_ids(self.bundle.tokenizer, self.bank, slot)]
        profile = self.profiles.get(self.names[slot], "")
        if profile:
            out.append(self._ids(profile))
        return out

    def _ids(self, text: str) -> list[int]:
        if self.plain_names:
            return encode(self.bundle.tokenizer, self._plain(text), {})
        return encode(self.bundle.tokenizer, text, self.identifiers)

    def _append(self, ctx: Context, text: str) -> None:
        append_text(self.bundle.model, ctx, self._ids(text), self.bundle.special, self.bank.table(), self.bank.virtual_gen_start)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.bank.logits(hidden, self.bundle.model.language_model.lm_head)

    def _answer(self, ids: list[int], first_logits: torch.Tensor) -> Answer:
        names_by_id = {v: k for k, v in self.identifiers.items()}
        two = first_logits[[self._yes, self._no]].float().softmax(-1)
        return Answer(text=decode(self.bundle.tokenizer, ids, names_by_id), yes_probability=float(two[0]))

    def _sampling(self, seed: int | None) -> FlowSampling:
        return self.sampling if seed is None else replace(self.sampling, seed=seed)

    def _chunked(self, requests: Sequence, run: Callable[[list], list]) -> list:
        requests = list(requests)
        return [out for i in range(0, len(requests), self.batch_size) for out in run(requests[i : i + self.batch_size])]

    @staticmethod
    def _only(requests: Sequence, *kinds: type) -> list:
        requests = list(requests)
        wrong = sorted({type(r).__name__ for r in requests if not isinstance(r, kinds)})
        if wrong:
            names = [k.__name__ for k in kinds]
            expected = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
            raise TypeError(f"requests must be {expected}, got {wrong}")
        return requests

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
        ids = decode_text(model, ctx, special, max_new_tokens, self._logits, lambda lg: first.setdefault("logits", lg), self.bank.table())
        return self._answer(ids, first["logits"])

    def recognition_yes_probability(self, name: str, image) -> float:
        return self.understand(f"Is <{name}> in this image?", image=image, max_new_tokens=1).yes_probability

    def understand_batch(self, requests: Sequence[Understand]) -> list[Answer]:
        """`understand` for every request, `batch_size` at a time: one forward per step for all of
        them (system prompts, images, questions, then each greedy step over the rows still decoding)."""
        return self._chunked(self._only(requests, Understand), self._understand_together)

    def recognition_yes_probability_batch(self, requests: Sequence[tuple[str, Image.Image | np.ndarray]]) -> list[float]:
        """`recognition_yes_probability` for every (concept name, image) pair."""
        asked = [Understand(f"Is <{name}> in this image?", image=image, max_new_tokens=1) for name, image in requests]
        return [a.yes_probability for a in self.understand_batch(asked)]

    @torch.no_grad()
    def _understand_together(self, requests: list[Understand]) -> list[Answer]:
        model, special = self.bundle.model, self.bundle.special
        ctxs = self._contexts([self._concept_slots(r.question, r.concepts) for r in requests])
        seeing = [i for i, r in enumerate(requests) if r.image is not None]
        if seeing:
            append_vit_image_batch(model, [ctxs[i] for i in seeing], [self._pixels(requests[i].image) for i in seeing], special)
        table = self.bank.table()
        append_text_batch(model, ctxs, [self._ids(r.question) for r in requests], special, table, self.bank.virtual_gen_start)
        first = {}
        ids = decode_text_batch(model, ctxs, special, [r.max_new_tokens for r in requests], self._logits,
                                lambda lg: first.setdefault("logits", lg), table)
        return [self._answer(row, logits) for row, logits in zip(ids, first["logits"])]

    @torch.no_grad()
    def generate(self, concept: str, prompt: str, replay: bool = True, size: int | None = None, *, seed: int | None = None) -> Generated:
        """Text-to-image of a concept; with replay the request is first made explicit from memory.
        `seed` picks the starting noise (None: `sampling.seed`)."""
        trace = self.replay.run(concept, prompt) if replay else None
        final = trace.rewritten if trace else prompt
        model, special = self.bundle.model, self.bundle.special
        slots = self._concept_slots(final, [concept])
        ctx, text_free = self._context(slots), self._context([] if self.guide_concept else slots)
        self._append(ctx, final)
        size = size or self.image_size
        latent = sample_latent(model, ctx, latent_grid(model, size, size), special, self._sampling(seed), cfg_text_ctx=text_free)
        return Generated(to_pil(self.bundle.vae.decode(latent)), final, trace)

    @torch.no_grad()
    def edit(self, concept: str, image, instruction: str, replay: bool = True, *, seed: int | None = None) -> Generated:
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
        latent = sample_latent(model, full, hw, special, self._sampling(seed), text_free, image_free)
        return Generated(to_pil(vae.decode(latent)), final, trace)

    # ------------------------------------------------------------------ batches
    def generate_batch(self, requests: Sequence[Generate]) -> list[Generated]:
        """`generate` for every request, `batch_size` at a time (replay questions decoded together,
        then one denoising loop: one forward per step for every request's CFG branches)."""
        return self._chunked(self._only(requests, Generate), self._draw_together)

    def edit_batch(self, requests: Sequence[Edit]) -> list[Generated]:
        """`edit` for every request, `batch_size` at a time (as `generate_batch`)."""
        return self._chunked(self._only(requests, Edit), self._draw_together)

    def run_batch(self, requests: Sequence[Request]) -> list[Answer | Generated]:
        """Any mix of requests, answered in order: the `Understand` ones decode together, the
        `Generate` and `Edit` ones (after their replay) denoise together."""
        requests = self._only(requests, Understand, Generate, Edit)
        asks = [i for i, r in enumerate(requests) if isinstance(r, Understand)]
        draws = [i for i, r in enumerate(requests) if not isinstance(r, Understand)]
        out: list = [None] * len(requests)
        for i, result in zip(asks, self.understand_batch([requests[i] for i in asks])):
            out[i] = result
        for i, result in zip(draws, self._chunked([requests[i] for i in draws], self._draw_together)):
            out[i] = result
        return out

    @torch.no_grad()
    def _draw_together(self, requests: list[Generate | Edit]) -> list[Generated]:
        """Generation and editing requests in one denoising loop, with the contexts `generate` and
        `edit` build: full, text-free, and (edits) image-free."""
        model, special, vae = self.bundle.model, self.bundle.special, self.bundle.vae
        asked = [r.prompt if isinstance(r, Generate) else r.instruction for r in requests]
        replayed = [i for i, r in enumerate(requests) if r.replay]
        traces = dict(zip(replayed, self.replay.run_batch([(requests[i].concept, asked[i]) for i in replayed]) if replayed else []))
        finals = [traces[i].rewritten if i in traces else text for i, text in enumerate(asked)]
        slots = [self._concept_slots(final, [r.concept]) for r, final in zip(requests, finals)]
        edits = [i for i, r in enumerate(requests) if isinstance(r, Edit)]
        pixels = {i: self._pixels(requests[i].image) for i in edits}

        full = self._contexts(slots)
        # Text-free: without the concept's prompt when guiding it. Unguided, an edit's is a fork of
        # its full context once the source is in (as `edit` does); every other starts afresh.
        fresh = [i for i in range(len(requests)) if self.guide_concept or i not in pixels]
        text_free = dict(zip(fresh, self._contexts([[] if self.guide_concept else slots[i] for i in fresh])))
        image_free = dict(zip(edits, self._contexts([slots[i] for i in edits])))
        if edits:
            z = dict(zip(edits, vae.encode(torch.stack([pixels[i] for i in edits]), sample=False)))
            sourced = [(full[i], i) for i in edits] + [(text_free[i], i) for i in edits if i in text_free]
            append_vae_latent_batch(model, [c for c, _ in sourced], [z[i] for _, i in sourced], special)
            append_vit_image_batch(model, [c for c, _ in sourced], [pixels[i] for _, i in sourced], special)
            text_free.update({i: full[i].fork() for i in edits if i not in text_free})
        instructed = [(full[i], i) for i in range(len(requests))] + [(image_free[i], i) for i in edits]
        append_text_batch(model, [c for c, _ in instructed], [self._ids(finals[i]) for _, i in instructed], special,
                          self.bank.table(), self.bank.virtual_gen_start)

        sizes = [tuple(pixels[i].shape[1:]) if i in pixels else (r.size or self.image_size,) * 2 for i, r in enumerate(requests)]
        seeds = [self.sampling.seed if r.seed is None else r.seed for r in requests]
        rows = range(len(requests))
        latents = sample_latent_batch(model, full, [latent_grid(model, *size) for size in sizes], special, self.sampling,
                                      [text_free[i] for i in rows], [image_free.get(i) for i in rows], seeds)
        return [Generated(image, final, traces.get(i)) for i, (image, final) in enumerate(zip(self._decode(latents), finals))]

    def _decode(self, latents: list[torch.Tensor]) -> list[Image.Image]:
        """VAE-decode latents, one call per latent size."""
        pixels: list = [None] * len(latents)
        by_shape: dict[tuple, list[int]] = {}
        for i, latent in enumerate(latents):
            by_shape.setdefault(tuple(latent.shape), []).append(i)
        for members in by_shape.values():
            for i, decoded in zip(members, self.bundle.vae.decode(torch.cat([latents[i] for i in members]))):
                pixels[i] = decoded
        return [to_pil(p) for p in pixels]
