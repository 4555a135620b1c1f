"""The concept bank: the only trainable parameters of OmniPersona, for a pack of P concepts.

Per concept slot c:
    identifier         [1, D]   the concept's name token (`<sks>` in templates, `<maeve>` in prompts)
    und_tokens         [Nu, D]  understanding tokens, routed to the understanding expert
    gen_tokens         [Ng, D]  generation tokens, routed to the GENERATION expert at text positions
    identifier_output  [D]      the identifier's LM-head row, so answers can name the concept

The bank is separate from the frozen vocabulary. Its rows are addressed by *virtual token ids*
(`vocab_size + row`), which the packer and the cached-inference path replace by `table()` rows:

    rows [0, P)                        identifiers
    rows [P, P + P*Nu)                 understanding tokens, concept-major
    rows [P + P*Nu, P + P*Nu + P*Ng)   generation tokens (>= `virtual_gen_start` -> generation expert)

Virtual ids depend only on the slot, never on a global name table, so any set of concepts can be
loaded together. "shared" mode (the UniCTokens / Yo'LLaVA-style ablation) keeps one set of
Nu + Ng tokens, all on the understanding expert.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Mode = Literal["decoupled", "shared"]


class ConceptBank(nn.Module):
    def __init__(self, num_concepts: int, hidden_size: int, vocab_size: int, num_und: int = 16, num_gen: int = 16, mode: Mode = "decoupled"):
        super().__init__()
        if mode not in ("decoupled", "shared"):
            raise ValueError(f"mode must be 'decoupled' or 'shared', got {mode!r}")
        self.mode = mode
        self.num_concepts, self.hidden_size, self.vocab_size = num_concepts, hidden_size, vocab_size
        # Shared mode keeps the same token budget in one understanding-expert set.
        self.num_und = num_und + num_gen if mode == "shared" else num_und
        self.num_gen = 0 if mode == "shared" else num_gen
        P, D = num_concepts, hidden_size
        self.identifier = nn.Parameter(torch.zeros(P, 1, D))
        self.und_tokens = nn.Parameter(torch.zeros(P, self.num_und, D))
        self.gen_tokens = nn.Parameter(torch.zeros(P, self.num_gen, D))
        self.identifier_output = nn.Parameter(torch.zeros(P, D))

    # ---------------------------------------------------------------- virtual ids
    @property
    def virtual_gen_start(self) -> int | None:
        return None if self.num_gen == 0 else self.num_concepts * (1 + self.num_und)

    def identifier_id(self, slot: int) -> int:
        return self.vocab_size + slot

    def und_ids(self, slot: int) -> list[int]:
        base = self.vocab_size + self.num_concepts + slot * self.num_und
        return list(range(base, base + self.num_und))

    def gen_ids(self, slot: int) -> list[int]:
        base = self.vocab_size + self.num_concepts * (1 + self.num_und) + slot * self.num_gen
        return list(range(base, base + self.num_gen))

    def table(self) -> torch.Tensor:
        """All rows, in virtual-id order: [P + P*Nu + P*Ng, D]."""
        return torch.cat([self.identifier.flatten(0, 1), self.und_tokens.flatten(0, 1), self.gen_tokens.flatten(0, 1)])

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(table, identifier_output): reading the rows through `forward` lets sharding wrappers
        (DeepSpeed ZeRO-3) gather the bank before use."""
        return self.table(), self.identifier_output

    def logits(
        self,
        hidden: torch.Tensor,
        lm_head: nn.Linear,
        own_slots: torch.Tensor | None = None,
        identifier_output: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Vocabulary logits extended by one column per concept identifier (ids vocab..vocab+P-1).

        With `own_slots` (one slot per row, training), each row only sees its own concept's
        identifier column: other concepts of the pack must not enter its softmax, or packing would
        couple concepts through the normaliser.
        """
        rows = self.identifier_output if identifier_output is None else identifier_output
        extra = hidden @ rows.to(hidden.dtype).T
        if own_slots is not None:
            others = torch.arange(self.num_concepts, device=hidden.device)[None, :] != own_slots[:, None]
            extra = extra.masked_fill(others, float("-inf"))
        return torch.cat([lm_head(hidden), extra], dim=-1)

    # ---------------------------------------------------------------- per-concept views
    def concept_tensors(self, slot: int) -> dict[str, torch.Tensor]:
        """One concept's tensors (detached, fp32 CPU) — what the artifact stores."""
        return {
            "identifier": self.identifier[slot].detach().float().cpu().clone(),
            "und_tokens": self.und_tokens[slot].detach().float().cpu().clone(),
            "gen_tokens": self.gen_tokens[slot].detach().float().cpu().clone(),
            "identifier_output": self.identifier_output[slot].detach().float().cpu().clone(),
        }

    @torch.no_grad()
    def load_concept(self, slot: int, tensors: dict[str, torch.Tensor]) -> None:
        for name in ("identifier", "und_tokens", "gen_tokens", "identifier_output"):
            target = getattr(self, name)[slot]
            value = tensors[name].to(target.dtype)
            if value.shape != target.shape:
                raise ValueError(
                    f"concept tensor {name!r} has shape {tuple(value.shape)}, this bank expects {tuple(target.shape)} "
                    f"(mode={self.mode}, Nu={self.num_und}, Ng={self.num_gen}, D={self.hidden_size})"
                )
            target.copy_(value)
