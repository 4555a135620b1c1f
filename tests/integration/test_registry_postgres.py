"""The concept registry on an MLflow server backed by PostgreSQL, as production runs it
(tests/services/postgres.py: an embedded PostgreSQL 16), and what registry scale needs: one batched
lookup for a job's selection, several registrations at once that still give one version each."""
from __future__ import annotations

import threading
import time
import uuid
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest
import torch
from mlflow import MlflowClient
from pydantic import ValidationError

from omnipersona.concepts.artifact import ConceptArtifact
from omnipersona.identity import ConceptId
from pipelines.config import MlflowSettings
from pipelines.register import ConceptRegistry, JobRuns, JobRunSpec, MlflowConnection, RetryPolicy, names
from pipelines.register import registry as registry_module
from pipelines.register.registry import RegistrationRequest
from pipelines.summary import JobSummary
from tests.integration.test_register import GATE, unique, write_artifact

pytestmark = pytest.mark.integration

FINGERPRINT = "fp-tiny"  # what test_register's artifacts were trained on


@pytest.fixture(scope="module")
def registry(mlflow_server_postgres) -> ConceptRegistry:
    # Each test module its own prefix: registered model names are global to the server.
    return ConceptRegistry(MlflowConnection(mlflow_server_postgres.tracking_uri, experiment_name=unique("test-pg"),
                                            retry=RetryPolicy(attempts=2, initial_delay_s=0.1)),
                           prefix=f"pg{uuid.uuid4().hex[:6]}")


@pytest.fixture(scope="module")
def run_id(registry) -> str:
    return JobRuns(registry.mlflow).start(JobRunSpec(
        job_id=unique("job"), snapshot_uri="s3://uploads", snapshot_digest="snap", config_hash="cfg0001",
        base_model_id="bagel-tiny", base_fingerprint=FINGERPRINT, zero_stage=2,
    ))


def test_a_concept_registers_promotes_and_reads_back_and_the_rows_are_in_postgresql(
        registry, run_id, postgres_server, mlflow_server_postgres, tmp_path):
    concept = ConceptId("acme", unique("rex"))
    name = registry.model_name(concept)
    write_artifact(tmp_path / "v1", concept.tenant, concept.concept, "digest1")
    first = registry.register_concept(run_id, tmp_path / "v1", metrics={"recognition_accuracy": 0.9}, gate=GATE,
                                      data_uri=f"s3://uploads/{concept.key}")
    second_artifact = write_artifact(tmp_path / "v2", concept.tenant, concept.concept, "digest2", seed=1)
    second = registry.register_concept(run_id, tmp_path / "v2", metrics={"recognition_accuracy": 0.2}, gate=GATE,
                                       data_uri=f"s3://uploads/{concept.key}")
    assert (first.status, first.version, first.promoted) == ("registered", "1", True)
    assert (second.status, second.version, second.promoted) == ("registered", "2", False)  # the gate failed
    assert registry.champion_version(name) == "1"

    registry.promote(name, "2")
    client = MlflowClient(mlflow_server_postgres.tracking_uri)
    assert client.get_model_version_by_alias(name, names.CHAMPION_ALIAS).version == "2"
    assert client.get_model_version(name, "2").tags[names.TAG_PREVIOUS_CHAMPION] == "1"
    folder = registry.download(concept, tmp_path / "download", alias=names.CHAMPION_ALIAS)
    back = ConceptArtifact.load(folder, expected_fingerprint=FINGERPRINT)
    assert back.manifest.data_digest == "digest2" and torch.equal(back.und_tokens, second_artifact.und_tokens)

    # The MLflow server's rows are in PostgreSQL: read them there, not through MLflow.
    with postgres_server.connect("mlflow") as db:
        assert db.execute("SELECT version()").fetchone()[0].startswith("PostgreSQL 16")
        assert db.execute("SELECT name FROM registered_models WHERE name = %s", (name,)).fetchall() == [(name,)]
        assert db.execute("SELECT version FROM model_versions WHERE name = %s ORDER BY version",
                          (name,)).fetchall() == [(1,), (2,)]
        assert dict(db.execute("SELECT alias, version FROM registered_model_aliases WHERE name = %s",
                               (name,)).fetchall()) == {names.CHAMPION_ALIAS: 2, names.CANDIDATE_ALIAS: 2}
    assert mlflow_server_postgres.backend_store_uri.startswith("postgresql+psycopg://")


