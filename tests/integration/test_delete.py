"""Deleting a concept, checked by content on the real services (Ray, DeepSpeed, SeaweedFS S3, an MLflow
server of this module's own, which it stops and starts again).

One small job trains three concepts in one pack (its Ray checkpoints hold all three), evaluates them
on held-out eval sets, registers them (one registration run each) and leaves summaries and a
quarantine report naming them. Then `omnipersona delete` runs with the MLflow server down (it must
fail loudly and name what is left), again after the restart (it must finish), `mlflow gc` runs as
docs/deployment.md says, and every store is searched by content: every object in the bucket (Parquet
decoded), every row of every table of the MLflow database, every file under the Ray runs root.
Nothing may contain the concept's key, registered model name, display name, the bytes of its trained
tensors or of its sample pictures; the other concepts stay as they were.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from mlflow import MlflowClient
from safetensors.torch import load as load_safetensors

from omnipersona.identity import ConceptId
from omnipersona.world import make_concepts
from omnipersona.world.uploads import EvalSetWriteOptions, UploadOptions, write_eval_sets, write_uploads
from pipelines.config import JobConfig
from pipelines.personalize import run_job
from tests.services.mlflow_server import MlflowServerProcess, s3_server_env
from tests.services.s3 import upload_tree

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
GONE = "vesperline-qx"  # the deleted concept: a name no byte search finds by chance
GONE_ID = ConceptId("acme", GONE)


def storage_env(s3) -> dict[str, str]:
    return s3.job_env()


@pytest.fixture(scope="module")
def mlflow_process(s3_server, tmp_path_factory):
    process = MlflowServerProcess(tmp_path_factory.mktemp("mlflow-delete"), f"s3://{s3_server.bucket}/delete-mlflow",
                                  s3_server_env(s3_server))
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def job(s3_server, ray_session, mlflow_process, tiny_bagel_dir, tmp_path_factory):
    local = tmp_path_factory.mktemp("delete")
    first, second, third = make_concepts(3, seed=44)
    kept = [second, third]
    tenants = {"acme": [first.model_copy(update={"name": GONE}), second], "globex": [third]}
    write_uploads(tenants, local / "uploads", options=UploadOptions(views=3, edits=1, pool_negatives=4))
    shutil.move(local / "uploads" / "_negatives", local / "negatives")
    write_eval_sets(tenants, local / "eval", options=EvalSetWriteOptions(size=32, views=1, hard_negatives=1, random_negatives=1))
    for name in (GONE, second.name):  # a quarantine row for the deleted concept and for a kept one
        (local / "uploads" / "acme" / name / "images" / "900.png").write_bytes(b"not an image at all")
    for folder in ("uploads", "negatives", "eval"):
        upload_tree(s3_server, local / folder, f"delete/{folder}")
    config = {
        "ingest": {"uploads_uri": s3_server.uri("delete/uploads"), "negatives_uri": s3_server.uri("delete/negatives"),
                   "vit_size": 32, "vae_size": 32, "epochs": 1, "samples_per_task": 1},
        "model": {"uri": str(tiny_bagel_dir)},
        "train": {"recipe": {"steps": 4, "batch_size": 2, "num_und_tokens": 2, "num_gen_tokens": 2, "vit_size": 32, "vae_size": 32},
                  "deepspeed": {"zero_stage": 2}, "scaling": {"num_workers": 1, "cpus_per_worker": 1}, "pack_size": 4,
                  "checkpoint_every": 2},
        "artifacts": {"root": s3_server.uri("delete/concepts"), "work": s3_server.uri("delete/work"),
                      "runs": str(local / "ray-runs")},
        "mlflow": {"tracking_uri": mlflow_process.url, "experiment": "delete"},
        "evaluation": {"max_examples": 1, "sample_images": True, "sampling_steps": 2, "eval_sets_uri": s3_server.uri("delete/eval")},
        "hard_negative_features": "colour_histogram",
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in storage_env(s3_server).items():
            mp.setenv(key, value)
        summary = run_job(JobConfig(**config))
    assert summary.counts()["done"] == 3, summary.concepts
    job_yaml = local / "job.yaml"
    job_yaml.write_text(yaml.safe_dump(config))
    return dict(local=local, yaml=job_yaml, config=config, summary=summary, kept=kept, server=s3_server,
                mlflow=mlflow_process, env={**os.environ, **storage_env(s3_server)})


# ---------------------------------------------------------------- reading every store by content


def s3_objects(s3) -> dict[str, bytes]:
    """Every object of the bucket, and every folder entry a listing shows (SeaweedFS keeps empty
    folders, and their names count as much as contents)."""
    client = s3.client()
    out: dict[str, bytes] = {}

    def walk(prefix: str) -> None:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=prefix, Delimiter="/"):
            for item in page.get("Contents", []):
                body = b"" if item["Key"].endswith("/") else client.get_object(Bucket=s3.bucket, Key=item["Key"])["Body"].read()
                out[f"s3://{s3.bucket}/{item['Key']}"] = body
            for sub in page.get("CommonPrefixes", []):
                out.setdefault(f"s3://{s3.bucket}/{sub['Prefix']}", b"")
                walk(sub["Prefix"])

    walk("")
    return out


def decoded(location: str, data: bytes) -> bytes:
    """The bytes as stored, plus what a Parquet file holds (compressed pages hide their strings)."""
    if not location.endswith(".parquet") or not data:
        return data
    rows = pq.read_table(io.BytesIO(data)).to_pylist()
    cells = [v if isinstance(v, bytes) else repr(v).encode() for row in rows for v in row.values()]
    return data + b"\0".join(cells)


def database_rows(db_path: Path) -> dict[str, bytes]:
    """Every row of every table of the MLflow database."""
    out = {}
    with sqlite3.connect(db_path) as db:
        for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
            for i, row in enumerate(db.execute(f'SELECT * FROM "{table}"').fetchall()):
                out[f"db:{table}[{i}]"] = b"\0".join(v if isinstance(v, bytes) else str(v).encode() for v in row)
    return out


def local_files(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() if p.is_file() else b"" for p in root.rglob("*")}


def inventory(job) -> dict[str, bytes]:
    """Every store the job wrote, by content: the bucket (uploads, artifacts, eval sets, work folders,
    MLflow's artifacts), the MLflow database, the Ray runs root."""
    found = {loc: decoded(loc, data) for loc, data in s3_objects(job["server"]).items()}
    found.update(database_rows(job["mlflow"].workdir / "mlflow.db"))
    found.update({loc: decoded(loc, data) for loc, data in local_files(job["local"] / "ray-runs").items()})
    return found


def where(location: str) -> str:
    """The store of a location: `db`, `ray-runs`, or the bucket's top folder (below `delete/`)."""
    if location.startswith("db:"):
        return "db"
    if not location.startswith("s3://"):
        return "ray-runs"
    parts = location.split("/")[3:]
    return parts[1] if parts[0] == "delete" else parts[0]


def search(stores: dict[str, bytes], needles: dict[str, bytes]) -> list[tuple[str, str]]:
    """(needle, location) for every needle in a location's name or content."""
    return sorted((what, loc) for loc, data in stores.items() for what, needle in needles.items()
                  if needle in loc.encode() or needle in data)


def tensors(job, concept: ConceptId) -> dict[str, bytes]:
    """The raw float32 bytes of a concept's trained tensors, from its artifact."""
    s3 = job["server"]
    client = s3.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3.bucket, Prefix=f"delete/concepts/{concept.key}/").get("Contents", [])]
    (key,) = [k for k in keys if k.endswith("concept.safetensors")]
    loaded = load_safetensors(client.get_object(Bucket=s3.bucket, Key=key)["Body"].read())
    return {"identifier": loaded["identifier"].numpy().tobytes(), "und_token_0": loaded["und_tokens"][0].numpy().tobytes()}


