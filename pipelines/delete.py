"""Removing a concept completely, and saying exactly what was removed and what is left.

A user's right to be forgotten: after `delete_concept` nothing trained from or derived from the
concept's uploads remains in any store a job writes. `concept_stores` lists those stores in one
place, in the order they are purged:

 1. mlflow.registered_model   `<prefix>.<tenant>.<concept>`: versions, tags, aliases (it stops serving)
 2. mlflow.logged_models      the concept's LoggedModels: package files, then the model (soft delete)
 3. mlflow.concept_runs       its registration runs (children of job runs): pictures, then the run
                              (soft delete; metrics, params, tags and dataset input go at `mlflow gc`)
 4. mlflow.job_run_summaries  the summaries logged on job runs: rewritten without the concept's rows
 5. mlflow.job_run_legacy     what job runs held before registration runs (pictures; dataset inputs)
 6. artifacts                 `<artifacts.root>/<tenant>/<concept>/` (every trained version)
 7. eval_sets                 `<evaluation.eval_sets_uri>/<tenant>/<concept>/`
 8. checkpoints               Ray Train runs under the runs root of every job that had the concept,
                              and any run whose JSON files (`progress.json`, the run log) name it (a
                              pack's checkpoint holds the tokens of all its concepts; runs only serve
                              resuming and auditing that run)
 9. examples                  `examples/` of every job that had the concept: the whole folder, because
                              other concepts' rows hold this concept's photos as negatives
10. summaries                 every `summary.json` / `summary.md` under the work root: rewritten
                              without the concept's rows
11. quarantine                every `quarantine.json` under the work root: rewritten without its rows
12. uploads                   `<ingest.uploads_uri>/<tenant>/<concept>/` (only with purge_uploads)

Each step finds what is there, purges it item by item, then looks again: what it finds the second
time is reported as left. A step's error never stops the other steps, except where a later step
would destroy what an earlier, failed one needs to find its items again (the summaries and example
partitions say which jobs, hence which checkpoints, had the concept); those later steps are then
reported as not attempted. Every step can run again: what is gone is not found again, so rerunning
the deletion finishes it. MLflow keeps the rows of soft-deleted runs and logged models until
`mlflow gc` (docs/deployment.md); the report lists them.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import pyarrow.fs as pafs

from omnipersona.identity import ConceptId
from pipelines.register import ConceptRegistry
from pipelines.register.deletion import Found, MlflowConceptRecords
from pipelines.register.retry import is_transient
from pipelines.storage import StorageConfig, delete_prefix, filesystem_for, read_bytes, write_bytes_atomic
from pipelines.train.example_store import PARTITION, concept_part

log = logging.getLogger("omnipersona.delete")

SUMMARY_FILES = ("summary.json", "summary.md")
QUARANTINE_FILE = "quarantine.json"
REDACTED = "[deleted concept]"


# ---------------------------------------------------------------- the report


@dataclass
class StepReport:
    store: str
    what: str
    action: str = "deleted"  # or "redacted"
    done: list[str] = field(default_factory=list)  # items removed (or rewritten)
    left: list[str] = field(default_factory=list)  # items still there afterwards
    errors: list[str] = field(default_factory=list)
    not_attempted: str | None = None  # why the step did not run

    @property
    def ok(self) -> bool:
        return not self.left and not self.errors and self.not_attempted is None


@dataclass
class DeletionReport:
    concept_key: str
    steps: list[StepReport] = field(default_factory=list)
    awaiting_gc: dict[str, list[str]] = field(default_factory=dict)  # MLflow rows `mlflow gc` removes
    uploads_kept: str | None = None  # the upload folder, when it exists and was not to be purged

    @property
    def complete(self) -> bool:
        return all(s.ok for s in self.steps)

    @property
    def found_anything(self) -> bool:
        return any(s.done or s.left or s.errors for s in self.steps)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "complete": self.complete, "found_anything": self.found_anything}, sort_keys=True)

    def to_text(self) -> str:
        lines = [f"delete {self.concept_key}:"]
        for s in self.steps:
            state = "ok" if s.ok else ("NOT ATTEMPTED" if s.not_attempted else "FAILED")
            lines.append(f"  [{state}] {s.store} ({s.what}): {len(s.done)} {s.action}, {len(s.left)} left")
            lines += [f"      {s.action}: {item}" for item in s.done]
            lines += [f"      LEFT: {item}" for item in s.left]
            lines += [f"      error: {e}" for e in s.errors]
            if s.not_attempted:
                lines.append(f"      not attempted: {s.not_attempted}")
        if self.uploads_kept:
            lines.append(f"  uploads kept (not asked to purge them): {self.uploads_kept}")
        pending = [f"{kind}: {', '.join(ids)}" for kind, ids in sorted(self.awaiting_gc.items()) if ids]
        if pending:
            lines.append("  MLflow keeps the rows of these soft-deleted records until `mlflow gc --tracking-uri <url> "
                         "--backend-store-uri <database uri>` (docs/deployment.md):")
            lines += [f"      {p}" for p in pending]
        if not self.found_anything and self.complete:
            kept = f" (apart from its uploads, kept: add --purge-uploads)" if self.uploads_kept else ""
            lines.append(f"  nothing of {self.concept_key} found in any store{kept}")
        elif self.complete:
            lines.append(f"  {self.concept_key} deleted completely")
        else:
            lines.append(f"  INCOMPLETE: {self.concept_key} is not deleted completely; fix the errors and run delete again")
        return "\n".join(lines)


# ---------------------------------------------------------------- stores


@dataclass
class Store:
    """One place a job writes for a concept: what is there now, and how to remove one item."""

    name: str
    what: str
    find: Callable[[], list[Found]]
    purge: Callable[[Found], None]
    service: str  # stores of one service fail together when it is unreachable
    action: str = "deleted"
    needs: tuple[str, ...] = ()  # steps that must have succeeded first


def describe(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:500]}"


def _exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def _children(fs: pafs.FileSystem, path: str) -> list[pafs.FileInfo]:
    return list(fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True)))


def folder_store(name: str, what: str, uri: str, key: str, storage: StorageConfig | None) -> Store:
    """`<uri>/<tenant>/<concept>/`, deleted as a whole."""
    fs, root = filesystem_for(uri, storage)
    folder = f"{root.rstrip('/')}/{key}"
    return Store(name, what, lambda: [Found(folder, folder)] if _exists(fs, folder) else [],
                 lambda found: delete_prefix(fs, found.ref), service=uri)


@dataclass(frozen=True)
class ConceptNames:
    """The concept's names in text: its key and its registered model name, as whole names
    (`acme/rex` is not found in `acme/rex2`)."""

    pattern: re.Pattern

    def __call__(self, text: str) -> bool:
        return bool(self.pattern.search(text))

    def redact(self, text: str) -> str:
        return self.pattern.sub(REDACTED, text)


def mentions(concept: ConceptId, prefix: str) -> ConceptNames:
    names = (concept.key, f"{prefix}.{concept.tenant}.{concept.concept}")
    return ConceptNames(re.compile("|".join(f"(?<![a-z0-9_-]){re.escape(n)}(?![a-z0-9_-])" for n in names)))


def redact_json(text: str, concept: ConceptId, named: ConceptNames) -> str:
    """The document without the concept's rows (objects whose `concept_key` is its key, or whose
    `tenant` and `concept` are its names); any other string naming it has the name replaced."""

    def is_row(x: Any) -> bool:
        return isinstance(x, dict) and (x.get("concept_key") == concept.key
                                        or (x.get("tenant"), x.get("concept")) == (concept.tenant, concept.concept))

    def strip(x: Any) -> Any:
        if isinstance(x, list):
            return [strip(i) for i in x if not is_row(i)]
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items()}
        return named.redact(x) if isinstance(x, str) else x

    return json.dumps(strip(json.loads(text)), indent=2, sort_keys=True) + "\n"


def redact_markdown(text: str, summary_json: str | None, named: ConceptNames) -> str:
    """A summary's markdown: rendered again from its (redacted) JSON when there is one, so counts
    follow; else without the lines naming the concept."""
    if summary_json is not None:
        from pipelines.summary import JobSummary

        try:
            return JobSummary.model_validate_json(summary_json).to_markdown()
        except ValueError:
            pass  # not a job summary: fall back to dropping lines
    return "".join(line for line in text.splitlines(keepends=True) if not named(line))


def redacted_files(load: Callable[[str], str], paths: list[str], concept: ConceptId, named: ConceptNames) -> dict[str, str]:
    """New text for each file of `paths` (summaries, quarantine reports) that names the concept;
    a summary.md is rendered from its sibling summary.json."""
    texts = {p: load(p) for p in paths}
    out = {}
    for path, text in texts.items():
        if path.endswith(".json") and named(text):
            out[path] = redact_json(text, concept, named)
    for path, text in texts.items():
        if path.endswith(".md") and named(text):
            sibling = path[: -len(".md")] + ".json"
            source = out.get(sibling, texts.get(sibling))
            out[path] = redact_markdown(text, source, named)
    return out


class WorkFolder:
    """The jobs' work folders (`<work root>/<job id>/`): examples, summaries, quarantine reports."""

    def __init__(self, work_root: str, storage: StorageConfig | None, concept: ConceptId, named: ConceptNames):
        self.fs, self.root = filesystem_for(work_root, storage)
        self.concept, self.named = concept, named
        self.partition = f"{PARTITION}={concept_part(concept.key)}"

    def jobs(self) -> list[str]:
        return sorted(i.base_name for i in _children(self.fs, self.root) if i.type == pafs.FileType.Directory)

    def report_files(self, names: tuple[str, ...]) -> list[str]:
        """Every file with one of these names under the work root (example folders are not walked)."""
        out = []

        def walk(path: str, depth: int) -> None:
            for info in _children(self.fs, path):
                if info.type == pafs.FileType.Directory and not (depth == 1 and info.base_name == "examples"):
                    walk(info.path, depth + 1)
                elif info.is_file and info.base_name in names:
                    out.append(info.path)

        walk(self.root, 0)
        return sorted(out)

    def read(self, path: str) -> str:
        return read_bytes(self.fs, path).decode("utf-8")

    def jobs_with_concept(self) -> list[str]:
        """Jobs whose examples hold the concept's partition, or whose summaries or quarantine report
        name it (its snapshot had it: other concepts' examples may hold its photos as negatives)."""
        jobs = {job for job in self.jobs() if _exists(self.fs, f"{self.root}/{job}/examples/{self.partition}")}
        for path in self.report_files(SUMMARY_FILES + (QUARANTINE_FILE,)):
            if self.named(self.read(path)):
                jobs.add(path[len(self.root) + 1:].split("/", 1)[0])
        return sorted(jobs)

    # -------- examples
    def examples(self) -> list[Found]:
        out = []
        for job in self.jobs_with_concept():
            folder = f"{self.root}/{job}/examples"
            if _exists(self.fs, folder):
                out.append(Found(folder, folder))
        return out

    def delete(self, found: Found) -> None:
        delete_prefix(self.fs, found.ref)

    # -------- summaries and quarantine reports
    def reports(self, names: tuple[str, ...]) -> list[Found]:
        paths = self.report_files(names)
        changed = redacted_files(self.read, paths, self.concept, self.named)
        return [Found(p, (p, changed[p])) for p in sorted(changed)]

    def rewrite(self, found: Found) -> None:
        path, text = found.ref
        write_bytes_atomic(self.fs, path, text.encode("utf-8"))