def _make_versions(client: MlflowClient, name: str, *tag_sets: dict) -> None:
    """A registered model with one version per tag set (placeholder sources: lookups never read them)."""
    client.create_registered_model(name)
    for tags in tag_sets:
        client.create_model_version(name, source=f"s3://placeholder/{name}", tags=tags, await_creation_for=0)


def _tags(digest: str, recipe: str, fingerprint: str = FINGERPRINT) -> dict:
    return {names.TAG_DATA_DIGEST: digest, names.TAG_CONFIG_HASH: recipe, names.TAG_BASE_FINGERPRINT: fingerprint}


def test_the_batched_lookup_answers_as_the_per_concept_one_in_few_requests(registry, mlflow_server_postgres, monkeypatch):
    client = MlflowClient(mlflow_server_postgres.tracking_uri)
    prefix = f"look{uuid.uuid4().hex[:6]}"
    model = {k: f"{prefix}.t{k % 3}.c{k:02d}" for k in range(12)}
    for k in range(10):  # two unregistered names at the end
        if k % 3 == 0:  # an older recipe, then the current one
            _make_versions(client, model[k], _tags(f"d{k}", "old"), _tags(f"d{k}", "new"))
        elif k % 3 == 1:  # the same digest registered twice (the oldest counts), on another base too
            _make_versions(client, model[k], _tags(f"d{k}", "new"), _tags(f"d{k}", "new"), _tags(f"d{k}", "new", "fp-x"))
        else:  # other data
            _make_versions(client, model[k], _tags("stale", "new"))
    keys = [(model[k], f"d{k}", "new") for k in range(12)]

    searches = []
    search = registry.client.search_model_versions
    monkeypatch.setattr(registry.client, "search_model_versions", lambda *a, **kw: searches.append(kw) or search(*a, **kw))
    found = registry.versions_of([name for name, _, _ in keys])
    assert len(searches) == 1  # twelve models, one request (the per-concept path sends one or two each)

    # Many names: several `name IN (...)` searches; many versions: several pages of each.
    monkeypatch.setattr(registry_module, "LOOKUP_FILTER_CHARS", 100)
    monkeypatch.setattr(registry_module, "LOOKUP_PAGE_SIZE", 2)
    searches.clear()
    paged = registry.versions_of([name for name, _, _ in keys])
    assert len(searches) > 6 and any(kw.get("page_token") for kw in searches)
    monkeypatch.setattr(registry.client, "search_model_versions", search)

    for result in (found, paged):
        assert set(result) == {name for name, _, _ in keys}
        for name, digest, recipe in keys:
            expected_match = registry.find_version(name, digest, recipe, FINGERPRINT)
            expected_latest = registry.latest_version(name)
            match, latest = result[name].matching(digest, recipe, FINGERPRINT), result[name].latest()
            assert (match and match.version) == (expected_match and expected_match.version), name
            assert (latest and latest.version) == (expected_latest and expected_latest.version), name
    assert found[model[1]].matching("d1", "new", FINGERPRINT).version == "1"  # the oldest of two matches
    assert found[model[0]].latest().version == "2" and found[model[11]].versions == ()


