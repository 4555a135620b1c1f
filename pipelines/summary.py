"""The job summary: every concept ends up done, skipped, quarantined or failed — with its reason."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, Field

Outcome = Literal["done", "skipped", "quarantined", "failed"]


class ConceptOutcome(BaseModel):
    concept_key: str
    outcome: Outcome
    reason: str = ""  # why it failed, was quarantined, or stays a candidate (the gate)
    why: str = ""  # why it was trained or skipped
    model_name: str | None = None
    version: str | None = None
    promoted: bool | None = None
    metrics: dict[str, float] = Field(default_factory=dict)


class JobSummary(BaseModel):
    job_id: str
    started_at: datetime
    finished_at: datetime | None = None
    snapshot_uri: str
    config_hash: str
    concepts: list[ConceptOutcome] = Field(default_factory=list)
    quarantined_objects: int = 0

    def add(self, outcome: ConceptOutcome) -> None:
        self.concepts = [c for c in self.concepts if c.concept_key != outcome.concept_key] + [outcome]

    def counts(self) -> dict[str, int]:
        out = {k: 0 for k in ("done", "skipped", "quarantined", "failed")}
        for c in self.concepts:
            out[c.outcome] += 1
        return out

    def finish(self) -> "JobSummary":
        self.finished_at = datetime.now(timezone.utc)
        self.concepts.sort(key=lambda c: (c.outcome, c.concept_key))
        return self

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"

    def to_markdown(self) -> str:
        counts = self.counts()
        lines = [
            f"# Personalization job `{self.job_id}`",
            "",
            f"- snapshot: `{self.snapshot_uri}`",
            f"- config hash: `{self.config_hash}`",
            f"- started {self.started_at:%Y-%m-%d %H:%M:%S} UTC, finished {self.finished_at:%Y-%m-%d %H:%M:%S} UTC" if self.finished_at else f"- started {self.started_at}",
            f"- **{counts['done']} done, {counts['skipped']} skipped, {counts['quarantined']} quarantined, {counts['failed']} failed**"
            f" ({self.quarantined_objects} quarantined objects in total)",
            "",
            "| concept | outcome | model | version | champion | why | reason |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in self.concepts:
            champion = "" if c.promoted is None else ("yes" if c.promoted else "no")
            cells = (c.concept_key, c.outcome, c.model_name or "", c.version or "", champion, c.why, c.reason)
            lines.append("| " + " | ".join(markdown_cell(x) for x in cells) + " |")
        return "\n".join(lines) + "\n"


def markdown_cell(text: str) -> str:
    """Text that stays inside its table cell: no line breaks, no unescaped '|'."""
    return " ".join(str(text).replace("\\", "\\\\").replace("|", "\\|").split())