def pictures(job, concept: ConceptId, tmp_path: Path) -> dict[str, bytes]:
    client = MlflowClient(job["mlflow"].url)
    experiment = client.get_experiment_by_name("delete").experiment_id
    (run,) = client.search_runs([experiment], f"tags.`omnipersona.tenant` = '{concept.tenant}' AND "
                                              f"tags.`omnipersona.concept` = '{concept.concept}'")
    files = [f.path for f in client.list_artifacts(run.info.run_id, "pictures")]
    assert files, "the registration run has no pictures"
    return {f"picture {f}": Path(client.download_artifacts(run.info.run_id, f, str(tmp_path))).read_bytes() for f in files}


def cli(job, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], cwd=REPO, env=env or job["env"],
                          capture_output=True, text=True, timeout=600)


def delete(job) -> tuple[subprocess.CompletedProcess, dict]:
    done = cli(job, "delete", "--tenant", "acme", "--concept", GONE, "--config", str(job["yaml"]), "--purge-uploads", "--json")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    return done, (json.loads(lines[-1]) if lines else {})


def steps(report: dict) -> dict[str, dict]:
    return {s["store"]: s for s in report["steps"]}


def kept_state(job) -> dict:
    client = MlflowClient(job["mlflow"].url)
    out = {}
    for concept in [ConceptId("acme", job["kept"][0].name), ConceptId("globex", job["kept"][1].name)]:
        name = concept.model_name()
        out[concept.key] = (client.get_model_version_by_alias(name, "champion").version,
                            sorted(v.version for v in client.search_model_versions(f"name = '{name}'")),
                            tensors(job, concept))
    return out