class TrainingRuns:
    """Ray Train runs under the runs root, `<job id>-<digest>/`: checkpoints (`checkpoint_*/`, with
    `progress.json` naming the pack's concepts) and the run's own JSON records (the run log)."""

    MAX_RECORD_BYTES = 1 << 20

    def __init__(self, runs_root: str, storage: StorageConfig | None, concept: ConceptId, jobs: Callable[[], list[str]],
                 named: ConceptNames):
        self.fs, self.root = filesystem_for(runs_root, storage)
        self.concept, self.jobs, self.named = concept, jobs, named

    def _names_concept(self, run_path: str) -> bool:
        """Whether a JSON file of the run (progress.json, run log records) names the concept."""
        for info in self.fs.get_file_info(pafs.FileSelector(run_path, recursive=True, allow_not_found=True)):
            if info.is_file and info.base_name.endswith(".json") and info.size <= self.MAX_RECORD_BYTES:
                if self.named(read_bytes(self.fs, info.path).decode("utf-8", errors="replace")):
                    return True
        return False

    def find(self) -> list[Found]:
        runs = [i for i in _children(self.fs, self.root) if i.type == pafs.FileType.Directory]
        if not runs:
            return []
        of_jobs = [re.compile(rf"^{re.escape(job)}-[0-9a-f]+$") for job in self.jobs()]
        return [Found(r.path, r.path) for r in runs
                if any(p.match(r.base_name) for p in of_jobs) or self._names_concept(r.path)]

    def delete(self, found: Found) -> None:
        delete_prefix(self.fs, found.ref)


