"""A concept's lifecycle in the MLflow registry: register a version, move aliases, roll back,
download, delete.

One registered model per concept, ``<prefix>.<tenant>.<concept>``: a version per distinct (data
digest, config hash), alias ``candidate`` on the newest, ``champion`` on the one serving (moved
only when the promotion gate passed). See docs/registry.md.

At registry scale (thousands of concept models) a job looks its concepts up in a few paged searches
(`versions_of`), not one request per concept, and registers several concepts at once
(`register_many`, a bounded thread pool); `register_concept` holds a per-name lock, so a concept
registered twice at once still gets one version.
"""
from __future__ import annotations

import logging
import tempfile
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

import mlflow
from mlflow.exceptions import MlflowException
from PIL import Image

from omnipersona.concepts.artifact import ConceptArtifact
from omnipersona.identity import DEFAULT_REGISTRY_PREFIX, ConceptId, check_name
from pipelines.evaluate.gate import Gate, GateResult
from pipelines.register import names
from pipelines.register.concept_model import (
    CONCEPT_ARTIFACT_KEY,
    concept_folder,
    concept_tags,
    log_concept_model,
    stage_locally,
)
from pipelines.register.connection import MlflowConnection

log = logging.getLogger(__name__)

DEFAULT_REGISTRATION_THREADS = 4  # `mlflow.registration_threads` in the job config
LOOKUP_PAGE_SIZE = 1000  # versions per page of a batched lookup
LOOKUP_FILTER_CHARS = 4000  # names per `name IN (...)` search: the filter travels in a GET request's URL


@dataclass(frozen=True)
class RegistrationResult:
    status: Literal["registered", "already_registered"]
    model_name: str
    version: str
    model_id: str | None
    promoted: bool
    gate: GateResult | None
    run_id: str | None = None  # the registration run that logged the model (None: already registered)
    fresh_run: bool = False  # that run was made by this call (it holds nothing else yet)


@dataclass(frozen=True)
class ModelVersions:
    """The versions of one registered model, as a batched lookup (`ConceptRegistry.versions_of`)
    read them; answers what `find_version` and `latest_version` ask the server one model at a time."""

    name: str
    versions: tuple = ()

    def latest(self):
        """The newest version (None when the model has none, or does not exist)."""
        return max(self.versions, key=lambda v: int(v.version)) if self.versions else None

    def matching(self, data_digest: str, config_hash: str, base_fingerprint: str):
        """The version trained from this data, with this config, on this base, if any (the oldest
        such, as `find_version`)."""
        found = [v for v in self.versions if names.version_matches(v, data_digest, config_hash, base_fingerprint)]
        return min(found, key=lambda v: int(v.version)) if found else None


@dataclass(frozen=True)
class RegistrationRequest:
    """The arguments of one `ConceptRegistry.register_concept` call, for `register_many`."""

    run_id: str
    artifact_path: str | Path
    filesystem: Any | None = None
    metrics: dict[str, float] | None = None
    images: dict[str, Image.Image] | None = None
    gate: Gate | None = None
    data_uri: str | None = None
    base_model_uri: str | None = None


@dataclass(frozen=True)
class RegistrationOutcome:
    """What became of one request of `register_many`: its result, or the exception it raised."""

    request: RegistrationRequest
    result: RegistrationResult | None = None
    error: Exception | None = None


def version_model_id(version) -> str | None:
    """The LoggedModel behind a model version. Versions read over REST carry no ``model_id``
    field (MLflow 3.17), but their source is ``models:/<model id>``."""
    if getattr(version, "model_id", None):
        return version.model_id
    source = version.source or ""
    return source.removeprefix("models:/") if source.startswith("models:/m-") else None


