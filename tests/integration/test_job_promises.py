"""What an operator is promised across reruns, on the real services (Ray, DeepSpeed, SeaweedFS S3, an
MLflow server): versions follow the data, the recipe and the base; an unchanged rerun trains nothing
and keeps its own record; a failed concept makes the job exit with the documented code."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from omnipersona.identity import ConceptId
from omnipersona.model.tiny import build_tiny_bagel
from omnipersona.world import make_concepts
from omnipersona.world.uploads import EvalSetWriteOptions, UploadOptions, write_eval_sets, write_uploads
from pipelines.config import JobConfig
from pipelines.personalize import run_job
from pipelines.storage import filesystem_for, list_files, read_bytes
from tests.services.s3 import upload_tree

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
TENANT = "acme"


@pytest.fixture(scope="module")
def world(s3_server, tmp_path_factory):
    """Two concepts uploaded to S3 with their held-out eval sets."""
    local = tmp_path_factory.mktemp("promises")
    concepts = make_concepts(2, seed=33)
    write_uploads({TENANT: concepts}, local / "uploads", options=UploadOptions(views=3, edits=1, pool_negatives=4))
    shutil.move(local / "uploads" / "_negatives", local / "negatives")
    write_eval_sets({TENANT: concepts}, local / "eval", options=EvalSetWriteOptions(size=32, views=1, hard_negatives=1, random_negatives=1))
    upload_tree(s3_server, local / "uploads", "promises/uploads")
    upload_tree(s3_server, local / "negatives", "promises/negatives")
    upload_tree(s3_server, local / "eval", "promises/eval")
    return dict(local=local, concepts=concepts, server=s3_server)


def job_config(world, mlflow_server, model: str, experiment: str, steps: int = 2, evaluation: bool = False) -> dict:
    s3 = world["server"]
    return {
        "ingest": {"uploads_uri": s3.uri("promises/uploads"), "negatives_uri": s3.uri("promises/negatives"),
                   "vit_size": 32, "vae_size": 32, "epochs": 1, "samples_per_task": 1},
        "model": {"uri": model},
        "train": {"recipe": {"steps": steps, "batch_size": 2, "num_und_tokens": 2, "num_gen_tokens": 2, "vit_size": 32, "vae_size": 32},
                  "deepspeed": {"zero_stage": 2}, "scaling": {"num_workers": 1, "cpus_per_worker": 1}, "pack_size": 2},
        "artifacts": {"root": s3.uri(f"promises/{experiment}/concepts"), "work": s3.uri(f"promises/{experiment}/work"),
                      "runs": str(world["local"] / f"ray-runs-{experiment}")},
        # Registered model names are global to the server: each test its own prefix.
        "mlflow": {"tracking_uri": mlflow_server.tracking_uri, "experiment": experiment, "registry_prefix": experiment},
        "evaluation": {"enabled": evaluation, "max_examples": 1, "sample_images": False, "sampling_steps": 2,
                       **({"eval_sets_uri": s3.uri("promises/eval")} if evaluation else {})},
        "hard_negative_features": "colour_histogram",
    }


def storage_env(s3) -> dict[str, str]:
    return s3.job_env()


def run_in_process(config: dict, monkeypatch, s3):
    for key, value in storage_env(s3).items():
        monkeypatch.setenv(key, value)
    return run_job(JobConfig(**config))


def versions(tracking_uri: str, concepts, prefix: str = "promises-rerun") -> dict[str, list[int]]:
    client = MlflowClient(tracking_uri)
    out = {}
    for c in concepts:
        name = ConceptId(TENANT, c.name).model_name(prefix)
        out[name] = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    return out


def test_versions_follow_recipe_and_base_and_an_unchanged_rerun_trains_nothing(
        world, ray_session, mlflow_server_s3, tiny_bagel_dir, tmp_path, monkeypatch):
    s3, uri = world["server"], mlflow_server_s3.tracking_uri
    concepts = world["concepts"]
    base_a = str(tiny_bagel_dir)
    base_b = tmp_path / "other-base"
    build_tiny_bagel(base_b, seed=1)  # same architecture, other weights: another fingerprint

    first = run_in_process(job_config(world, mlflow_server_s3, base_a, "promises-rerun", steps=2), monkeypatch, s3)
    assert first.counts()["done"] == 2 and all(c.why == "new concept" for c in first.concepts), first.concepts
    assert versions(uri, concepts) == {n: [1] for n in versions(uri, concepts)}

    # A recipe change retrains every concept into version 2, and says so.
    second = run_in_process(job_config(world, mlflow_server_s3, base_a, "promises-rerun", steps=3), monkeypatch, s3)
    assert second.counts()["done"] == 2 and all(c.why == "recipe changed since v1" for c in second.concepts), second.concepts
    assert all(v == [1, 2] for v in versions(uri, concepts).values())

    # Another base (different fingerprint) retrains again.
    third_cfg = job_config(world, mlflow_server_s3, str(base_b), "promises-rerun", steps=3)
    third = run_in_process(third_cfg, monkeypatch, s3)
    assert third.counts()["done"] == 2 and all(c.why == "base model changed since v2" for c in third.concepts), third.concepts
    assert all(v == [1, 2, 3] for v in versions(uri, concepts).values())

    # The same config again: nothing trained, no new version, a record of its own.
    fourth = run_in_process(third_cfg, monkeypatch, s3)
    assert fourth.counts()["skipped"] == 2 and fourth.counts()["done"] == 0, fourth.concepts
    assert all(v == [1, 2, 3] for v in versions(uri, concepts).values())
    assert fourth.job_id == third.job_id and fourth.run_id != third.run_id

    # Both runs of that job keep their own summary and MLflow run; `omnipersona status` lists both.
    fs, work = filesystem_for(s3.uri(f"promises/promises-rerun/work/{third.job_id}/runs"), s3.storage_config())
    summaries = {json.loads(read_bytes(fs, f.path))["run_id"]: json.loads(read_bytes(fs, f.path))
                 for f in list_files(fs, work) if f.path.endswith("/summary.json")}
    assert set(summaries) == {third.run_id, fourth.run_id}
    assert {c["outcome"] for c in summaries[third.run_id]["concepts"]} == {"done"}
    assert {c["outcome"] for c in summaries[fourth.run_id]["concepts"]} == {"skipped"}
    client = MlflowClient(uri)
    for run in (third, fourth):
        local = client.download_artifacts(run.run_id, "summary/summary.json", str(tmp_path / run.run_id))
        assert json.loads(Path(local).read_text())["run_id"] == run.run_id
    job_yaml = tmp_path / "job.yaml"
    job_yaml.write_text(yaml.safe_dump(third_cfg))
    status = subprocess.run([sys.executable, "-m", "jobs.cli", "status", third.job_id, "--config", str(job_yaml)],
                            cwd=REPO, env={**os.environ, **storage_env(s3)}, capture_output=True, text=True, timeout=300)
    assert status.returncode == 0, status.stderr[-2000:]
    assert "2 run(s)" in status.stdout and third.run_id in status.stdout and fourth.run_id in status.stdout, status.stdout


def assert_log_for_people(stdout: str) -> None:
    """The job's log: its first line names the job and its MLflow run, no line twice, no Ray noise."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert re.search(r" omnipersona\.job: job job-[0-9a-f]{12}, MLflow run [0-9a-f]{32}$", lines[0]), lines[:3]
    assert not sorted({line for line in lines if lines.count(line) > 1}), stdout[-3000:]
    assert not [line for line in lines if "pid=" in line or "PlacementGroupCleaner" in line], stdout[-3000:]