def test_select_reads_the_registry_in_one_batched_lookup_and_decides_as_before(
        registry, mlflow_server_postgres, tmp_path, monkeypatch):
    from pipelines.personalize import SKIP_REASON, select
    from pipelines.train.runner import TrainConcept

    client = MlflowClient(mlflow_server_postgres.tracking_uri)
    tenant = unique("sel")
    name = lambda concept: ConceptId(tenant, concept).model_name(registry.prefix)  # noqa: E731
    _make_versions(client, name("same"), _tags("d-same", "recipe-a"))  # skipped
    _make_versions(client, name("data"), _tags("d-old", "recipe-a"))  # data changed since v1
    _make_versions(client, name("recipe"), _tags("d-recipe", "recipe-0"), _tags("d-recipe", "recipe-0"))  # recipe, v2
    _make_versions(client, name("base"), _tags("d-base", "recipe-a", "fp-old"))  # base model changed
    digests = {"same": "d-same", "data": "d-new", "recipe": "d-recipe", "base": "d-base", "new": "d-x", "exported": "d-e"}
    root = tmp_path / "artifacts"
    exported = TrainConcept(ConceptId(tenant, "exported"), "E", "dog", "d-e", "recipe-a", FINGERPRINT)
    write_artifact(root / exported.subpath, tenant, "exported", "d-e", "recipe-a")  # exported, never registered

    ctx = SimpleNamespace(
        cfg=SimpleNamespace(artifacts=SimpleNamespace(root=str(root)), storage=None, train=SimpleNamespace(warm_start=False)),
        registry=registry,
        recipe_hash="recipe-a", base=SimpleNamespace(fingerprint=FINGERPRINT),
        summary=JobSummary(job_id="job-sel", started_at=datetime.now(timezone.utc), snapshot_uri="s3://u", config_hash="recipe-a"),
    )
    ingest = SimpleNamespace(concepts=[
        SimpleNamespace(concept_key=f"{tenant}/{c}", display_name=c.title(), class_word="dog", data_digest=d)
        for c, d in digests.items()])
    searches = []
    search = registry.client.search_model_versions
    monkeypatch.setattr(registry.client, "search_model_versions", lambda *a, **kw: searches.append(a) or search(*a, **kw))
    plan = select(ctx, ingest)

    assert len(searches) == 1  # six concepts, one request: no per-concept find_version / latest_version
    why = {c.concept: text for c, text in plan.why.items()}
    assert why == {
        "data": "data changed since v1",
        "recipe": "recipe changed since v2",
        "base": "base model changed since v1",
        "new": "new concept",
        "exported": "new concept; trained by an earlier run, registered now",
    }
    assert sorted(c.id.concept for c in plan.to_train) == ["base", "data", "new", "recipe"]
    assert [c.id.concept for c in plan.to_register] == ["exported"]
    (skipped,) = ctx.summary.concepts
    assert (skipped.concept_key, skipped.outcome, skipped.version, skipped.why) == (f"{tenant}/same", "skipped", "1", SKIP_REASON)
    assert all(c.warm_start is None for c in plan.to_train)

    # train.warm_start: a concept with a version on this base starts from its newest one's artifact.
    ctx.cfg.train.warm_start = True
    warm = {c.id.concept: c for c in select(ctx, ingest).to_train}
    assert warm["data"].warm_start == TrainConcept(ConceptId(tenant, "data"), "D", "dog", "d-old", "recipe-a", FINGERPRINT).subpath
    assert warm["recipe"].warm_start.split("/")[-2] == "recipe-0"  # the newest version (v2), another recipe's tokens
    assert warm["base"].warm_start is None and warm["new"].warm_start is None  # another base; nothing registered


