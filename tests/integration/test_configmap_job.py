"""The KubeRay ConfigMap's job.yaml, end to end: what the nightly RayJob mounts at /config/job.yaml,
submitted with `ray job submit` to a Ray head, against SeaweedFS and an MLflow server.

Two kinds of change reach the deployed file, each listed here and nowhere else:
- endpoints: its S3 buckets become prefixes of the test bucket (the base model is uploaded there in
  the release layout, so the job reads it from S3 as in production), its MLflow URI the test server's;
  credentials come from the head's environment, as from the Secret;
- `CPU_OVERLAY`: what a 2-core machine without a GPU cannot run as written — GPUs, bf16, the 7B base's
  picture sizes (the tiny base's position tables are 32 px) and 2,000 steps.
Everything else runs as deployed (pack size, ZeRO stage, 2 workers, 2 epochs, 2 evaluation actors,
the gate's minimum, the experiment, the default registry prefix) and the test checks that it did."""
from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from omnipersona.identity import ConceptId
from omnipersona.world import make_concepts
from omnipersona.world.uploads import UploadOptions, write_uploads
from pipelines.config import JobConfig
from pipelines.storage import filesystem_for, list_files
from tests.services.job_config import merged
from tests.services.ray_head import submit_command, wait_for_job_agent
from tests.services.s3 import upload_tree

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
CONFIGMAP = REPO / "infra" / "kuberay" / "job-config.yaml"
TENANT = "nightly"  # registered names use the deployed default prefix: a tenant no other test uses

CPU_OVERLAY = {
    "ingest": {"vit_size": 32, "vae_size": 32},                   # the tiny base's sizes (7B: 224 / 512)
    "train": {"recipe": {"steps": 2, "batch_size": 2},            # CPU time (deployed: 2000 x 8)
              "deepspeed": {"bf16": False},                       # no bf16 kernels on this CPU path
              "scaling": {"use_gpu": False, "cpus_per_worker": 1}},  # 4 logical CPUs on the test head
    "evaluation": {"gpus_per_actor": 0, "sampling_steps": 2, "max_examples": 4},  # no GPU; CPU time
}


def deployed_job_yaml() -> dict:
    (doc,) = [d for d in yaml.safe_load_all(CONFIGMAP.read_text()) if d.get("kind") == "ConfigMap"]
    return yaml.safe_load(doc["data"]["job.yaml"])


def with_endpoints(node, buckets: dict[str, str]):
    if isinstance(node, dict):
        return {k: with_endpoints(v, buckets) for k, v in node.items()}
    if isinstance(node, str):
        for deployed, here in buckets.items():
            if node.startswith(deployed):
                return here + node[len(deployed):]
    return node


def test_the_configmaps_job_yaml_runs_end_to_end(ray_head, s3_server, mlflow_server, tiny_bagel_dir, tmp_path):
    deployed = deployed_job_yaml()
    buckets = {"s3://omnipersona-data/": s3_server.uri("configmap/data") + "/",
               "s3://omnipersona-models/": s3_server.uri("configmap/models") + "/"}
    config = merged(with_endpoints(deployed, buckets), CPU_OVERLAY)
    config["mlflow"]["tracking_uri"] = mlflow_server.tracking_uri
    # Nothing else changed: every leaf of the deployed file outside the overlay and the endpoints holds.
    unchanged = [("train", "pack_size"), ("train", "deepspeed", "zero_stage"), ("train", "scaling", "num_workers"),
                 ("ingest", "epochs"), ("evaluation", "actors"), ("gate", "minimums"), ("mlflow", "experiment")]
    for path in unchanged:
        a, b = deployed, config
        for key in path:
            a, b = a[key], b[key]
        assert a == b, path

    concepts = make_concepts(2, seed=83)
    write_uploads({TENANT: concepts}, tmp_path / "uploads", options=UploadOptions(views=6, edits=1, pool_negatives=4))
    shutil.move(tmp_path / "uploads" / "_negatives", tmp_path / "negatives")
    upload_tree(s3_server, tmp_path / "uploads", "configmap/data/uploads")
    upload_tree(s3_server, tmp_path / "negatives", "configmap/data/negatives")
    upload_tree(s3_server, Path(tiny_bagel_dir), "configmap/models/bagel-7b-mot")
    job_yaml = tmp_path / "job.yaml"
    job_yaml.write_text(yaml.safe_dump(config))
    cfg = JobConfig(**config)
    assert cfg.model.uri == s3_server.uri("configmap/models/bagel-7b-mot")

    wait_for_job_agent(ray_head, REPO)
    submission_id = f"configmap-{uuid.uuid4().hex[:8]}"
    # The RayJob's entrypoint (infra/kuberay/rayjob.yaml), with the mounted file's path here.
    done = subprocess.run(submit_command(ray_head, ["python", "-m", "jobs.personalize", "--config", str(job_yaml)],
                                         submission_id=submission_id),
                          cwd=REPO, env=ray_head.env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]

    fs, work = filesystem_for(cfg.artifacts.work_root, s3_server.storage_config())
    (summary_path,) = [f.path for f in list_files(fs, work) if f.path.endswith("/summary.json")]
    with fs.open_input_stream(summary_path) as stream:
        summary = json.loads(stream.read())
    outcomes = {c["concept_key"]: c for c in summary["concepts"]}
    assert sorted(outcomes) == sorted(f"{TENANT}/{c.name}" for c in concepts)
    assert {c["outcome"] for c in outcomes.values()} == {"done"}, outcomes
    assert summary["driver"]["base_weights_loaded"] is False, "evaluation ran on the 2 actors, not the driver"

    # Ray Train ran the deployed 2 workers (ZeRO-2) and wrote its runs under the deployed default.
    from pipelines.train.run_log import read_run_log

    runs_fs, runs_root = filesystem_for(cfg.artifacts.runs_root, s3_server.storage_config())
    depth = len(runs_root.rstrip("/").split("/"))
    run_names = {f.path.split("/")[depth] for f in list_files(runs_fs, runs_root)}
    starts = [r for name in run_names
              for r in read_run_log(f"{cfg.artifacts.runs_root.rstrip('/')}/{name}", s3_server.storage_config(), "start")]
    assert starts and {r["world"] for r in starts} == {2}, starts

    client = MlflowClient(mlflow_server.tracking_uri)
    assert client.get_experiment_by_name("omnipersona-nightly") is not None
    for concept in concepts:
        name = ConceptId(TENANT, concept.name).model_name(cfg.mlflow.registry_prefix)
        assert client.get_model_version_by_alias(name, "candidate").version == "1"
        passed_gate = not outcomes[f"{TENANT}/{concept.name}"]["reason"].startswith("gate:")
        champion = [a for a in client.get_registered_model(name).aliases if a == "champion"]
        assert bool(champion) == passed_gate, (name, outcomes[f"{TENANT}/{concept.name}"])