class ConceptRegistry:
    def __init__(self, mlflow_: MlflowConnection, prefix: str = DEFAULT_REGISTRY_PREFIX) -> None:
        self.mlflow = mlflow_
        self.client = mlflow_.client
        self.prefix = check_name(prefix, "registry prefix")
        self._locks_guard = threading.Lock()
        self._name_locks: dict[str, threading.Lock] = {}
        self._job_runs: dict[str, Any] = {}  # job run id -> the run (read once per run)

    def model_name(self, concept: ConceptId) -> str:
        return concept.model_name(self.prefix)

    # ------------------------------------------------------------ registration

    def find_version(self, name: str, data_digest: str, config_hash: str, base_fingerprint: str):
        """The model version trained from this data, with this config, on this base, if any."""
        found = self.mlflow.call("search versions", self.client.search_model_versions,
                                 names.version_filter(name, data_digest, config_hash, base_fingerprint))
        return min(found, key=lambda v: int(v.version)) if found else None

    def latest_version(self, name: str):
        """The newest version of a registered model (None when it has none)."""
        found = self.mlflow.call("list versions", self.client.search_model_versions, f"name = '{name}'")
        return max(found, key=lambda v: int(v.version)) if found else None

    def versions_of(self, model_names: Iterable[str]) -> dict[str, ModelVersions]:
        """Every version of each named registered model, read in a few paged searches
        (``name IN (...)``, as many names per search as fit a URL) instead of one request per model:
        what selecting a job's concepts asks. Every name is a key of the answer; a model that does
        not exist (or has no versions) maps to an empty `ModelVersions`."""
        wanted = list(dict.fromkeys(model_names))
        found: dict[str, list] = {name: [] for name in wanted}
        for chunk in _chunks_by_length(wanted, LOOKUP_FILTER_CHARS):
            filter_string = names.names_filter(chunk)
            token = None
            while True:
                page = self.mlflow.call(
                    "search versions", self.client.search_model_versions, filter_string,
                    max_results=LOOKUP_PAGE_SIZE, order_by=["name ASC", "version_number ASC"], page_token=token,
                )
                for version in page:
                    if version.name in found:
                        found[version.name].append(version)
                token = page.token
                if not token:
                    break
        return {name: ModelVersions(name, tuple(versions)) for name, versions in found.items()}

    def register_concept(
        self,
        run_id: str,
        artifact_path: str | Path,
        *,
        filesystem: Any | None = None,
        metrics: dict[str, float] | None = None,
        images: dict[str, Image.Image] | None = None,
        gate: Gate | None = None,
        data_uri: str | None = None,
        base_model_uri: str | None = None,
    ) -> RegistrationResult:
        """Register the artifact at ``artifact_path`` (local, or on ``filesystem``: a pyarrow
        filesystem such as S3) as a new version of its concept's registered model.

        ``metrics`` (evaluation metrics, final losses) are merged over the manifest's metrics and
        feed the ``gate``: ``champion`` moves to the new version only when the gate passes. A
        (tenant, concept, data digest, config hash, base fingerprint) that already has a version is skipped.
        ``data_uri`` is the concept's upload folder (lineage). ``run_id`` is the job run: the concept
        is logged in a registration run of its own nested under it (its logged model, metrics,
        pictures and dataset input), which the model version points to. ``base_model_uri`` (the
        job's ``model.uri``) is recorded in the served model's config: the base its `predict` loads.
        Safe to call from several threads: calls for the same registered model take turns.
        """
        with tempfile.TemporaryDirectory(prefix="omnipersona-register-") as tmp:
            # Validate where it lives (clear errors for missing or corrupt files), then copy.
            ConceptArtifact.load(artifact_path, filesystem=filesystem)
            local_dir = stage_locally(artifact_path, filesystem, Path(tmp) / CONCEPT_ARTIFACT_KEY)
            artifact = ConceptArtifact.load(local_dir)
            m = artifact.manifest
            name = self.model_name(m.id)
            all_metrics = {**m.metrics, **(metrics or {})}
            with self._lock_for(name):  # one registration of a model at a time: never two versions of one digest
                return self._register_staged(run_id, name, local_dir, artifact, all_metrics, images, gate, data_uri,
                                             base_model_uri)

    def _lock_for(self, name: str) -> threading.Lock:
        with self._locks_guard:
            return self._name_locks.setdefault(name, threading.Lock())

    def _job_run(self, run_id: str):
        """The job run (its experiment and tags are fixed once it exists: read once, not per concept)."""
        with self._locks_guard:
            if run_id in self._job_runs:
                return self._job_runs[run_id]
        run = self.mlflow.call("get run", self.client.get_run, run_id)
        with self._locks_guard:
            self._job_runs[run_id] = run
        return run

    def _register_staged(self, run_id: str, name: str, local_dir: Path, artifact: ConceptArtifact,
                         all_metrics: dict[str, float], images: dict[str, Image.Image] | None, gate: Gate | None,
                         data_uri: str | None, base_model_uri: str | None) -> RegistrationResult:
        m = artifact.manifest
        # One search says both whether this artifact has a version and whether the model has any
        # (then it exists, and `champion` may point at one of them).
        versions = self.versions_of([name])[name]
        existing = versions.matching(m.data_digest, m.training_config_hash, m.base_fingerprint)
        if existing is not None:
            log.info("%s v%s already holds data %s / config %s / base %s: skipped",
                     name, existing.version, m.data_digest, m.training_config_hash, m.base_fingerprint)
            return RegistrationResult("already_registered", name, existing.version, version_model_id(existing), False, None)

        # A model without versions is new, or one an earlier attempt created (and maybe logged a
        # model for): only a model created now cannot have an earlier attempt's logged model.
        created = not versions.versions and self._ensure_registered_model(name, m.id)
        job_run = self._job_run(run_id)
        logged = log_concept_model(self.mlflow, run_id, local_dir, artifact, all_metrics, images or {}, data_uri,
                                   base_model_uri, job_run=job_run, earlier_attempts=not created)
        model_id = logged.model_id
        decision = gate.evaluate(all_metrics) if gate is not None else None
        version_tags = {
            **concept_tags(artifact),
            names.TAG_GATE: "not_evaluated" if decision is None else ("passed" if decision.passed else "failed"),
            names.TAG_GATE_REASONS: "; ".join(decision.reasons) if decision else "",
            names.TAG_JOB_RUN_ID: run_id,
        }
        run_job_id = job_run.data.tags.get(names.RUN_TAG_JOB_ID)
        if run_job_id:
            version_tags[names.TAG_JOB_ID] = run_job_id
        version, _ = self.mlflow.create_once(
            lambda: self.find_version(name, m.data_digest, m.training_config_hash, m.base_fingerprint),
            lambda: self.client.create_model_version(
                name, source=f"models:/{model_id}", run_id=logged.run_id or run_id, tags=version_tags, model_id=model_id
            ),
            f"version of {name}",
            look_first=False,  # looked above, under this model's lock
        )
        self.mlflow.set_alias(name, names.CANDIDATE_ALIAS, version.version)
        promoted = bool(decision and decision.passed)
        if promoted:
            # A model without versions before this one has no champion to remember.
            self._promote(name, version.version, self.champion_version(name) if versions.versions else None)
        elif decision is not None:
            log.info("%s v%s stays a candidate: %s", name, version.version, "; ".join(decision.reasons))
        return RegistrationResult("registered", name, version.version, model_id, promoted, decision,
                                  run_id=logged.run_id, fresh_run=logged.fresh)

    def register_many(
        self,
        requests: Iterable[RegistrationRequest],
        threads: int = DEFAULT_REGISTRATION_THREADS,
        on_done: Callable[[RegistrationOutcome], None] | None = None,
    ) -> list[RegistrationOutcome]:
        """`register_concept` for each request, at most ``threads`` at once (a `RegistrationPool`):
        a registration is a chain of requests to the MLflow server, whose latency threads overlap
        (the server's CPU then bounds the rate). Outcomes come back in the order of the requests; a
        request that raised carries its exception and the others go on. ``on_done`` is called in
        this thread as each one finishes (progress). Idempotent as `register_concept`: the same
        artifact twice, even at once, gives one version. A ``sqlite:`` tracking URI registers one
        at a time."""
        requests = list(requests)
        outcomes: list[RegistrationOutcome | None] = [None] * len(requests)

        def run(request: RegistrationRequest) -> RegistrationOutcome:
            try:
                result = self.register_concept(
                    request.run_id, request.artifact_path, filesystem=request.filesystem, metrics=request.metrics,
                    images=request.images, gate=request.gate, data_uri=request.data_uri,
                    base_model_uri=request.base_model_uri,
                )
                return RegistrationOutcome(request, result)
            except Exception as exc:  # noqa: BLE001 - reported per request, the others go on
                log.warning("registering %s failed: %s: %s", request.artifact_path, type(exc).__name__, exc)
                return RegistrationOutcome(request, error=exc)

        def finish(i: int, outcome: RegistrationOutcome) -> None:
            outcomes[i] = outcome
            if on_done is not None:
                on_done(outcome)

        with RegistrationPool(self.mlflow, threads, on_done=finish) as pool:
            for i, request in enumerate(requests):
                pool.submit(i, lambda request=request: run(request))
        return outcomes  # type: ignore[return-value]

    def _ensure_registered_model(self, name: str, concept: ConceptId) -> bool:
        """Create the concept's registered model; one that exists already is taken as found (the
        create is the first request: a model without versions is most often new). Returns whether
        this call created it."""
        def create():
            return self.client.create_registered_model(
                name, tags={names.TAG_TENANT: concept.tenant, names.TAG_CONCEPT: concept.concept},
                description=f"OmniPersona concept tokens of {concept.key}",
            )

        _, created = self.mlflow.create_once(lambda: self._get_registered_model(name), create, f"registered model {name}",
                                             look_first=False)
        return created

    def _get_registered_model(self, name: str):
        try:
            return self.client.get_registered_model(name)
        except MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise

    # ------------------------------------------------------------ aliases

    def _alias_version(self, name: str, alias: str):
        try:
            return self.client.get_model_version_by_alias(name, alias)
        except MlflowException as e:
            if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise

    def champion_version(self, name: str) -> str | None:
        version = self.mlflow.call("get champion", self._alias_version, name, names.CHAMPION_ALIAS)
        return version.version if version is not None else None

    def promote(self, name: str, version: str | int) -> None:
        """Point ``champion`` at ``version``, remembering the champion it replaces."""
        self._promote(name, str(version), self.champion_version(name))

    def _promote(self, name: str, version: str, current: str | None) -> None:
        if current == version:
            return
        if current is not None:
            self.mlflow.call("tag previous champion", self.client.set_model_version_tag,
                             name, version, names.TAG_PREVIOUS_CHAMPION, current)
        self.mlflow.set_alias(name, names.CHAMPION_ALIAS, version)
        log.info("%s: champion %s -> %s", name, current, version)

    def rollback(self, name: str) -> str:
        """Move ``champion`` back to the champion it replaced; returns that version."""
        current = self.mlflow.call("get champion", self._alias_version, name, names.CHAMPION_ALIAS)
        if current is None:
            raise LookupError(f"{name} has no champion to roll back")
        previous = current.tags.get(names.TAG_PREVIOUS_CHAMPION)
        if not previous:
            raise LookupError(f"{name} v{current.version} replaced no earlier champion: nothing to roll back to")
        self.mlflow.call("get version", self.client.get_model_version, name, previous)  # fails clearly if deleted
        self.mlflow.set_alias(name, names.CHAMPION_ALIAS, previous)
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.mlflow.call("tag rolled back", self.client.set_model_version_tag, name, current.version, names.TAG_ROLLED_BACK_AT, now)
        self.mlflow.call("tag rollback", self.client.set_registered_model_tag,
                         name, names.TAG_LAST_ROLLBACK, f"{current.version} -> {previous}")
        log.info("%s: rolled champion back %s -> %s", name, current.version, previous)
        return previous

    # ------------------------------------------------------------ lookup and deletion

    def download(self, concept: ConceptId, dst_dir: str | Path, alias: str | None = names.CHAMPION_ALIAS,
                 version: str | int | None = None) -> Path:
        """Download the version behind ``models:/<name>@<alias>`` (or ``/<version>``) and return the
        concept artifact folder inside it (load it with ``ConceptArtifact.load(folder, expected_fingerprint=...)``)."""
        name = self.model_name(concept)
        if version is None:
            found = self.mlflow.call("resolve alias", self._alias_version, name, alias)
            if found is None:
                raise LookupError(f"models:/{name}@{alias} does not exist")
            version = found.version
        # Resolve with our client: MLflow's models:/ resolution would use the global registry URI.
        source = self.mlflow.call("download uri", self.client.get_model_version_download_uri, name, str(version))
        local = self.mlflow.call("download", mlflow.artifacts.download_artifacts, artifact_uri=source,
                                 dst_path=str(dst_dir), tracking_uri=self.mlflow.tracking_uri)
        return concept_folder(local)

    def delete_concept(self, concept: ConceptId) -> list[str]:
        """The MLflow part of deleting a concept, stopping at the first error: the registered model
        (all versions and aliases), the logged models (files, then the model) and the registration
        runs (files, then the run). Returns the deleted logged-model ids; deleting twice is a no-op.
        Runs and logged models are soft-deleted: `mlflow gc` removes their rows. `pipelines.delete`
        does this and every other store, step by step, with a report of what is left."""
        from pipelines.register.deletion import MlflowConceptRecords

        records = MlflowConceptRecords(self.mlflow, concept, self.model_name(concept))
        for found in records.registered_model():
            records.delete_registered_model(found)
        models = records.logged_models()
        for found in models:
            records.purge_logged_model(found)
        for found in records.concept_runs():
            records.purge_run(found)
        return [found.ref[0] for found in models]