def test_register_many_runs_a_few_at_once_and_a_concept_sent_twice_gets_one_version(
        registry, run_id, mlflow_server_postgres, tmp_path, monkeypatch):
    tenant = unique("many")
    folders = []
    for k in range(3):
        write_artifact(tmp_path / f"c{k}", tenant, f"c{k}", f"digest{k}", seed=k)
        folders.append(tmp_path / f"c{k}")
    write_artifact(tmp_path / "c0-copy", tenant, "c0", "digest0", seed=0)  # the same concept again, another folder
    requests = [RegistrationRequest(run_id, folder, metrics={"recognition_accuracy": 0.9}, gate=GATE)
                for folder in [folders[0], tmp_path / "c0-copy", folders[1], tmp_path / "missing", folders[2], folders[0]]]

    running, peak, guard = [0], [0], threading.Lock()
    register = registry.register_concept

    def counted(*args, **kwargs):
        with guard:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            return register(*args, **kwargs)
        finally:
            with guard:
                running[0] -= 1

    monkeypatch.setattr(registry, "register_concept", counted)
    done = []
    outcomes = registry.register_many(requests, threads=3, on_done=done.append)

    assert 1 < peak[0] <= 3  # concurrent, and bounded
    assert [o.request for o in outcomes] == requests and len(done) == len(requests)
    assert isinstance(outcomes[3].error, FileNotFoundError) and outcomes[3].result is None  # the others went on
    c0 = [o.result for i, o in enumerate(outcomes) if i in (0, 1, 5)]
    assert sorted(r.status for r in c0) == ["already_registered", "already_registered", "registered"]
    assert {r.version for r in c0} == {"1"}
    client = MlflowClient(mlflow_server_postgres.tracking_uri)
    for k in range(3):
        concept = ConceptId(tenant, f"c{k}")
        assert [v.version for v in client.search_model_versions(f"name = '{registry.model_name(concept)}'")] == ["1"]
        # Logged once: the copies waited for the first registration instead of logging a model of their own.
        logged = client.search_logged_models([registry.mlflow.experiment_id],
                                             filter_string=names.logged_model_filter(concept))
        assert len(logged) == 1, (concept, logged)
        assert client.get_model_version_by_alias(registry.model_name(concept), names.CHAMPION_ALIAS).version == "1"
        # Each package holds its own concept, however the threads interleaved.
        back = ConceptArtifact.load(registry.download(concept, tmp_path / "download" / concept.concept))
        assert back.manifest.concept_id == concept.key and back.manifest.data_digest == f"digest{k}"


def test_a_registered_model_another_process_just_created_is_taken_as_found(registry, mlflow_server_postgres, monkeypatch):
    concept = ConceptId(unique("race"), "rex")
    name = registry.model_name(concept)
    other = ConceptRegistry(MlflowConnection(mlflow_server_postgres.tracking_uri), prefix=registry.prefix)
    other._ensure_registered_model(name, concept)  # the other job, between our look and our create
    looks, get = [], registry._get_registered_model
    monkeypatch.setattr(registry, "_get_registered_model", lambda n: looks.append(n) or get(n))
    registry._ensure_registered_model(name, concept)  # RESOURCE_ALREADY_EXISTS is no failure
    assert len(looks) == 1  # it created first (no look before), was told the model exists and took the other's
    assert MlflowClient(mlflow_server_postgres.tracking_uri).get_registered_model(name).tags[names.TAG_TENANT] == concept.tenant


@pytest.mark.parametrize("tracking_uri, most", [("http://mlflow:5000", 3), ("sqlite:///{tmp}/mlflow.db", 1)])
def test_register_many_bounds_its_threads_and_a_sqlite_file_takes_one_writer(tracking_uri, most, monkeypatch, tmp_path):
    connection = MlflowConnection(tracking_uri.format(tmp=tmp_path))
    connection.__dict__["experiment_id"] = "0"  # no server here: register_concept is replaced below
    registry = ConceptRegistry(connection)
    running, peak, guard = [0], [0], threading.Lock()

    def register(run_id, artifact_path, **_):
        with guard:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with guard:
            running[0] -= 1
        return artifact_path

    monkeypatch.setattr(registry, "register_concept", register)
    outcomes = registry.register_many([RegistrationRequest("run", f"a{k}") for k in range(9)], threads=3)
    assert [o.result for o in outcomes] == [f"a{k}" for k in range(9)] and peak[0] == most


def test_registration_threads_is_a_job_setting():
    assert MlflowSettings(tracking_uri="http://mlflow:5000").registration_threads == 4
    assert MlflowSettings(tracking_uri="http://mlflow:5000", registration_threads=8).registration_threads == 8
    with pytest.raises(ValidationError):
        MlflowSettings(tracking_uri="http://mlflow:5000", registration_threads=0)