# ---------------------------------------------------------------- the test


def test_delete_fails_loudly_while_mlflow_is_down_then_finishes_and_leaves_nothing(job, tmp_path):
    s3, server = job["server"], job["mlflow"]
    gone_tensors = tensors(job, GONE_ID)
    needles = {
        "key": GONE_ID.key.encode(),
        "model name": GONE_ID.model_name().encode(),
        "display name": GONE.encode(),
        **{f"tensor {k}": v for k, v in gone_tensors.items()},
        **pictures(job, GONE_ID, tmp_path),
    }
    before = search(inventory(job), needles)
    # The search sees the concept where the job put it: artifacts, MLflow files and rows, checkpoints,
    # summaries, quarantine report, eval set, uploads (else finding nothing later would prove nothing).
    places = {where(loc) for _, loc in before}
    assert {"concepts", "work", "eval", "uploads", "delete-mlflow", "db", "ray-runs"} <= places, places
    assert any(what == "tensor identifier" and "ray-runs" in loc for what, loc in before), "no checkpoint holds the tokens"
    assert any(what == "key" and loc.endswith("quarantine.json") for what, loc in before)
    assert any(what.startswith("picture") and "delete-mlflow" in loc for what, loc in before)
    others = kept_state(job)

    # MLflow down: the storage steps finish, the command fails and names what is left.
    server.stop()
    first, report = delete(job)
    assert first.returncode == 2, first.stdout[-3000:] + first.stderr[-3000:]
    by_store = steps(report)
    for store in ("artifacts", "eval_sets", "checkpoints", "examples", "summaries", "quarantine", "uploads"):
        assert by_store[store]["done"] and not by_store[store]["left"] and not by_store[store]["errors"], by_store[store]
    # The job's whole examples folder goes: other concepts' rows hold this one's photos as negatives.
    job_id = job["summary"].job_id
    assert by_store["examples"]["done"] == [f"{s3.bucket}/delete/work/{job_id}/examples"], by_store["examples"]
    assert all(Path(p).name.startswith(f"{job_id}-") for p in by_store["checkpoints"]["done"]), by_store["checkpoints"]
    assert by_store["mlflow.registered_model"]["errors"] and by_store["mlflow.registered_model"]["left"]
    assert by_store["mlflow.logged_models"]["not_attempted"] and by_store["mlflow.concept_runs"]["left"]
    assert "INCOMPLETE" in first.stdout and "LEFT: unknown: mlflow.registered_model" in first.stdout

    # Restarted, a second delete finishes the job.
    server.start()
    second, report = delete(job)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    by_store = steps(report)
    assert report["complete"] and all(not s["left"] for s in report["steps"])
    for store in ("mlflow.registered_model", "mlflow.logged_models", "mlflow.concept_runs", "mlflow.job_run_summaries"):
        assert by_store[store]["done"], by_store[store]
    for store in ("artifacts", "checkpoints", "examples", "summaries", "uploads"):
        assert not by_store[store]["done"]  # the first run removed them
    assert report["awaiting_gc"]["runs"] and report["awaiting_gc"]["logged_models"]

    # The database rows of the soft-deleted runs and logged models: `mlflow gc` as documented.
    gc = subprocess.run([sys.executable, "-m", "mlflow", "gc", "--tracking-uri", server.url,
                         "--backend-store-uri", server.backend_store_uri],
                        cwd=tmp_path, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}, capture_output=True, text=True, timeout=300)
    assert gc.returncode == 0, gc.stdout[-3000:] + gc.stderr[-3000:]
    assert all(run_id in gc.stdout for run_id in report["awaiting_gc"]["runs"]), gc.stdout

    left = search(inventory(job), needles)
    assert left == [], left

    # The other concepts are as they were: versions, champion, tokens; status still lists them.
    assert kept_state(job) == others
    status = cli(job, "status", job["summary"].job_id, "--config", str(job["yaml"]))
    assert status.returncode == 0, status.stderr[-2000:]
    assert GONE not in status.stdout and all(c.name in status.stdout for c in job["kept"]), status.stdout
    assert "2 done" in status.stdout  # the rendered counts follow the redaction

    # Nothing left to delete: a distinct exit code.
    third, report = delete(job)
    assert third.returncode == 4 and not report["found_anything"], third.stdout[-3000:]


