"""The job summary: every concept ends up done, skipped, quarantined, failed, pending or pending
registration — with its reason."""
from __future__ import annotations

import json
import re
import unicodedata
from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, Field

# pending: the job stopped before it reached the concept (it is picked up by the next run).
# pending_registration: trained and exported, but MLflow could not be reached to register it; the
# next run registers the artifact without training it again (docs/faults.md, "Service faults").
Outcome = Literal["done", "skipped", "quarantined", "failed", "pending", "pending_registration"]
OUTCOMES: tuple[str, ...] = ("done", "skipped", "quarantined", "failed", "pending", "pending_registration")
INCOMPLETE: tuple[str, ...] = ("failed", "pending", "pending_registration")  # a rerun has work left


class ConceptOutcome(BaseModel):
    concept_key: str
    outcome: Outcome
    reason: str = ""  # why it failed, was quarantined, or stays a candidate (the gate)
    why: str = ""  # why it was trained or skipped
    notes: list[str] = Field(default_factory=list)  # what ingest capped or left out (e.g. images used per epoch)
    model_name: str | None = None
    version: str | None = None
    promoted: bool | None = None
    metrics: dict[str, float] = Field(default_factory=dict)


class DriverUse(BaseModel):
    """What the job's driver process used: its peak resident memory, and whether it loaded the base
    model's weights (only evaluation in the driver does; scale tests and benchmarks read both)."""

    peak_rss_mb: float
    base_weights_loaded: bool

    @classmethod
    def now(cls, base_weights_loaded: bool) -> "DriverUse":
        import resource

        return cls(peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
                   base_weights_loaded=base_weights_loaded)


class JobSummary(BaseModel):
    job_id: str
    run_id: str | None = None  # this submission's MLflow run (also its folder under <work>/<job id>/runs/)
    started_at: datetime
    finished_at: datetime | None = None
    snapshot_uri: str
    config_hash: str
    concepts: list[ConceptOutcome] = Field(default_factory=list)
    quarantined_objects: int = 0
    error: str | None = None  # why the job stopped early, when it did
    # What could not be recorded in MLflow (the job run's summary, its end state) when the server
    # was down at the end: this summary, in the work store, is then the only record of the run.
    mlflow_error: str | None = None
    driver: DriverUse | None = None

    @property
    def complete(self) -> bool:
        """Every concept done, skipped or quarantined (bad input is reported, not a failed job)."""
        return self.error is None and not any(c.outcome in INCOMPLETE for c in self.concepts)

    def add(self, outcome: ConceptOutcome) -> None:
        self.concepts = [c for c in self.concepts if c.concept_key != outcome.concept_key] + [outcome]

    def counts(self) -> dict[str, int]:
        out = {k: 0 for k in OUTCOMES}
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
            f"# Personalization job {markdown_code(self.job_id)}",
            "",
            f"- run: {markdown_code(self.run_id)}" if self.run_id else "- run: (no MLflow run)",
            f"- snapshot: {markdown_code(self.snapshot_uri)}",
            f"- config hash: {markdown_code(self.config_hash)}",
            f"- started {self.started_at:%Y-%m-%d %H:%M:%S} UTC, finished {self.finished_at:%Y-%m-%d %H:%M:%S} UTC" if self.finished_at else f"- started {self.started_at}",
            f"- **{counts['done']} done, {counts['skipped']} skipped, {counts['quarantined']} quarantined, {counts['failed']} failed,"
            f" {counts['pending']} pending"
            + (f", {counts['pending_registration']} pending registration" if counts["pending_registration"] else "")
            + f"** ({self.quarantined_objects} quarantined objects in total)",
            *([f"- **the job stopped early**: {markdown_cell(self.error)}"] if self.error else []),
            *([f"- **not recorded in MLflow**: {markdown_cell(self.mlflow_error)}"] if self.mlflow_error else []),
            "",
            "| concept | outcome | model | version | champion | why | reason |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in self.concepts:
            champion = "" if c.promoted is None else ("yes" if c.promoted else "no")
            why = "; ".join([c.why, *c.notes]) if c.why else "; ".join(c.notes)
            cells = (c.concept_key, c.outcome, c.model_name or "", c.version or "", champion, why, c.reason)
            lines.append("| " + " | ".join(markdown_cell(x) for x in cells) + " |")
        return "\n".join(lines) + "\n"


# Backslash-escaped wherever they are printed: what could start emphasis, code, links, HTML, tables.
_MARKDOWN_PUNCTUATION = re.compile(r"([\\`*_\[\]<>|~&#!])")
_INVISIBLE = ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")
MAX_CELL_CHARS = 1000


def _one_line(text: object) -> str:
    """`text` on one line: whitespace runs (newlines included) become one space, and control or
    invisible characters (ANSI escapes, bidi overrides, zero-width) are shown as `(U+XXXX)`."""
    flat = " ".join(str(text).split())
    if len(flat) > MAX_CELL_CHARS:
        flat = flat[:MAX_CELL_CHARS] + "..."
    return "".join(f"(U+{ord(ch):04X})" if unicodedata.category(ch) in _INVISIBLE else ch for ch in flat)


def markdown_cell(text: object) -> str:
    """Text that stays inside its table cell and prints as itself: one line, markdown and HTML
    punctuation escaped (no '|' ends the cell, no `<tag>`, link or emphasis forms), control and
    invisible characters made visible. User text reaches the summary through quarantine messages."""
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", _one_line(text))


def markdown_code(text: object) -> str:
    """`text` as one inline code span (job ids, run ids, URIs): nothing inside is markdown, and the
    fence is longer than any run of backticks in the text."""
    flat = _one_line(text)
    fence = "`" * (max((len(run) for run in re.findall(r"`+", flat)), default=0) + 1)
    pad = " " if flat.startswith("`") or flat.endswith("`") or not flat.strip() else ""
    return f"{fence}{pad}{flat}{pad}{fence}"


def read_run_summaries(fs, runs_dir: str) -> list[JobSummary]:
    """Every run's summary of a job (`<work>/<job id>/runs/*/summary.json`), oldest first."""
    from pipelines.storage import list_files, read_bytes

    found = [JobSummary.model_validate_json(read_bytes(fs, f.path))
             for f in list_files(fs, runs_dir) if f.path.endswith("/summary.json")]
    return sorted(found, key=lambda s: s.started_at)


def runs_table(summaries: list[JobSummary]) -> str:
    """One line per run of a job: when, what it did, whether it completed."""
    lines = ["| run | started (UTC) | done | skipped | quarantined | failed | pending | state |", "|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        c = s.counts()
        state = "complete" if s.complete else ("stopped: " + s.error if s.error else "incomplete")
        lines.append("| " + " | ".join(markdown_cell(x) for x in (
            s.run_id or "", f"{s.started_at:%Y-%m-%d %H:%M:%S}", c["done"], c["skipped"], c["quarantined"], c["failed"],
            c["pending"] + c.get("pending_registration", 0), state)) + " |")
    return "\n".join(lines) + "\n"
