"""Preflight against the real services: a store or service the job cannot use fails the job in
seconds, before Ray starts or torch loads, with one line naming the endpoint and what to do."""
from __future__ import annotations

import shutil
import socket

import pytest

from tests.preflight_cli import personalize, write_config
from tests.services.s3 import upload_tree

ENDPOINT_SECONDS = 30.0


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def uploads(s3_server, tmp_path_factory):
    local = tmp_path_factory.mktemp("preflight-uploads")
    (local / "acme" / "rex" / "images").mkdir(parents=True)
    (local / "acme" / "rex" / "concept.json").write_text('{"display_name": "rex", "class_word": "dog"}')
    upload_tree(s3_server, local, "preflight/uploads")
    return s3_server.uri("preflight/uploads")


@pytest.fixture()
def job(s3_server, mlflow_server, uploads, tiny_bagel_dir, tmp_path):
    """A config the job could run with (S3 uploads and artifacts, an MLflow server, a base folder)."""
    config = {
        "ingest": {"uploads_uri": uploads, "vit_size": 32, "vae_size": 32},
        "model": {"uri": str(tiny_bagel_dir)},
        "artifacts": {"root": s3_server.uri(f"preflight/artifacts/{tmp_path.name}")},
        "mlflow": {"tracking_uri": mlflow_server.tracking_uri},
    }
    return {"config": config, "env": s3_server.job_env(), "dir": tmp_path}


def run(job, *flags, **env):
    return personalize(write_config(job["dir"], job["config"]), *flags, env={**job["env"], **env})


def assert_refused(result, *expected: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.seconds < ENDPOINT_SECONDS, f"took {result.seconds:.1f}s"
    assert result.heavy_imports == [], f"imported {result.heavy_imports} before answering"
    assert "Traceback" not in result.stderr
    text = "\n".join(result.problems)
    for part in expected:
        assert part in text, result.stderr


def test_a_job_that_can_run_validates(job, s3_server):
    result = run(job, "--validate")
    assert result.returncode == 0, result.stderr
    assert result.heavy_imports == [] and result.seconds < ENDPOINT_SECONDS
    listed = s3_server.client().list_objects_v2(Bucket=s3_server.bucket, Prefix=f"preflight/artifacts/{job['dir'].name}")
    assert listed.get("KeyCount", 0) == 0, "the write probe is removed again"


def test_mlflow_down_fails_the_job_before_ray_starts(job):
    job["config"]["mlflow"]["tracking_uri"] = f"http://127.0.0.1:{closed_port()}"
    assert_refused(run(job), "mlflow.tracking_uri (http://127.0.0.1:", "unreachable", "start the server")


def test_s3_endpoint_down(job):
    down = {"OMNIPERSONA_STORAGE__ENDPOINT_OVERRIDE": f"127.0.0.1:{closed_port()}"}
    assert_refused(run(job, "--validate", **down), "ingest.uploads_uri (s3://", "cannot connect", "storage.endpoint_override")


def test_no_credentials(job):
    anonymous = {"OMNIPERSONA_STORAGE__ACCESS_KEY": None, "OMNIPERSONA_STORAGE__SECRET_KEY": None,
                 "AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None, "AWS_EC2_METADATA_DISABLED": "true"}
    assert_refused(run(job, "--validate", **anonymous), "ingest.uploads_uri (s3://", "credentials missing or wrong")


def test_wrong_credentials(job):
    assert_refused(run(job, "--validate", OMNIPERSONA_STORAGE__SECRET_KEY="not-the-secret"),
                   "artifacts.root (s3://", "credentials missing or wrong")


def test_missing_uploads_prefix(job, s3_server):
    job["config"]["ingest"]["uploads_uri"] = s3_server.uri("preflight/no-such-uploads")
    assert_refused(run(job, "--validate"), "ingest.uploads_uri (s3://", "does not exist", "ingest.allow_empty")


def test_empty_snapshot_fails_unless_allowed(job):
    empty = job["dir"] / "empty-uploads"
    empty.mkdir()
    job["config"]["ingest"]["uploads_uri"] = str(empty)
    assert_refused(run(job, "--validate"), "ingest.uploads_uri", "is empty")
    job["config"]["ingest"]["allow_empty"] = True
    assert run(job, "--validate").returncode == 0


def test_unwritable_artifact_root(job):
    blocker = job["dir"] / "a-file"
    blocker.write_text("not a folder")
    job["config"]["artifacts"]["root"] = str(blocker / "artifacts")
    assert_refused(run(job, "--validate"), f"artifacts.root ({blocker}/artifacts)", "cannot write")


def test_base_folder_missing(job):
    job["config"]["model"]["uri"] = str(job["dir"] / "no-such-model")
    assert_refused(run(job, "--validate"), "model.uri", "does not exist")


def test_base_folder_without_the_release_layout(job, tiny_bagel_dir):
    partial = job["dir"] / "partial-model"
    shutil.copytree(tiny_bagel_dir, partial)
    (partial / "ae.safetensors").unlink()
    job["config"]["model"]["uri"] = str(partial)
    assert_refused(run(job, "--validate"), "model.uri", "not a BAGEL checkpoint folder: missing ae.safetensors")


def test_every_problem_is_reported_at_once(job, s3_server):
    job["config"]["mlflow"]["tracking_uri"] = f"http://127.0.0.1:{closed_port()}"
    job["config"]["model"]["uri"] = str(job["dir"] / "no-such-model")
    job["config"]["ingest"]["uploads_uri"] = s3_server.uri("preflight/no-such-uploads")
    result = run(job, "--validate")
    assert_refused(result, "mlflow.tracking_uri", "model.uri", "ingest.uploads_uri")
    assert len(result.problems) == 3