def concept_stores(
    concept: ConceptId,
    *,
    registry: ConceptRegistry,
    artifact_root: str,
    work_root: str,
    runs_root: str,
    storage: StorageConfig | None = None,
    eval_sets_uri: str | None = None,
    uploads_uri: str | None = None,
) -> list[Store]:
    """Every store a job writes for a concept, in the order `delete_concept` purges them."""
    mlflow = MlflowConceptRecords(registry.mlflow, concept, registry.model_name(concept))
    named = mentions(concept, registry.prefix)
    work = WorkFolder(work_root, storage, concept, named)
    job_runs_cache: list = []

    def job_runs() -> list:
        if not job_runs_cache:
            job_runs_cache.append(mlflow.job_runs())
        return job_runs_cache[0]

    def job_run_summaries() -> list[Found]:
        files = mlflow.job_run_summaries(job_runs())
        by_key = {f"{run.info.run_id}/{path}": (run, path) for run, path in files}
        changed = redacted_files(lambda k: mlflow.read_text(*by_key[k]), sorted(by_key), concept, named)
        return [Found(f"run {k.split('/', 1)[0]}: {k.split('/', 1)[1]}", (*by_key[k], text)) for k, text in sorted(changed.items())]

    tracking = f"mlflow:{registry.mlflow.tracking_uri}"
    stores = [
        Store("mlflow.registered_model", "registered model, versions, aliases", mlflow.registered_model,
              mlflow.delete_registered_model, tracking),
        Store("mlflow.logged_models", "logged models and their package files", mlflow.logged_models,
              mlflow.purge_logged_model, tracking),
        Store("mlflow.concept_runs", "registration runs: metrics, pictures, dataset input", mlflow.concept_runs,
              mlflow.purge_run, tracking),
        Store("mlflow.job_run_summaries", "summaries logged on job runs", job_run_summaries,
              lambda f: mlflow.write_text(*f.ref), tracking, action="redacted"),
        Store("mlflow.job_run_legacy", "pictures and dataset inputs on job runs (before registration runs)",
              lambda: mlflow.legacy_job_run_records(job_runs()), mlflow.purge_legacy_job_run_record, tracking),
        folder_store("artifacts", "trained concept artifacts", artifact_root, concept.key, storage),
    ]
    if eval_sets_uri:
        stores.append(folder_store("eval_sets", "held-out evaluation set", eval_sets_uri, concept.key, storage))
    training = TrainingRuns(runs_root, storage, concept, work.jobs_with_concept, named)
    stores += [
        Store("checkpoints", "Ray Train runs (checkpoints) of the jobs that had the concept", training.find, training.delete,
              runs_root),
        Store("examples", "training examples of the jobs that had the concept", work.examples, work.delete, work_root,
              needs=("checkpoints",)),
        Store("summaries", "job summaries in the work folders", lambda: work.reports(SUMMARY_FILES), work.rewrite, work_root,
              action="redacted", needs=("checkpoints", "examples")),
        Store("quarantine", "quarantine reports in the work folders", lambda: work.reports((QUARANTINE_FILE,)), work.rewrite,
              work_root, action="redacted", needs=("checkpoints", "examples")),
    ]
    if uploads_uri is not None:
        stores.append(folder_store("uploads", "raw uploads", uploads_uri, concept.key, storage))
    return stores


