"""End to end, as an MLOps team runs it: `ray job submit` to a Ray head, S3 (SeaweedFS), MLflow."""
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from safetensors.torch import load as safetensors_load

from omnipersona.world import make_concepts
from omnipersona.world.uploads import UploadOptions, write_uploads
from pipelines.storage import filesystem_for, list_files
from pipelines.summary import OUTCOMES
from tests.services.ray_head import agent_not_up, submit_command
from tests.services.s3 import upload_tree

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def ray_job_submit(ray_head, job_yaml: Path, env_vars: dict) -> subprocess.CompletedProcess:
    """`ray job submit` under a submission id of its own (`done.submission_id`)."""
    for _ in range(24):
        submission_id = f"e2e-{uuid.uuid4().hex[:12]}"
        cmd = submit_command(ray_head, ["python", "-m", "jobs.personalize", "--config", str(job_yaml)],
                             submission_id=submission_id, runtime_env={"env_vars": env_vars})
        done = subprocess.run(cmd, cwd=REPO, env=ray_head.env, capture_output=True, text=True, timeout=900)
        done.submission_id = submission_id
        if not agent_not_up(done.stdout + done.stderr):
            return done
        time.sleep(5)
    return done


def cli(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], cwd=REPO, env=env or os.environ.copy(),
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def submitted(ray_head, s3_server, mlflow_server_s3, tiny_bagel_dir, tmp_path_factory):
    local = tmp_path_factory.mktemp("e2e")
    concepts = make_concepts(5, seed=21)
    write_uploads({"acme": concepts[:3], "globex": concepts[3:]}, local / "uploads", options=UploadOptions(views=4, edits=1, pool_negatives=8))
    shutil.move(local / "uploads" / "_negatives", local / "negatives")
    broken = local / "uploads" / "globex" / "torn"
    (broken / "images").mkdir(parents=True)
    (broken / "concept.json").write_text('{"display_name": "torn"')
    shutil.copy(next((local / "uploads" / "acme").glob("*/images/*.png")), broken / "images" / "000.png")
    upload_tree(s3_server, local / "uploads", "e2e/uploads")
    upload_tree(s3_server, local / "negatives", "e2e/negatives")
    config = {
        "ingest": {"uploads_uri": s3_server.uri("e2e/uploads"), "negatives_uri": s3_server.uri("e2e/negatives"),
                   "vit_size": 32, "vae_size": 32, "epochs": 2, "samples_per_task": 2},
        "model": {"uri": str(tiny_bagel_dir)},
        "train": {"recipe": {"steps": 4, "batch_size": 2, "lr": 0.02, "num_und_tokens": 4, "num_gen_tokens": 4, "vit_size": 32, "vae_size": 32},
                  "deepspeed": {"zero_stage": 2}, "scaling": {"num_workers": 2, "cpus_per_worker": 1}, "pack_size": 4, "checkpoint_every": 2},
        "artifacts": {"root": s3_server.uri("e2e/concepts"), "work": s3_server.uri("e2e/work"), "runs": str(local / "ray-runs")},
        "mlflow": {"tracking_uri": mlflow_server_s3.tracking_uri, "experiment": "e2e"},
        "gate": {"minimums": {"recognition_accuracy": 0.0}},
        "evaluation": {"max_examples": 2, "sample_images": True, "sampling_steps": 2},
    }
    job_yaml = local / "job.yaml"
    job_yaml.write_text(yaml.safe_dump(config))
    # Endpoints and secrets come from the environment, never from the YAML.
    secrets = {
        "OMNIPERSONA_STORAGE__ENDPOINT_OVERRIDE": s3_server.endpoint,
        "OMNIPERSONA_STORAGE__SCHEME": "http",
        "OMNIPERSONA_STORAGE__ACCESS_KEY": s3_server.access_key,
        "OMNIPERSONA_STORAGE__SECRET_KEY": s3_server.secret_key,
        "OMNIPERSONA_STORAGE__REGION": s3_server.region,
    }
    # The head's environment holds the S3 credentials (tests.services.ray_head): Ray logs a
    # submission's runtime env, so secrets never go in it.
    first = ray_job_submit(ray_head, job_yaml, {})
    return dict(first=first, yaml=job_yaml, secrets=secrets, config=config, local=local, concepts=concepts, server=s3_server)