# ---------------------------------------------------------------- pure logic (no services)


def test_a_concept_is_named_only_as_a_whole_name():
    from pipelines.delete import mentions

    named = mentions(ConceptId("acme", "rex"), "omnipersona")
    assert named("acme/rex") and named("| acme/rex | done |") and named("models:/omnipersona.acme.rex@champion")
    assert not named("acme/rex2") and not named("acme/t-rex") and not named("omnipersona.acme.rex-b") and not named("rex")


def test_redaction_keeps_the_other_rows_and_renders_counts_from_the_json():
    from datetime import datetime, timezone

    from pipelines.delete import mentions, redacted_files
    from pipelines.summary import ConceptOutcome, JobSummary

    gone, kept = ConceptId("acme", "rex"), ConceptId("acme", "rex2")
    summary = JobSummary(job_id="job-1", run_id="r1", started_at=datetime(2026, 11, 29, tzinfo=timezone.utc),
                         snapshot_uri="s3://b/uploads", config_hash="c")
    for c in (gone, kept):
        summary.add(ConceptOutcome(concept_key=c.key, outcome="done", model_name=c.model_name(), version="1", promoted=True))
    summary.finish()
    quarantine = json.dumps({"uploads_uri": "s3://b/uploads", "rows": [
        {"source": "uploads", "tenant": "acme", "concept": "rex", "key": "acme/rex/images/9.png", "reason": "not_an_image", "message": "x"},
        {"source": "uploads", "tenant": "acme", "concept": "rex2", "key": "acme/rex2/images/9.png", "reason": "not_an_image", "message": "x"},
        {"source": "negatives", "tenant": None, "concept": None, "key": "n/1.png", "reason": "empty_file",
         "message": "same bytes as acme/rex and acme/rex2"}]})
    files = {"w/j/runs/r1/summary.json": summary.to_json(), "w/j/runs/r1/summary.md": summary.to_markdown(), "w/j/quarantine.json": quarantine}

    out = redacted_files(files.__getitem__, sorted(files), gone, mentions(gone, "omnipersona"))

    assert set(out) == set(files)
    assert [c["concept_key"] for c in json.loads(out["w/j/runs/r1/summary.json"])["concepts"]] == [kept.key]
    assert "1 done" in out["w/j/runs/r1/summary.md"] and kept.model_name() in out["w/j/runs/r1/summary.md"]
    rows = json.loads(out["w/j/quarantine.json"])["rows"]
    assert [r["key"] for r in rows] == ["acme/rex2/images/9.png", "n/1.png"] and rows[1]["message"] == "same bytes as [deleted concept] and acme/rex2"
    assert not any(mentions(gone, "omnipersona")(text) for text in out.values())
    assert redacted_files(out.__getitem__, sorted(out), gone, mentions(gone, "omnipersona")) == {}  # nothing left to do