# ---------------------------------------------------------------- running the steps


def run_step(store: Store) -> tuple[StepReport, BaseException | None]:
    """Find, purge item by item, find again. Returns the step and the error of the first listing
    (None when the store could be listed)."""
    step = StepReport(store.name, store.what, store.action)
    try:
        found = store.find()
    except Exception as e:  # noqa: BLE001 - reported: the step failed, the store is not known to be clean
        step.errors.append(f"could not list: {describe(e)}")
        step.left.append(f"unknown: {store.name} could not be listed")
        return step, e
    for item in found:
        try:
            store.purge(item)
        except Exception as e:  # noqa: BLE001 - reported per item; the item is listed as left below
            step.errors.append(f"{item.label}: {describe(e)}")
    try:
        left = {item.label for item in store.find()}
    except Exception as e:  # noqa: BLE001 - reported
        step.errors.append(f"could not check what is left: {describe(e)}")
        left = {item.label for item in found}
    step.done = [item.label for item in found if item.label not in left]
    step.left = sorted(left)
    return step, None


def delete_concept(concept: ConceptId, stores: list[Store]) -> DeletionReport:
    """Run every store's step in order (see the module docstring); a store's failure never raises.
    When a service cannot be reached, its later stores are reported as not attempted."""
    report = DeletionReport(concept_key=concept.key)
    unreachable: dict[str, str] = {}
    results: dict[str, StepReport] = {}
    for store in stores:
        blocked = [n for n in store.needs if n in results and not results[n].ok]
        unknown = [f"unknown: {store.name} not checked"]
        if store.service in unreachable:
            step = StepReport(store.name, store.what, store.action, left=unknown, not_attempted=unreachable[store.service])
        elif blocked:
            step = StepReport(store.name, store.what, store.action, left=unknown,
                              not_attempted=f"{', '.join(blocked)} did not finish, and this step would remove what tells "
                                            "which jobs had the concept: run delete again")
        else:
            step, listing_error = run_step(store)
            if listing_error is not None and is_transient(listing_error):
                unreachable[store.service] = f"{store.service} unreachable: {describe(listing_error)}"
        results[store.name] = step
        report.steps.append(step)
        log.info("%s %s: %d %s, %d left%s", concept.key, store.name, len(step.done), store.action, len(step.left),
                 f"; {step.not_attempted or ''}{step.errors}" if not step.ok else "")
    return report


def awaiting_gc(registry: ConceptRegistry, concept: ConceptId, report: DeletionReport) -> dict[str, list[str]]:
    """MLflow rows `mlflow gc` still has to remove: the concept's deleted registration runs, and the
    logged models this deletion soft-deleted (MLflow lists no deleted logged models)."""
    records = MlflowConceptRecords(registry.mlflow, concept, registry.model_name(concept))
    models = [label.split()[2] for s in report.steps if s.store == "mlflow.logged_models" for label in s.done]
    return {"runs": records.deleted_concept_runs(), "logged_models": sorted(models)}
