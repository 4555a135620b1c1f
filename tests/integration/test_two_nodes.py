"""The whole job on a two-node Ray cluster (issue 17): a head and a second node started with
`ray start` on this machine, each offering one `trainer_slot`, so the two training workers must run
on different nodes; the job comes by `ray job submit`, and every byte goes through S3 (SeaweedFS) and
the MLflow server (its artifacts on S3): uploads, the base model, examples, Ray Train's checkpoints
and run log, artifacts, summaries. Nothing depends on the driver's local disk.

Evaluation runs on two Ray evaluation actors (`evaluation.actors`), each loading the base once: the
driver's summary says it never loaded the base's weights, and every concept has its metrics.
Break-checked: with `train.scaling.resources_per_worker` not passed to Ray Train, both workers ran on
one node and the node assertion failed."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from omnipersona.identity import ConceptId
from omnipersona.world import make_concepts
from omnipersona.world.uploads import UploadOptions, write_uploads
from pipelines.storage import filesystem_for, list_files, read_bytes
from pipelines.train.run_log import read_run_log
from tests.services.ray_head import add_worker_node, ray_head_env, start_ray_head, stop_ray, submit_command, wait_for_job_agent
from tests.services.s3 import upload_tree

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
TENANT = "acme"
NODES_PROBE = "import ray; ray.init(); print(sorted(n['NodeID'] for n in ray.nodes() if n['Alive']))"


@pytest.fixture(scope="module")
def two_nodes(s3_server):
    head = start_ray_head(ray_head_env(s3_server), num_cpus=2, resources={"trainer_slot": 1})
    node_dir = None
    try:
        node_dir = add_worker_node(head, num_cpus=2, resources={"trainer_slot": 1})
        deadline = time.monotonic() + 120
        while True:
            probe = subprocess.run([sys.executable, "-c", NODES_PROBE], env={**head.env, "RAY_ADDRESS": head.gcs_address},
                                   capture_output=True, text=True, timeout=120)
            node_ids = json.loads(probe.stdout.strip().splitlines()[-1].replace("'", '"')) if probe.returncode == 0 else []
            if len(node_ids) == 2:
                break
            assert time.monotonic() < deadline, probe.stdout[-2000:] + probe.stderr[-2000:]
            time.sleep(2)
        head.node_ids = node_ids
        yield head
    finally:
        if node_dir:
            stop_ray(node_dir)
        stop_ray(head.temp_dir)


def test_a_job_trains_on_both_nodes_evaluates_on_actors_through_s3_and_the_driver_never_loads_the_base(
        two_nodes, s3_server, mlflow_server_s3, tiny_bagel_dir, tmp_path):
    prefix = "two-nodes"
    concepts = make_concepts(3, seed=53)
    write_uploads({TENANT: concepts}, tmp_path / "uploads", options=UploadOptions(views=3, edits=1, pool_negatives=4))
    shutil.move(tmp_path / "uploads" / "_negatives", tmp_path / "negatives")
    upload_tree(s3_server, tmp_path / "uploads", f"{prefix}/uploads")
    upload_tree(s3_server, tmp_path / "negatives", f"{prefix}/negatives")
    upload_tree(s3_server, tiny_bagel_dir, f"{prefix}/base")
    config = {
        "model": {"uri": s3_server.uri(f"{prefix}/base")},
        "ingest": {"uploads_uri": s3_server.uri(f"{prefix}/uploads"), "negatives_uri": s3_server.uri(f"{prefix}/negatives"),
                   "vit_size": 32, "vae_size": 32, "epochs": 1, "samples_per_task": 1},
        "train": {"recipe": {"steps": 2, "batch_size": 2, "num_und_tokens": 2, "num_gen_tokens": 2, "vit_size": 32, "vae_size": 32},
                  "deepspeed": {"zero_stage": 2},
                  "scaling": {"num_workers": 2, "cpus_per_worker": 1, "resources_per_worker": {"trainer_slot": 1}},
                  "pack_size": 3},
        "artifacts": {"root": s3_server.uri(f"{prefix}/concepts"), "work": s3_server.uri(f"{prefix}/work"),
                      "runs": s3_server.uri(f"{prefix}/runs")},
        "mlflow": {"tracking_uri": mlflow_server_s3.tracking_uri, "experiment": prefix, "registry_prefix": prefix},
        "evaluation": {"actors": 2, "max_examples": 1, "sample_images": True, "sampling_steps": 2},
        "hard_negative_features": "colour_histogram",
    }
    job_yaml = tmp_path / "job.yaml"
    job_yaml.write_text(yaml.safe_dump(config))

    wait_for_job_agent(two_nodes, REPO)
    done = subprocess.run(submit_command(two_nodes, ["python", "-m", "jobs.personalize", "--config", str(job_yaml)]),
                          cwd=REPO, env=two_nodes.env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]

    storage = s3_server.storage_config()
    fs, work = filesystem_for(s3_server.uri(f"{prefix}/work"), storage)
    (summary,) = [json.loads(read_bytes(fs, f.path)) for f in list_files(fs, work) if f.path.endswith("/summary.json")]
    assert sorted(c["outcome"] for c in summary["concepts"]) == ["done"] * 3, summary["concepts"]
    assert summary["driver"]["base_weights_loaded"] is False, summary["driver"]
    assert all(c["metrics"] for c in summary["concepts"]), "evaluated (on the actors)"
    assert "[4/5] evaluate: 2 evaluation actors" in done.stdout, done.stdout[-3000:]

    # Ray Train's run folder is on S3 too: its run log says where each worker ran.
    fs, runs = filesystem_for(s3_server.uri(f"{prefix}/runs"), storage)
    run_folders = {f.path.split("/")[len(runs.split("/"))] for f in list_files(fs, runs)}
    starts = [r for run in run_folders for r in read_run_log(s3_server.uri(f"{prefix}/runs/{run}"), storage, "start")]
    assert {r["rank"] for r in starts} == {0, 1}
    assert {r["node_id"] for r in starts} == set(two_nodes.node_ids), (starts, two_nodes.node_ids)
    exported = [r for run in run_folders for r in read_run_log(s3_server.uri(f"{prefix}/runs/{run}"), storage, "export")]
    assert sorted(r["concept"] for r in exported) == sorted(f"{TENANT}/{c.name}" for c in concepts)

    client = MlflowClient(mlflow_server_s3.tracking_uri)
    for c in concepts:
        name = ConceptId(TENANT, c.name).model_name(prefix)
        assert [v.version for v in client.search_model_versions(f"name = '{name}'")] == ["1"], name