def test_a_failed_step_holds_back_the_steps_that_would_hide_its_items_and_a_rerun_finishes():
    from pipelines.delete import Store, delete_concept
    from pipelines.register.deletion import Found

    items = {"mlflow.a": ["m1"], "mlflow.b": ["m2"], "checkpoints": ["r1"], "examples": ["e1"], "summaries": ["s1"]}
    broken = {"checkpoints": OSError("disk on fire"), "mlflow.a": ConnectionError("connection refused")}

    def store(name: str, service: str, needs: tuple[str, ...] = ()) -> Store:
        def find():
            if name == "mlflow.a" and broken.get(name):
                raise broken[name]
            return [Found(i) for i in items[name]]

        def purge(found):
            if broken.get(name):
                raise broken[name]
            items[name].remove(found.label)

        return Store(name, name, find, purge, service=service, needs=needs)

    stores = [store("mlflow.a", "mlflow"), store("mlflow.b", "mlflow"), store("checkpoints", "runs"),
              store("examples", "work", ("checkpoints",)), store("summaries", "work", ("checkpoints", "examples"))]
    first = {s.store: s for s in delete_concept(GONE_ID, stores).steps}
    assert first["mlflow.a"].errors and first["mlflow.b"].not_attempted  # one unreachable service: its later steps wait
    assert first["checkpoints"].left == ["r1"] and "disk on fire" in first["checkpoints"].errors[0]
    assert first["examples"].not_attempted and first["summaries"].not_attempted and items["examples"] == ["e1"]

    broken.clear()
    second = delete_concept(GONE_ID, stores)
    assert second.complete and second.found_anything and not any(items.values())
    third = delete_concept(GONE_ID, stores)
    assert third.complete and not third.found_anything


def test_training_runs_of_a_concept_are_found_by_job_and_by_their_records(tmp_path):
    from pipelines.delete import TrainingRuns, WorkFolder, mentions

    named = mentions(GONE_ID, "omnipersona")
    work, runs = tmp_path / "work", tmp_path / "runs"
    (work / "job-a" / "examples").mkdir(parents=True)  # its summary names the concept
    (work / "job-a" / "runs" / "r1").mkdir(parents=True)
    (work / "job-a" / "runs" / "r1" / "summary.json").write_text(json.dumps({"concepts": [{"concept_key": GONE_ID.key}]}))
    (work / "job-b").mkdir()
    (work / "job-b" / "quarantine.json").write_text(json.dumps({"rows": []}))
    records = {
        "job-a-0123abcd": ("checkpoint_1/progress.json", {"active": []}),  # of a job that had the concept
        "job-a-2-0123abcd": ("checkpoint_1/progress.json", {"active": []}),  # another job whose id starts alike
        "job-b-4567ef01": ("log/export/1.json", {"kind": "export", "concept": GONE_ID.key}),  # a run log record names it
        "job-b-89abcdef": ("checkpoint_2/progress.json", {"active": ["acme/other", GONE_ID.key]}),
        "job-b-0000ffff": ("checkpoint_3/progress.json", {"active": ["acme/other"]}),
    }
    for run, (path, record) in records.items():
        (runs / run / path).parent.mkdir(parents=True)
        (runs / run / path).write_text(json.dumps(record))

    folder = WorkFolder(str(work), None, GONE_ID, named)
    found = TrainingRuns(str(runs), None, GONE_ID, folder.jobs_with_concept, named).find()

    assert folder.jobs_with_concept() == ["job-a"]
    assert sorted(Path(f.label).name for f in found) == ["job-a-0123abcd", "job-b-4567ef01", "job-b-89abcdef"]