def names(config):
    return sorted(m.name for m in MlflowClient(config["mlflow"]["tracking_uri"]).search_registered_models())


def test_submitted_job_registers_healthy_concepts_and_reports_the_broken_one(submitted):
    first = submitted["first"]
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    client = MlflowClient(submitted["config"]["mlflow"]["tracking_uri"])
    registered = names(submitted["config"])
    assert len(registered) == 5
    for name in registered:
        version = client.get_model_version_by_alias(name, "champion")
        assert version.version == "1"
        assert client.get_model_version_by_alias(name, "candidate").version == "1"
    server = submitted["server"]
    fs, base = filesystem_for(server.uri("e2e/work"), server.storage_config())
    summaries = [f.path for f in list_files(fs, base) if f.path.endswith("summary.json")]
    assert len(summaries) == 1
    with fs.open_input_stream(summaries[0]) as f:
        summary = json.loads(f.read())
    status = cli("status", summary["job_id"], "--config", str(submitted["yaml"]), env={**os.environ, **submitted["secrets"]})
    assert status.returncode == 0 and "5 done, 0 skipped, 1 quarantined, 0 failed" in status.stdout, status.stdout + status.stderr
    torn = [c for c in summary["concepts"] if c["concept_key"] == "globex/torn"]
    assert torn and torn[0]["outcome"] == "quarantined" and "concept.json" in torn[0]["reason"]
    assert sum(c["outcome"] == "done" for c in summary["concepts"]) == 5


def job_summary(submitted) -> dict:
    server = submitted["server"]
    fs, base = filesystem_for(server.uri("e2e/work"), server.storage_config())
    (path,) = [f.path for f in list_files(fs, base) if f.path.endswith("summary.json")]
    with fs.open_input_stream(path) as f:
        return json.loads(f.read())


def job_log(done: subprocess.CompletedProcess) -> list[str]:
    """The job's own output in what `ray job submit` printed: after Ray's "Running entrypoint for
    job ..." line, up to the submission's closing "----" line."""
    lines = done.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Running entrypoint for job "))
    end = next(i for i, line in enumerate(lines) if i > start and " cli.py:" in line and "-----" in line)
    return [line for line in lines[start + 1:end] if line.strip()]


def test_the_job_log_is_for_people(submitted):
    """Job id first; one line per stage; progress inside packs with rate and ETA; every line once;
    none of Ray's, MLflow's or Python's noise."""
    first = submitted["first"]
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    summary = job_summary(submitted)
    lines = job_log(first)
    text = "\n".join(lines)
    assert f"job {summary['job_id']}, MLflow run {summary['run_id']}, Ray submission {first.submission_id}" in lines[0], lines[:5]
    for stage in ("[1/5] ingest: ", "[2/5] select: ", "[3/5] train: ", "[4/5] evaluate and [5/5] register: "):
        assert sum(stage in line for line in lines) == 1, (stage, text)
    steps = [line for line in lines if re.search(r"\[train\] pack \d/2 step \d/4 \| loss [\d.]+ per concept \| "
                                                 r"[\d.]+ steps/s \| pack ETA \d+s \| run ETA \d+s$", line)]
    assert {re.search(r"pack (\d)/2", line).group(1) for line in steps} == {"1", "2"}, text
    assert sum("[train] pack 1/2 done in" in line for line in lines) == 1, text
    repeated = sorted({line for line in lines if lines.count(line) > 1})
    assert not repeated, repeated
    for noise in ("PlacementGroupCleaner", "TrainController", "RayTrainWorker", "pickle", "can be interpreted in multiple ways",
                  "Warning", "Downloading artifacts", "logging_progress", "INFO worker.py", "View run", "View experiment"):
        assert noise not in text, (noise, text)