class RegistrationPool:
    """Registrations on at most ``threads`` threads of their own while the thread that submits them
    goes on (the job's stage evaluates the next concept meanwhile): ``submit(key, fn)`` queues
    ``fn()``; what it returns reaches ``on_done(key, value)`` in the submitting thread, in the order
    they finish, whenever that thread calls `submit`, `collect` or `join` (leaving the ``with``
    block joins). ``fn`` reports its own failures in what it returns: an exception it lets through
    propagates from there. ``backlog`` bounds the submitted registrations not yet started (None: no
    bound): `submit` then waits for one to finish, so a producer faster than the registry does not
    queue every concept's pictures in memory. A ``sqlite:`` tracking URI (this process writes the
    database itself, and sqlite takes one writer) gets one thread. Interrupted (an exception in
    the ``with`` block), what has not started never starts and what runs is waited for."""

    def __init__(self, mlflow_: MlflowConnection, threads: int = DEFAULT_REGISTRATION_THREADS,
                 on_done: Callable[[Any, Any], None] | None = None, backlog: int | None = None) -> None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        if mlflow_.tracking_uri.startswith("sqlite:") and threads > 1:
            log.info("tracking URI %s is a sqlite file: registering one concept at a time", mlflow_.tracking_uri)
            threads = 1
        self.mlflow = mlflow_
        self.threads = threads
        self.on_done = on_done
        self.backlog = backlog
        self._executor: ThreadPoolExecutor | None = None
        self._pending: dict[Future, Any] = {}

    def submit(self, key: Any, fn: Callable[[], Any]) -> None:
        self.collect()
        while self.backlog is not None and len(self._pending) >= self.threads + self.backlog:
            self.collect(wait=True)
        if self._executor is None:
            _ = self.mlflow.experiment_id  # resolved once, before the threads would race to create it
            self._executor = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="register")
        self._pending[self._executor.submit(fn)] = key

    def collect(self, wait: bool = False) -> int:
        """Hand the finished registrations to ``on_done`` (with ``wait``: at least one, unless none
        is pending); returns how many."""
        if not self._pending:
            return 0
        done, _ = futures_wait(self._pending, timeout=None if wait else 0, return_when=FIRST_COMPLETED)
        for future in done:
            key = self._pending.pop(future)
            value = future.result()
            if self.on_done is not None:
                self.on_done(key, value)
        return len(done)

    def join(self) -> None:
        """Wait for every submitted registration (each handed to ``on_done``)."""
        while self._pending:
            self.collect(wait=True)

    def __enter__(self) -> "RegistrationPool":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.join()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True, cancel_futures=True)


def _chunks_by_length(items: list[str], max_chars: int) -> Iterable[list[str]]:
    """Consecutive runs of ``items`` whose quoted, comma-separated lengths stay under ``max_chars``
    (at least one item each)."""
    chunk: list[str] = []
    size = 0
    for item in items:
        cost = len(item) + 4  # quotes, comma, space
        if chunk and size + cost > max_chars:
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += cost
    if chunk:
        yield chunk