def submit(ray_head, job_yaml: Path, env_vars: dict) -> subprocess.CompletedProcess:
    cmd = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", ray_head.dashboard_url,
           "--working-dir", ".", "--runtime-env-json", json.dumps({"env_vars": env_vars}), "--",
           "python", "-m", "jobs.personalize", "--config", str(job_yaml)]
    return subprocess.run(cmd, cwd=REPO, env=ray_head.env, capture_output=True, text=True, timeout=900)


def test_a_failed_concept_fails_the_job_with_its_exit_code_and_the_summary_says_why(
        world, ray_head, mlflow_server_s3, tiny_bagel_dir, tmp_path):
    """One concept's held-out eval set is corrupt: its evaluation raises, the other concept is
    registered, the job exits 3 (`omnipersona personalize` and `ray job submit` both show it)."""
    s3 = world["server"]
    broken, healthy = world["concepts"]
    s3.client().put_object(Bucket=s3.bucket, Key=f"promises/eval/{TENANT}/{broken.name}/manifest.json", Body=b"{not json")
    config = job_config(world, mlflow_server_s3, str(tiny_bagel_dir), "promises-failure", evaluation=True)
    job_yaml = tmp_path / "job.yaml"
    job_yaml.write_text(yaml.safe_dump(config))
    env = {**os.environ, **storage_env(s3), "RAY_ADDRESS": ray_head.gcs_address}
    cli = subprocess.run([sys.executable, "-m", "jobs.cli", "personalize", "--config", str(job_yaml)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=900)
    assert cli.returncode == 3, cli.stdout[-3000:] + cli.stderr[-3000:]
    assert "1 done, 0 skipped, 0 quarantined, 1 failed" in cli.stdout, cli.stdout[-3000:]
    assert_log_for_people(cli.stdout)

    fs, work = filesystem_for(s3.uri("promises/promises-failure/work"), s3.storage_config())
    (summary_path,) = [f.path for f in list_files(fs, work) if f.path.endswith("/summary.json")]
    summary = json.loads(read_bytes(fs, summary_path))
    outcome = {c["concept_key"]: c for c in summary["concepts"]}
    assert outcome[f"{TENANT}/{broken.name}"]["outcome"] == "failed" and outcome[f"{TENANT}/{broken.name}"]["reason"]
    assert outcome[f"{TENANT}/{healthy.name}"]["outcome"] == "done"
    assert MlflowClient(mlflow_server_s3.tracking_uri).get_run(summary["run_id"]).info.status == "FAILED"

    # The same job through `ray job submit`: the healthy concept is skipped, the broken one fails
    # again, and Ray reports the job as failed.
    again = submit(ray_head, job_yaml, {})  # the head's env holds the credentials (tests.services.ray_head)
    assert again.returncode != 0, again.stdout[-3000:]
    assert "failed" in (again.stdout + again.stderr).lower()
    assert "0 done, 1 skipped, 0 quarantined, 1 failed" in again.stdout, again.stdout[-3000:]


def test_a_killed_job_resubmitted_resumes_at_its_checkpoint(world, ray_head, mlflow_server_s3, tiny_bagel_dir, tmp_path):
    """The job process itself dies mid-training (SIGKILL, as when a head pod is evicted); the same
    config submitted again resumes the same Ray run at the checkpointed pack and step and exports
    every concept once."""
    import signal
    import time

    from pipelines.train.run_log import read_run_log

    s3 = world["server"]
    config = job_config(world, mlflow_server_s3, str(tiny_bagel_dir), "promises-resume", steps=6)
    config["train"].update(pack_size=1, checkpoint_every=1)  # two packs, a checkpoint after every step
    job_yaml = tmp_path / "job.yaml"
    job_yaml.write_text(yaml.safe_dump(config))
    env = {**os.environ, **storage_env(s3), "RAY_ADDRESS": ray_head.gcs_address}
    runs_root = Path(config["artifacts"]["runs"])
    command = [sys.executable, "-m", "jobs.personalize", "--config", str(job_yaml)]

    def checkpoints() -> list[dict]:
        return [r for d in runs_root.glob("*") if d.is_dir() for r in read_run_log(str(d), None, "checkpoint")]

    first = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    deadline = time.time() + 600
    # Kill it once the second pack has a mid-pack checkpoint (pack 1 exported, pack 2 under way).
    while not any(r["pack_index"] == 1 and r["step"] >= 2 for r in checkpoints()):
        assert first.poll() is None, "the job ended before it could be killed"
        assert time.time() < deadline, "no checkpoint of the second pack within 10 minutes"
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=60)
    recorded = {(r["pack_index"], r["step"]) for r in checkpoints()}
    (run_dir,) = [d for d in runs_root.glob("*") if d.is_dir()]

    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert [d for d in runs_root.glob("*") if d.is_dir()] == [run_dir], "the resubmission started another Ray run"
    resumed = read_run_log(str(run_dir), None, "resume")
    assert resumed, "the resubmitted job did not resume from a checkpoint"
    # At a checkpoint the killed run reported, mid-way through the second pack — not from its start.
    # (Ray may not have registered the very last report before the kill: then the one before it.)
    at = (resumed[0]["pack_index"], resumed[0]["step"])
    assert at in recorded and at[0] == 1 and at[1] > 0, (resumed[0], sorted(recorded))
    assert f"[train] resumed at pack {resumed[0]['pack']} step {resumed[0]['step']}" in again.stdout
    assert again.stdout.count("[train] resumed at pack") == 1, again.stdout[-3000:]
    assert_log_for_people(again.stdout)
    exports = read_run_log(str(run_dir), None, "export")
    assert sorted(r["concept"] for r in exports) == sorted(f"{TENANT}/{c.name}" for c in world["concepts"]), exports
    assert "2 done" in again.stdout, again.stdout[-3000:]