def test_mlflow_tracks_the_recipe_the_curves_each_concepts_metrics_and_the_submission(submitted):
    first = submitted["first"]
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    client = MlflowClient(submitted["config"]["mlflow"]["tracking_uri"])
    run = client.get_run(job_summary(submitted)["run_id"])
    recipe = submitted["config"]["train"]["recipe"]
    # The recipe and the job's settings are params (credentials and the tracking URI are not).
    params = run.data.params
    assert {k: params[f"recipe.{k}"] for k in ("steps", "batch_size", "lr")} == {k: str(recipe[k]) for k in ("steps", "batch_size", "lr")}
    assert params["train.pack_size"] == "4" and params["train.deepspeed.zero_stage"] == "2"
    assert params["ingest.epochs"] == "2" and params["gate.minimums.recognition_accuracy"] == "0.0"
    assert not [k for k in params if k.startswith("storage") or "tracking_uri" in k]
    assert run.data.tags["omnipersona.ray_submission_id"] == first.submission_id
    # Per-concept metrics live only in each concept's registration run (a child of the job run).
    assert set(run.data.metrics) == {f"concepts_{o}" for o in OUTCOMES}
    children = client.search_runs([run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    assert len(children) == 5
    curves = {}
    for child in children:
        history = client.get_metric_history(child.info.run_id, "train_loss")
        assert sorted(m.step for m in history) == [1, 2, 3, 4], child.info.run_name
        assert [m.step for m in client.get_metric_history(child.info.run_id, "train_loss_ce")] == [1, 2, 3, 4]
        curves[child.info.run_name] = [m.value for m in sorted(history, key=lambda m: m.step)]
        # Sample pictures named for what they show: the task and its prompt.
        pictures = sorted(a.path for a in client.list_artifacts(child.info.run_id, "pictures"))
        assert len(pictures) == 2 and pictures[0].startswith("pictures/edit_source_result_Put_"), pictures
        assert pictures[1].startswith("pictures/text-to-image_A_photo_of_"), pictures
    a, b = sorted(children, key=lambda r: r.info.run_name)[:2]
    assert "final_loss_ce" in a.data.metrics and "final_loss_ce" in b.data.metrics
    assert curves[a.info.run_name] != curves[b.info.run_name]
    assert a.data.metrics["final_loss_ce"] != b.data.metrics["final_loss_ce"]


def versions(config) -> dict[str, list[str]]:
    client = MlflowClient(config["mlflow"]["tracking_uri"])
    return {n: sorted(v.version for v in client.search_model_versions(f"name = '{n}'")) for n in names(config)}


def test_second_submission_registers_nothing_new(ray_head, submitted):
    before = versions(submitted["config"])
    again = ray_job_submit(ray_head, submitted["yaml"], {})
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    assert "nothing to train" in again.stdout or "0 to train" in again.stdout
    assert versions(submitted["config"]) == before


def test_status_takes_the_job_id_or_the_ray_submission_id(submitted):
    env = {**os.environ, **submitted["secrets"]}
    first = submitted["first"]
    by_submission = cli("status", first.submission_id, "--config", str(submitted["yaml"]), "--json", env=env)
    assert by_submission.returncode == 0, by_submission.stderr[-2000:]
    report = json.loads(by_submission.stdout)
    assert f"Ray submission {first.submission_id} ran job {report['job_id']}" in by_submission.stderr
    assert report["state"] == "complete" and report["runs"]
    by_job = cli("status", report["job_id"], "--config", str(submitted["yaml"]), "--json", env=env)
    assert json.loads(by_job.stdout) == report
    unknown = cli("status", "no-such-submission", "--config", str(submitted["yaml"]), "--json", env=env)
    assert unknown.returncode == 1 and json.loads(unknown.stdout)["state"] == "unknown"


def test_infer_answers_with_a_champion_concept(submitted, tiny_bagel_dir):
    name = submitted["concepts"][0].name
    photo = next((submitted["local"] / "uploads" / "acme" / name / "images").glob("*.png"))
    out = cli("infer", "understand", "--model", f"models:/omnipersona.acme.{name}@champion",
              "--tracking-uri", submitted["config"]["mlflow"]["tracking_uri"], "--base", str(tiny_bagel_dir),
              "--prompt", f"Is <{name}> in this image?", "--image", str(photo), "--image-size", "32")
    assert out.returncode == 0, out.stderr[-3000:]
    answer = json.loads(out.stdout.strip().splitlines()[-1])
    assert isinstance(answer["answer"], str) and 0.0 <= answer["yes_probability"] <= 1.0


def test_delete_removes_a_concept_completely(submitted):
    from tests.integration.test_delete import decoded, s3_objects, search

    name = submitted["concepts"][1].name
    config = submitted["config"]
    env = os.environ.copy()
    env.update(submitted["secrets"])
    server = submitted["server"]
    fs, root = filesystem_for(server.uri("e2e/concepts"), server.storage_config())
    (tensors,) = [f.path for f in list_files(fs, f"{root}/acme/{name}") if f.path.endswith("concept.safetensors")]
    with fs.open_input_stream(tensors) as f:
        identifier = safetensors_load(f.read())["identifier"].numpy().tobytes()
    out = cli("delete", "--tenant", "acme", "--concept", name, "--config", str(submitted["yaml"]), "--purge-uploads", "--json", env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    done = {s["store"]: s["done"] for s in report["steps"]}
    assert report["complete"] and all(done[s] for s in ("uploads", "artifacts", "examples", "summaries", "mlflow.logged_models",
                                                         "mlflow.concept_runs", "mlflow.registered_model"))
    client = MlflowClient(config["mlflow"]["tracking_uri"])
    assert f"omnipersona.acme.{name}" not in names(config)
    assert not client.search_logged_models([client.get_experiment_by_name("e2e").experiment_id],
                                           filter_string=f"tags.tenant = 'acme' AND tags.concept = '{name}'")
    # Nothing of it in the bucket, by name or content: artifacts, examples, summaries, uploads, MLflow's
    # files (test_delete.py also checks the MLflow database after `mlflow gc` and the checkpoints).
    bucket = {loc: decoded(loc, data) for loc, data in s3_objects(server).items()}
    needles = {"key": f"acme/{name}".encode(), "model name": f"omnipersona.acme.{name}".encode(), "identifier": identifier}
    assert search(bucket, needles) == []
    # The other concepts are untouched, and the job's status no longer lists the deleted one.
    assert len(names(config)) == 4
    summary_job = report["steps"][[s["store"] for s in report["steps"]].index("summaries")]["done"][0].split("/")[-4]
    status = cli("status", summary_job, "--config", str(submitted["yaml"]), env=env)
    assert status.returncode == 0 and f"acme/{name}" not in status.stdout, status.stdout
    assert all(c.name in status.stdout for c in submitted["concepts"] if c.name != name), status.stdout


def test_no_credential_is_written_anywhere(submitted, ray_head, mlflow_server_s3):
    """After the job: neither the S3 secret key nor the access key is in any log (the job's output,
    the Ray head's session logs, the MLflow server's log), the MLflow store (its database, its
    artifacts on S3), an artifact, a summary or the work data (every object under the job's
    prefixes), or the Ray Train run folders."""
    server = submitted["server"]
    needles = {"secret key": server.secret_key.encode(), "access key": server.access_key.encode()}
    found: list[tuple[str, str]] = []
    scanned = {"local": 0, "s3": 0}

    def scan(where: str, data: bytes) -> None:
        found.extend((what, where) for what, needle in needles.items() if needle in data)

    first = submitted["first"]
    scan("the ray job submit output", (first.stdout + first.stderr).encode())
    mlflow_dir = Path(mlflow_server_s3.log_path).parent  # its sqlite database and its log
    for root in (Path(ray_head.temp_dir), mlflow_dir, submitted["local"] / "ray-runs"):
        for path in Path(root).rglob("*"):
            if path.is_file() and not path.is_symlink() and not path.is_socket():
                try:
                    scan(str(path), path.read_bytes())
                except OSError:  # a file removed meanwhile by the running head
                    continue
                scanned["local"] += 1
    client = server.client()
    for prefix in ("e2e/", "mlflow/"):  # uploads, artifacts, work (examples, summaries, quarantine); MLflow's artifacts
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=server.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                scan(f"s3://{server.bucket}/{obj['Key']}", client.get_object(Bucket=server.bucket, Key=obj["Key"])["Body"].read())
                scanned["s3"] += 1
    assert scanned["local"] > 50 and scanned["s3"] > 20, scanned  # the scan saw the stores
    assert any(p.name.endswith(".db") for p in mlflow_dir.iterdir()), "the MLflow database was scanned"
    assert not found, found
