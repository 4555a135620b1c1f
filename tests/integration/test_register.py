"""Registry stage against a real MLflow server (sqlite backend, proxied artifacts)."""
from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

import boto3
import mlflow.artifacts
import mlflow.pyfunc
import pytest
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from PIL import Image
from pyarrow import fs as pafs

from omnipersona.concepts.artifact import BaseModelMismatchError, ConceptArtifact, ConceptManifest
from omnipersona.identity import ConceptId
from pipelines.evaluate.gate import Gate
from pipelines.register import (
    ConceptRegistry,
    JobRuns,
    JobRunSpec,
    MlflowConnection,
    RetryPolicy,
    call_with_retries,
    create_once,
)
from pipelines.register.names import CANDIDATE_ALIAS, CHAMPION_ALIAS

pytestmark = pytest.mark.integration

HIDDEN = 8
GATE = Gate(minimums={"recognition_accuracy": 0.6})


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def write_artifact(folder, tenant: str, concept: str, data_digest: str, config_hash: str = "cfg0001", seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    manifest = ConceptManifest(
        tenant=tenant,
        concept=concept,
        display_name=concept.title(),
        class_word="dog",
        training_config_hash=config_hash,
        data_digest=data_digest,
        base_model_id="bagel-tiny",
        base_fingerprint="fp-tiny",
        metrics={"loss_text": 0.5},
        created_at=datetime(2026, 11, 27, tzinfo=timezone.utc),
    )
    artifact = ConceptArtifact(
        torch.randn(1, HIDDEN, generator=g),
        torch.randn(3, HIDDEN, generator=g),
        torch.randn(3, HIDDEN, generator=g),
        torch.randn(HIDDEN, generator=g),
        manifest,
    )
    artifact.save(folder)
    return artifact


@pytest.fixture(scope="module")
def registry(mlflow_server) -> ConceptRegistry:
    return ConceptRegistry(MlflowConnection(
        mlflow_server.tracking_uri,
        experiment_name=unique("test-register"),
        retry=RetryPolicy(attempts=2, initial_delay_s=0.1),
    ))


@pytest.fixture(scope="module")
def run_id(registry) -> str:
    spec = JobRunSpec(
        job_id=unique("job"),
        snapshot_uri="s3://uploads/snapshots/2026-11-27",
        snapshot_digest="snap123",
        config_hash="cfg0001",
        base_model_id="bagel-tiny",
        base_fingerprint="fp-tiny",
        zero_stage=2,
        ray_submission_id="raysubmit_abc",
    )
    return JobRuns(registry.mlflow).start(spec)


def test_each_submission_of_a_job_gets_its_own_run_with_the_tags(registry, mlflow_server):
    spec = JobRunSpec(
        job_id=unique("job"),
        snapshot_uri="s3://b/uploads",
        snapshot_digest="snap",
        config_hash="c1",
        base_model_id="bagel-tiny",
        base_fingerprint="fp-tiny",
        zero_stage=3,
    )
    runs = JobRuns(registry.mlflow)
    first = runs.start(spec)
    runs.end(first, "FAILED")
    again = runs.start(spec)
    assert again != first and runs.of_job(spec.job_id) == [first, again]
    client = MlflowClient(mlflow_server.tracking_uri)
    assert client.get_run(first).info.status == "FAILED"  # the first run's record stays as it was
    run = client.get_run(again)
    assert run.info.run_name == spec.job_id
    assert run.info.status == "RUNNING"
    tags = run.data.tags
    assert tags["omnipersona.snapshot_uri"] == "s3://b/uploads"
    assert tags["omnipersona.zero_stage"] == "3"
    assert tags["omnipersona.code_version"]


def test_register_creates_version_candidate_and_champion_on_gate_pass(registry, run_id, tmp_path, mlflow_server):
    tenant, concept = "acme", unique("rex")
    write_artifact(tmp_path / "a", tenant, concept, "digest1")
    images = {"t2i sample": Image.new("RGB", (8, 8), "red"), "edit/remove": Image.new("RGB", (8, 8), "blue")}

    result = registry.register_concept(
        run_id, tmp_path / "a", metrics={"recognition_accuracy": 0.9}, images=images, gate=GATE,
        data_uri=f"s3://uploads/acme/{concept}",
    )

    client = MlflowClient(mlflow_server.tracking_uri)
    name = ConceptId(tenant, concept).model_name()
    assert (result.status, result.model_name, result.version, result.promoted) == ("registered", name, "1", True)
    assert client.get_model_version_by_alias(name, CANDIDATE_ALIAS).version == "1"
    assert client.get_model_version_by_alias(name, CHAMPION_ALIAS).version == "1"
    version = client.get_model_version(name, "1")
    assert version.tags["data_digest"] == "digest1"
    assert version.tags["config_hash"] == "cfg0001"
    assert version.tags["base_fingerprint"] == "fp-tiny"
    assert version.tags["gate"] == "passed"
    assert version.source == f"models:/{result.model_id}"

    # Everything of the concept is logged in its own registration run, a child of the job run.
    logged = client.get_logged_model(result.model_id)
    child = client.get_run(logged.source_run_id)
    assert child.info.run_id != run_id and version.run_id == child.info.run_id
    assert child.data.tags["mlflow.parentRunId"] == run_id
    assert (child.data.tags["omnipersona.tenant"], child.data.tags["omnipersona.concept"]) == (tenant, concept)
    assert child.data.tags["omnipersona.data_uri"] == f"s3://uploads/acme/{concept}"
    assert child.info.status == "FINISHED"
    assert {m.key: m.value for m in logged.metrics} == {"recognition_accuracy": 0.9, "loss_text": 0.5}
    assert child.data.metrics == {"recognition_accuracy": 0.9, "loss_text": 0.5}
    # The dataset input names nothing personal: MLflow keeps dataset rows after the run is purged.
    (dataset,) = [d.dataset for d in child.inputs.dataset_inputs]
    assert dataset.digest == "digest1" and dataset.name == child.data.tags["omnipersona.dataset_name"]
    assert concept not in dataset.name and json.loads(dataset.source)["uri"] == "s3://uploads"
    assert {f.path for f in client.list_artifacts(child.info.run_id, "pictures")} == {"pictures/t2i_sample.png", "pictures/edit_remove.png"}
    job_run = client.get_run(run_id)
    assert not job_run.data.metrics and not job_run.inputs.dataset_inputs and not client.list_artifacts(run_id, "concepts")


def test_each_concept_keeps_its_own_metrics_in_one_job_run(registry, run_id, tmp_path, mlflow_server):
    concepts = [unique("ant"), unique("bee")]
    for i, concept in enumerate(concepts):
        write_artifact(tmp_path / concept, "acme", concept, "digest1", seed=i)
        registry.register_concept(run_id, tmp_path / concept, metrics={"recognition_accuracy": 0.1 * (i + 1)})

    client = MlflowClient(mlflow_server.tracking_uri)
    children = client.search_runs([registry.mlflow.experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}'")
    by_concept = {r.data.tags["omnipersona.concept"]: r.data.metrics["recognition_accuracy"] for r in children}
    assert by_concept[concepts[0]] == pytest.approx(0.1) and by_concept[concepts[1]] == pytest.approx(0.2)


def test_gate_failure_keeps_champion(registry, run_id, tmp_path, mlflow_server):
    tenant, concept = "acme", unique("cat")
    write_artifact(tmp_path / "v1", tenant, concept, "digest1")
    write_artifact(tmp_path / "v2", tenant, concept, "digest2", seed=1)
    registry.register_concept(run_id, tmp_path / "v1", metrics={"recognition_accuracy": 0.8}, gate=GATE)

    result = registry.register_concept(run_id, tmp_path / "v2", metrics={"recognition_accuracy": 0.3}, gate=GATE)

    client = MlflowClient(mlflow_server.tracking_uri)
    name = ConceptId(tenant, concept).model_name()
    assert (result.version, result.promoted) == ("2", False)
    assert result.gate is not None and "recognition_accuracy=0.3 < 0.6" in result.gate.reasons[0]
    assert client.get_model_version_by_alias(name, CANDIDATE_ALIAS).version == "2"
    assert client.get_model_version_by_alias(name, CHAMPION_ALIAS).version == "1"
    assert client.get_model_version(name, "2").tags["gate"] == "failed"


def test_same_digest_and_config_is_not_registered_twice(registry, run_id, tmp_path, mlflow_server):
    tenant, concept = "acme", unique("owl")
    write_artifact(tmp_path / "a", tenant, concept, "digest1")
    write_artifact(tmp_path / "b", tenant, concept, "digest1")  # re-exported: same data, same config
    first = registry.register_concept(run_id, tmp_path / "a", metrics={"recognition_accuracy": 0.9}, gate=GATE)

    second = registry.register_concept(run_id, tmp_path / "b", metrics={"recognition_accuracy": 0.9}, gate=GATE)

    name = ConceptId(tenant, concept).model_name()
    versions = MlflowClient(mlflow_server.tracking_uri).search_model_versions(f"name = '{name}'")
    assert [v.version for v in versions] == ["1"]
    assert (second.status, second.version, second.model_id) == ("already_registered", "1", first.model_id)

    write_artifact(tmp_path / "c", tenant, concept, "digest1", config_hash="cfg0002")  # new config: new version
    assert registry.register_concept(run_id, tmp_path / "c").version == "2"


def test_promote_and_rollback(registry, run_id, tmp_path, mlflow_server):
    tenant, concept = "beta", unique("mug")
    for i in (1, 2, 3):
        write_artifact(tmp_path / f"v{i}", tenant, concept, f"digest{i}", seed=i)
        registry.register_concept(run_id, tmp_path / f"v{i}", metrics={"recognition_accuracy": 0.9}, gate=GATE)
    client = MlflowClient(mlflow_server.tracking_uri)
    name = ConceptId(tenant, concept).model_name()
    assert client.get_model_version_by_alias(name, CHAMPION_ALIAS).version == "3"

    assert registry.rollback(name) == "2"
    assert client.get_model_version_by_alias(name, CHAMPION_ALIAS).version == "2"
    assert client.get_registered_model(name).tags["last_rollback"] == "3 -> 2"
    assert registry.rollback(name) == "1"
    with pytest.raises(LookupError, match="nothing to roll back"):
        registry.rollback(name)

    registry.promote(name, 3)
    assert client.get_model_version_by_alias(name, CHAMPION_ALIAS).version == "3"
    assert registry.rollback(name) == "1"  # 3 replaced 1 this time


def test_champion_download_loads_back(registry, run_id, tmp_path):
    tenant, concept = "acme", unique("toy")
    original = write_artifact(tmp_path / "a", tenant, concept, "digest1")
    registry.register_concept(run_id, tmp_path / "a", metrics={"recognition_accuracy": 1.0}, gate=GATE)

    folder = registry.download(ConceptId(tenant, concept), tmp_path / "download")

    loaded = ConceptArtifact.load(folder, expected_fingerprint="fp-tiny", expected_hidden_size=HIDDEN)
    assert torch.equal(loaded.und_tokens, original.und_tokens)
    assert loaded.manifest == original.manifest
    with pytest.raises(BaseModelMismatchError):
        ConceptArtifact.load(folder, expected_fingerprint="fp-other")
    # The package loads as a pyfunc model (defined by code); serving needs a base, and this concept
    # was registered without one (tests/integration/test_serving.py serves concepts).
    model = mlflow.pyfunc.load_model(str(folder.parent.parent))
    with pytest.raises(ValueError, match="no base model"):
        model.predict([{"task": "understand", "prompt": "Hello"}])


def test_logged_but_unregistered_artifact_is_registered_without_relogging(registry, run_id, tmp_path, mlflow_server):
    tenant, concept = "acme", unique("cup")
    root = tmp_path / "store"
    write_artifact(root / tenant / concept / "digest1", tenant, concept, "digest1")
    # Read through a pyarrow filesystem, as from S3.
    first = registry.register_concept(
        run_id, f"{root.as_posix()}/{tenant}/{concept}/digest1", filesystem=pafs.LocalFileSystem()
    )
    client = MlflowClient(mlflow_server.tracking_uri)
    name = ConceptId(tenant, concept).model_name()
    client.delete_model_version(name, first.version)  # as if the job died before creating the version

    again = registry.register_concept(run_id, root / tenant / concept / "digest1")

    assert again.status == "registered"
    assert again.model_id == first.model_id  # the READY logged model is reused
    assert [v.version for v in client.search_model_versions(f"name = '{name}'")] == [again.version]


def test_delete_removes_registered_model_logged_models_and_registration_runs(registry, run_id, tmp_path, mlflow_server):
    tenant, concept = "acme", unique("hat")
    write_artifact(tmp_path / "a", tenant, concept, "digest1")
    write_artifact(tmp_path / "b", tenant, concept, "digest2", seed=2)
    images = {"sample": Image.new("RGB", (8, 8), "red")}
    results = [registry.register_concept(run_id, tmp_path / p, images=images) for p in ("a", "b")]
    other = unique("hat")
    write_artifact(tmp_path / "c", tenant, other, "digest1", seed=3)
    kept = registry.register_concept(run_id, tmp_path / "c", images=images)
    client = MlflowClient(mlflow_server.tracking_uri)
    child_runs = [client.get_logged_model(r.model_id).source_run_id for r in results]
    locations = [client.get_logged_model(r.model_id).artifact_location for r in results]

    deleted = registry.delete_concept(ConceptId(tenant, concept))

    assert set(deleted) == {r.model_id for r in results}
    with pytest.raises(MlflowException, match="not found|does not exist|RESOURCE_DOES_NOT_EXIST"):
        client.get_registered_model(ConceptId(tenant, concept).model_name())
    remaining = client.search_logged_models([registry.mlflow.experiment_id], filter_string=f"tags.concept = '{concept}'")
    assert list(remaining) == []
    # Runs and logged models are soft-deleted (their rows wait for `mlflow gc`); their files are gone now.
    for run in child_runs:
        assert client.get_run(run).info.lifecycle_stage == "deleted"
        assert client.list_artifacts(run, "pictures") == []
    for location in locations:
        assert mlflow.artifacts.list_artifacts(artifact_uri=location, tracking_uri=mlflow_server.tracking_uri) in ([], None)
    # Another concept of the same tenant, registered in the same job run, is untouched.
    assert client.get_model_version(ConceptId(tenant, other).model_name(), kept.version)
    kept_run = client.get_logged_model(kept.model_id).source_run_id
    assert client.get_run(kept_run).info.lifecycle_stage == "active" and client.list_artifacts(kept_run, "pictures")
    assert registry.delete_concept(ConceptId(tenant, concept)) == []  # idempotent


def test_deletion_finds_what_job_runs_held_before_registration_runs(registry, run_id, mlflow_server):
    """Jobs before registration runs logged a concept's pictures and dataset input on the job run."""
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.entities import DatasetInput

    from pipelines.register.deletion import CannotPurge, MlflowConceptRecords

    client = MlflowClient(mlflow_server.tracking_uri)
    concept = ConceptId("acme", unique("old"))
    legacy_run = client.create_run(registry.mlflow.experiment_id, run_name="legacy-job").info.run_id
    client.log_image(legacy_run, Image.new("RGB", (8, 8), "red"), artifact_file=f"concepts/acme/{concept.concept}/d1/sample.png")
    client.log_image(legacy_run, Image.new("RGB", (8, 8), "red"), artifact_file="concepts/acme/kept/d1/sample.png")
    dataset = MetaDataset(resolve_dataset_source(f"s3://uploads/{concept.key}"), name=concept.key, digest="d1")
    client.log_inputs(legacy_run, datasets=[DatasetInput(dataset._to_mlflow_entity())])
    records = MlflowConceptRecords(registry.mlflow, concept, registry.model_name(concept))

    found = records.legacy_job_run_records(records.job_runs())

    assert sorted(f.label for f in found) == sorted([f"run {legacy_run}: pictures concepts/acme/{concept.concept}/",
                                                     f"run {legacy_run}: dataset input named {concept.key}"])
    for f in found:
        if f.ref[0] == "pictures":
            records.purge_legacy_job_run_record(f)
        else:
            with pytest.raises(CannotPurge, match="no API"):
                records.purge_legacy_job_run_record(f)
    left = records.legacy_job_run_records(records.job_runs())
    assert [f.ref[0] for f in left] == ["dataset"]  # reported as left, every time, until removed by hand
    assert client.list_artifacts(legacy_run, "concepts/acme/kept/d1")  # another concept's pictures stay


def test_missing_artifact_is_reported_before_anything_is_registered(registry, run_id, tmp_path, mlflow_server):
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        registry.register_concept(run_id, tmp_path / "never-exported")


def test_s3_artifact_store_round_trip(mlflow_server_s3, request, tmp_path):
    registry = ConceptRegistry(MlflowConnection(mlflow_server_s3.tracking_uri, experiment_name=unique("test-register-s3")))
    spec = JobRunSpec(
        job_id=unique("job"), snapshot_uri="s3://b/uploads", snapshot_digest="s", config_hash="c",
        base_model_id="bagel-tiny", base_fingerprint="fp-tiny", zero_stage=2,
    )
    run_id = JobRuns(registry.mlflow).start(spec)
    tenant, concept = "acme", unique("s3dog")
    original = write_artifact(tmp_path / "a", tenant, concept, "digest1")
    result = registry.register_concept(run_id, tmp_path / "a", metrics={"recognition_accuracy": 0.7}, gate=GATE)
    assert result.promoted

    loaded = ConceptArtifact.load(registry.download(ConceptId(tenant, concept), tmp_path / "dl"), expected_fingerprint="fp-tiny")
    assert torch.equal(loaded.gen_tokens, original.gen_tokens)

    # The files really live in the bucket (the client itself never had S3 credentials).
    s3 = request.getfixturevalue("s3_server")
    bucket = boto3.client(
        "s3", endpoint_url=f"http://{s3.endpoint}", aws_access_key_id=s3.access_key,
        aws_secret_access_key=s3.secret_key, region_name=s3.region,
    )
    keys = [o["Key"] for o in bucket.list_objects_v2(Bucket=s3.bucket, Prefix="mlflow/").get("Contents", [])]
    assert any(k.endswith(f"/{result.model_id}/artifacts/artifacts/concept/concept.safetensors") for k in keys), keys


# ---- pure logic (no server)


def test_registered_model_names_are_tenant_scoped_and_validated():
    assert ConceptId("acme", "rex").model_name() == "omnipersona.acme.rex"
    assert ConceptId("acme", "rex").model_name(prefix="staging") == "staging.acme.rex"
    assert ConceptId("a-b", "c").model_name() != ConceptId("a", "b-c").model_name()
    for bad in ("Acme", "a.b", "a/b", "", "x" * 64, "a'b"):
        with pytest.raises(ValueError):
            ConceptId(bad, "rex").model_name()


def test_gate_checks_minimums_maximums_and_missing_metrics():
    gate = Gate(minimums={"recognition_accuracy": 0.6}, maximums={"loss_text": 1.0})
    assert gate.evaluate({"recognition_accuracy": 0.6, "loss_text": 1.0}).passed
    failed = gate.evaluate({"recognition_accuracy": 0.5})
    assert not failed.passed
    assert failed.reasons == ["recognition_accuracy=0.5 < 0.6", "loss_text missing (needs <= 1.0)"]
    assert not gate.evaluate({"recognition_accuracy": float("nan"), "loss_text": 0.1}).passed
    assert Gate().evaluate({}).passed


FAST = RetryPolicy(attempts=3, initial_delay_s=0.0)


def test_retries_connection_errors_but_not_client_errors():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("server restarting")
        return "ok"

    assert call_with_retries(flaky, FAST, "flaky") == "ok"
    assert len(calls) == 3

    calls.clear()

    def bad_request():
        calls.append(1)
        raise MlflowException.invalid_parameter_value("bad name")  # a 400 answer

    with pytest.raises(MlflowException, match="bad name"):
        call_with_retries(bad_request, FAST, "bad")
    assert len(calls) == 1


def test_create_once_does_not_duplicate_when_the_answer_is_lost():
    created = []

    def create():
        created.append("v1")  # the server applied it ...
        raise ConnectionError("... but the answer never came back")

    obj, was_created = create_once(lambda: created[0] if created else None, create, FAST, "version")
    assert (obj, was_created, created) == ("v1", False, ["v1"])


def test_create_once_takes_the_object_another_process_created_in_between():
    """Two runs start at once: both look, find nothing, both create; the second one's create is
    answered RESOURCE_ALREADY_EXISTS and it must take the first one's object, not fail the job."""
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS

    existing = []
    looks = []

    def find():
        looks.append(1)
        return existing[0] if existing else None

    def create():
        existing.append("experiment-of-the-other-run")
        raise MlflowException("Experiment(name=x) already exists", error_code=RESOURCE_ALREADY_EXISTS)

    obj, was_created = create_once(find, create, FAST, "experiment")
    assert (obj, was_created, len(looks)) == ("experiment-of-the-other-run", False, 2)
