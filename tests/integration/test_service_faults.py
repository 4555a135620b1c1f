"""Service faults on the real services (docs/faults.md, "Service faults"): the MLflow server stops
during registration, the S3 server (SeaweedFS) is killed during ingest and during export, two
submissions of one job run at once. Each test runs the job as an operator does (a process joined to
a Ray head), injects the fault when the job's own log says it reached the stage, asserts the fault
really hit, and reruns.

Costs: each job run is 30-90 s on 2 cores; the tests share the Ray head and use 2 concepts, 1 worker
and a few steps."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from omnipersona.concepts.artifact import ConceptArtifact
from omnipersona.identity import ConceptId
from omnipersona.world import make_concepts
from omnipersona.world.uploads import UploadOptions, write_uploads
from pipelines.register.names import RUN_TAG_RAY_SUBMISSION_ID
from pipelines.storage import filesystem_for, list_files, read_bytes
from tests.integration.test_job_promises import TENANT, versions  # registered versions per concept
from tests.services.mlflow_server import MlflowServerProcess
from tests.services.ray_head import submit_command, wait_for_job_agent
from tests.services.s3 import SeaweedProcess, upload_tree

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
JOB_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def uploads(tmp_path_factory):
    """Two concepts' uploads and a negative pool, as local folders (each test uploads them where it needs)."""
    local = tmp_path_factory.mktemp("faults")
    concepts = make_concepts(2, seed=47)
    write_uploads({TENANT: concepts}, local / "uploads", options=UploadOptions(views=3, edits=1, pool_negatives=4))
    shutil.move(local / "uploads" / "_negatives", local / "negatives")
    return dict(local=local, concepts=concepts)


def put_uploads(uploads, s3, prefix: str) -> None:
    upload_tree(s3, uploads["local"] / "uploads", f"{prefix}/uploads")
    upload_tree(s3, uploads["local"] / "negatives", f"{prefix}/negatives")


def job_config(s3, prefix: str, tracking_uri: str, runs_dir: Path, model: Path, *, evaluation: bool = False,
               steps: int = 2) -> dict:
    return {
        "model": {"uri": str(model)},
        "ingest": {"uploads_uri": s3.uri(f"{prefix}/uploads"), "negatives_uri": s3.uri(f"{prefix}/negatives"),
                   "vit_size": 32, "vae_size": 32, "epochs": 2 if evaluation else 1, "samples_per_task": 1},
        "train": {"recipe": {"steps": steps, "batch_size": 2, "num_und_tokens": 2, "num_gen_tokens": 2, "vit_size": 32,
                             "vae_size": 32},
                  "deepspeed": {"zero_stage": 2}, "scaling": {"num_workers": 1, "cpus_per_worker": 1}, "pack_size": 2},
        "artifacts": {"root": s3.uri(f"{prefix}/concepts"), "work": s3.uri(f"{prefix}/work"), "runs": str(runs_dir)},
        # Registered model names are global to a server: each test its own prefix.
        "mlflow": {"tracking_uri": tracking_uri, "experiment": prefix, "registry_prefix": prefix},
        "evaluation": {"enabled": evaluation, "max_examples": 1, "sample_images": False, "sampling_steps": 2},
        "hard_negative_features": "colour_histogram",
    }


class JobProcess:
    """`python -m jobs.personalize` joined to the Ray head, its output read line by line (what an
    operator sees), so a test can act when the job's log reaches a stage."""

    def __init__(self, config: dict, tmp_path: Path, ray_head, s3, name: str = "job"):
        self.yaml = tmp_path / f"{name}.yaml"
        self.yaml.write_text(yaml.safe_dump(config))
        self.env = {**os.environ, **s3.job_env(), "RAY_ADDRESS": ray_head.gcs_address}
        self.lines: list[tuple[float, str]] = []
        self.extra_args: list[str] = []
        self.process: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "jobs.personalize", "--config", str(self.yaml), *self.extra_args]

    def start(self) -> "JobProcess":
        self.process = subprocess.Popen(
            self.command(), cwd=REPO, env=self.env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    @property
    def output(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def first(self, pattern: str) -> float | None:
        """When a line matching `pattern` was printed (monotonic), None if none yet."""
        return next((t for t, line in list(self.lines) if re.search(pattern, line)), None)

    def wait_for(self, pattern: str, timeout_s: float = JOB_TIMEOUT_S) -> float:
        deadline = time.monotonic() + timeout_s
        while (found := self.first(pattern)) is None:
            assert self.process.poll() is None, f"the job exited before {pattern!r}:\n{self.output[-4000:]}"
            assert time.monotonic() < deadline, f"no {pattern!r} within {timeout_s}s:\n{self.output[-4000:]}"
            time.sleep(0.05)
        return found

    def wait(self, timeout_s: float = JOB_TIMEOUT_S) -> int:
        try:
            code = self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, 9)
            raise AssertionError(f"the job did not end within {timeout_s}s:\n{self.output[-4000:]}")
        self._reader.join(timeout=10)
        return code

    def run(self) -> int:
        return self.start().wait()


class SubmittedJob(JobProcess):
    """The same job through `ray job submit` to the head (how the nightly job and an operator run
    it): the driver runs on the cluster, and the submit command prints its log and exits with its
    status. The S3 credentials are in the head's environment, never in the submission."""

    def __init__(self, config: dict, tmp_path: Path, ray_head, s3, name: str = "job"):
        super().__init__(config, tmp_path, ray_head, s3, name)
        self.ray_head = ray_head
        self.env = ray_head.env
        self.submission_id = f"faults-{name}-{uuid.uuid4().hex[:8]}"

    def command(self) -> list[str]:
        return submit_command(self.ray_head, ["python", "-m", "jobs.personalize", "--config", str(self.yaml), *self.extra_args],
                              submission_id=self.submission_id)


def summaries(s3, prefix: str) -> list[dict]:
    """Every run's summary.json of the jobs under `<prefix>/work`, oldest first."""
    fs, work = filesystem_for(s3.uri(f"{prefix}/work"), s3.storage_config())
    found = [json.loads(read_bytes(fs, f.path)) for f in list_files(fs, work) if f.path.endswith("/summary.json")]
    return sorted(found, key=lambda s: s["started_at"])


def artifact_folders(s3, prefix: str) -> dict[str, set[str]]:
    """Artifact folder -> the file names in it, as a reader of the artifact store sees them."""
    fs, root = filesystem_for(s3.uri(f"{prefix}/concepts"), s3.storage_config())
    folders: dict[str, set[str]] = {}
    for f in list_files(fs, root):
        folder, _, name = f.path.rpartition("/")
        folders.setdefault(folder, set()).add(name)
    return folders


def exported_runs(runs_dir: Path) -> list[dict]:
    from pipelines.train.run_log import read_run_log

    return [r for d in runs_dir.glob("*") if d.is_dir() for r in read_run_log(str(d), None, "export")]


# ---------------------------------------------------------------- MLflow stops during registration


def test_mlflow_down_during_registration_leaves_concepts_pending_registration_and_a_rerun_registers_them_once(
        uploads, s3_server, ray_head, tiny_bagel_dir, tmp_path):
    """The MLflow server stops once the job starts evaluating: the job still exports every concept,
    reports each as `pending_registration` with the reason, writes its summary to the work store
    (saying MLflow did not record it), exits 3 within about a minute of the outage, and trains
    nothing again when rerun: the rerun registers each concept exactly once."""
    prefix = "fault-mlflow"
    put_uploads(uploads, s3_server, prefix)
    mlflow = MlflowServerProcess(tmp_path / "mlflow", str(tmp_path / "mlflow" / "artifacts"))
    server = mlflow.start()
    try:
        config = job_config(s3_server, prefix, server.tracking_uri, tmp_path / "runs", tiny_bagel_dir, evaluation=True)
        job = JobProcess(config, tmp_path, ray_head, s3_server).start()
        job.wait_for(r"\[4/5\] evaluate and \[5/5\] register: 2 concepts")
        mlflow.stop()  # SIGTERM: the server is gone before the first concept's evaluation ends
        stopped_at = time.monotonic()
        code = job.wait()
        assert code == 3, job.output[-4000:]
        first_register = job.first(r"\[5/5\] register 1/2")
        assert first_register is not None and first_register > stopped_at, "the fault must hit registration"
        assert time.monotonic() - stopped_at < 150, "the job must not hang against a dead server"
        assert len(exported_runs(tmp_path / "runs")) == 2, "training and export finished"

        (summary,) = summaries(s3_server, prefix)
        outcomes = {c["concept_key"]: c for c in summary["concepts"]}
        assert {c["outcome"] for c in outcomes.values()} == {"pending_registration"}, outcomes
        assert all("MLflow" in c["reason"] for c in outcomes.values()), outcomes
        assert summary["mlflow_error"], "the summary says MLflow did not record the run"

        server = mlflow.start()  # same port, database and artifacts
        assert versions(server.tracking_uri, uploads["concepts"], prefix) == {
            ConceptId(TENANT, c.name).model_name(prefix): [] for c in uploads["concepts"]}, "nothing registered during the outage"
        again = JobProcess(config, tmp_path, ray_head, s3_server, name="rerun")
        assert again.run() == 0, again.output[-4000:]
        assert "[3/5] train: nothing to train" in again.output, "exported concepts are not trained again"
        assert len(exported_runs(tmp_path / "runs")) == 2
        assert all(v == [1] for v in versions(server.tracking_uri, uploads["concepts"], prefix).values())
        last = summaries(s3_server, prefix)[-1]
        assert {c["outcome"] for c in last["concepts"]} == {"done"} and not last.get("mlflow_error"), last
    finally:
        mlflow.stop()


# ---------------------------------------------------------------- S3 killed during ingest and export


@pytest.fixture()
def own_s3(tmp_path):
    """A SeaweedFS of this test's own (the session's server is never killed)."""
    (tmp_path / "weed").mkdir()
    seaweed = SeaweedProcess(tmp_path / "weed")
    seaweed.start()
    try:
        yield seaweed
    finally:
        seaweed.stop()


def assert_no_partial_artifact_counts(s3, prefix: str, tracking_uri: str, concepts) -> None:
    """Every artifact folder with a manifest loads whole (the manifest is written last: a folder
    without one is not an export, `artifact_exists` says so and the rerun trains it), and every
    registered version's artifact is such a folder."""
    fs, _ = filesystem_for(s3.uri(f"{prefix}/concepts"), s3.storage_config())
    folders = artifact_folders(s3, prefix)
    for folder, files in folders.items():
        if "manifest.json" in files:
            ConceptArtifact.load(folder, filesystem=fs)  # complete: tensors and manifest agree
    client = MlflowClient(tracking_uri)
    for c in concepts:
        name = ConceptId(TENANT, c.name).model_name(prefix)
        for v in client.search_model_versions(f"name = '{name}'"):
            complete = [f for f, files in folders.items() if "manifest.json" in files and f"/{TENANT}/{c.name}/" in f + "/"]
            assert complete, (name, v.version, folders)


def test_s3_killed_during_ingest_the_job_completes_or_fails_clearly_and_a_rerun_completes(
        uploads, own_s3, ray_head, mlflow_server, tiny_bagel_dir, tmp_path):
    s3, prefix = own_s3.server, "fault-s3-ingest"
    put_uploads(uploads, s3, prefix)
    config = job_config(s3, prefix, mlflow_server.tracking_uri, tmp_path / "runs", tiny_bagel_dir)
    job = JobProcess(config, tmp_path, ray_head, s3).start()
    job.wait_for(r"\[1/5\] ingest: ")
    own_s3.kill()
    killed_at = time.monotonic()
    assert job.first(r"\[2/5\] select") is None, "the fault must hit ingest"
    time.sleep(3)
    own_s3.start()
    code = job.wait()
    assert code in (0, 2, 3), job.output[-4000:]
    if code != 0:  # a clear error: the log's last ERROR line names what failed
        assert re.search(r"ERROR .*(S3|s3|connect|Connection|ingest|AWS)", job.output), job.output[-4000:]
    assert killed_at < (job.first(r"\[2/5\] select") or float("inf"))
    assert_no_partial_artifact_counts(s3, prefix, mlflow_server.tracking_uri, uploads["concepts"])
    if code != 0:
        again = JobProcess(config, tmp_path, ray_head, s3, name="rerun")
        assert again.run() == 0, again.output[-4000:]
    assert all(v == [1] for v in versions(mlflow_server.tracking_uri, uploads["concepts"], prefix).values())


def test_s3_killed_during_export_no_partial_artifact_counts_and_a_rerun_completes(
        uploads, own_s3, ray_head, mlflow_server, tiny_bagel_dir, tmp_path):
    """S3 dies mid-pack (after the pack's examples were read; checkpoints go to a local folder) and
    stays down until the export has failed (the worker group restarts, or the job ends); then it
    comes back. Triggered by the workers' own run log (a local file written as each checkpoint
    lands): the job's progress lines arrive too late to tell training from export."""
    from pipelines.train.run_log import read_run_log

    s3, prefix = own_s3.server, "fault-s3-export"
    put_uploads(uploads, s3, prefix)
    runs = tmp_path / "runs"
    config = job_config(s3, prefix, mlflow_server.tracking_uri, runs, tiny_bagel_dir, steps=8)
    config["train"]["checkpoint_every"] = 1

    def records(kind: str) -> list[dict]:
        return [r for d in runs.glob("*") if d.is_dir() for r in read_run_log(str(d), None, kind)]

    job = JobProcess(config, tmp_path, ray_head, s3).start()
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not any(r["step"] >= 2 for r in records("checkpoint")):
        assert job.process.poll() is None and time.monotonic() < deadline, job.output[-4000:]
        time.sleep(0.1)
    own_s3.kill()
    starts = len(records("start"))
    assert not records("export"), "killed before the export"
    deadline = time.monotonic() + 120
    while len(records("start")) == starts and job.process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not records("export"), "no export succeeded while S3 was down"
    hit = len(records("start")) > starts or job.process.poll() is not None
    own_s3.start()
    code = job.wait()
    assert hit, "the fault must hit the export (a worker restart or the job's end):\n" + job.output[-4000:]
    assert code in (0, 3), job.output[-4000:]
    assert_no_partial_artifact_counts(s3, prefix, mlflow_server.tracking_uri, uploads["concepts"])
    if code != 0:
        again = JobProcess(config, tmp_path, ray_head, s3, name="rerun")
        assert again.run() == 0, again.output[-4000:]
    assert all(v == [1] for v in versions(mlflow_server.tracking_uri, uploads["concepts"], prefix).values())
    assert_no_partial_artifact_counts(s3, prefix, mlflow_server.tracking_uri, uploads["concepts"])



# ---------------------------------------------------------------- the DeepSpeed extension cache under `ray job submit`


ENV_PROBE = """
import os, types, ray
from pipelines.personalize import _ensure_ray
_ensure_ray(types.SimpleNamespace(ray=types.SimpleNamespace(address=None, num_cpus=None)))
probe = ray.remote(num_cpus=0)(lambda: os.environ.get("TORCH_EXTENSIONS_DIR"))
print("worker TORCH_EXTENSIONS_DIR=" + str(ray.get(probe.remote())))
"""


def test_the_extension_cache_reaches_the_workers_of_a_submitted_job(ray_head, tmp_path):
    """`ray job submit` with TORCH_EXTENSIONS_DIR in the submission's runtime env (how an operator
    points a job at the machine's built ops): the job joins the cluster, and its workers (Ray Train's
    among them) see the folder. Ray refuses a driver's `ray.init` runtime env that sets a variable
    the submission set too, so `_ensure_ray` must leave those to the submission."""
    cache = str(tmp_path / "torch_extensions")
    runtime_env = {"env_vars": {"TORCH_EXTENSIONS_DIR": cache, "OMP_NUM_THREADS": "1"}}
    wait_for_job_agent(ray_head, REPO)
    done = subprocess.run(submit_command(ray_head, ["python", "-c", ENV_PROBE], runtime_env=runtime_env), cwd=REPO,
                          env=ray_head.env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"worker TORCH_EXTENSIONS_DIR={cache}" in done.stdout, done.stdout[-3000:]


# ---------------------------------------------------------------- two runs at once


def test_three_submissions_at_once_train_each_concept_once_and_register_one_version(
        uploads, s3_server, ray_head, mlflow_server, tiny_bagel_dir, tmp_path):
    """Three `ray job submit` at once: the same job twice (one run waits for the other: leases on
    the job id) and a second job over the same concepts (leases on the artifacts). Every concept is
    trained and exported once, registered once, and all three submissions end 0; the job's own
    Ray Train run started once; each run that did not train a concept says which run did (the
    proof that they really ran at once). The drivers run on the head, as in production; the runs
    overlap (asserted from the summaries' start and finish times). One test for both races: each
    job run on these CPUs costs ~25 s of start-up.
    Break-checked: with `Leases.acquire` always granting, the jobs train the concepts twice and the
    later ones end 1 (their registration races the first's: a second version, an alias conflict)."""
    prefix = "fault-concurrent"
    put_uploads(uploads, s3_server, prefix)
    config = job_config(s3_server, prefix, mlflow_server.tracking_uri, tmp_path / "runs", tiny_bagel_dir)
    jobs = [SubmittedJob(config, tmp_path, ray_head, s3_server, name=name) for name in ("first", "same-job", "other-job")]
    jobs[2].extra_args = ["--job-id", "job-concurrent-other"]
    wait_for_job_agent(ray_head, REPO)  # else one could be refused and retried after the others ended
    for job in jobs:
        job.start()
    codes = tuple(job.wait() for job in jobs)
    assert codes == (0, 0, 0), "\n-----\n".join(job.output[-3000:] for job in jobs)
    exported = sorted(r["concept"] for r in exported_runs(tmp_path / "runs"))
    assert exported == sorted(f"{TENANT}/{c.name}" for c in uploads["concepts"]), exported
    assert all(v == [1] for v in versions(mlflow_server.tracking_uri, uploads["concepts"], prefix).values())

    from pipelines.train.run_log import read_run_log

    runs = summaries(s3_server, prefix)
    assert len(runs) == 3
    assert max(r["started_at"] for r in runs) < min(r["finished_at"] for r in runs), "the three runs overlapped"
    job_ids = {r["job_id"] for r in runs}
    assert len(job_ids) == 2 and "job-concurrent-other" in job_ids, job_ids
    (same_job,) = job_ids - {"job-concurrent-other"}
    starts = [r for d in (tmp_path / "runs").glob(f"{same_job}-*") if d.is_dir() for r in read_run_log(str(d), None, "start")]
    assert len(starts) <= 1, starts  # the same job's two submissions: one Ray Train run (none if the other job trained all)
    tags = [MlflowClient(mlflow_server.tracking_uri).get_run(run["run_id"]).data.tags for run in runs]
    assert {t.get(RUN_TAG_RAY_SUBMISSION_ID) for t in tags} == {job.submission_id for job in jobs}, "all came by `ray job submit`"
    outcomes = [c for run in runs for c in run["concepts"]]
    assert sorted(c["outcome"] for c in outcomes) == ["done"] * 2 + ["skipped"] * 4, outcomes
    trainers = {run["run_id"] for run in runs if any(c["outcome"] == "done" for c in run["concepts"])}
    for c in outcomes:
        if c["outcome"] == "skipped":  # the fault really happened: they ran at once, the others waited
            said = re.search(r"registered by job (\S+) run ([0-9a-f]{32})", c["why"])
            assert said and said.group(2) in trainers, c  # the run that registered it, not the one it waited for
            assert said.group(1) == next(r["job_id"] for r in runs if r["run_id"] == said.group(2)), c


def test_preflights_of_jobs_started_at_once_do_not_trip_over_each_other(s3_server, tmp_path):
    """Each preflight writes and removes a probe under every root, and removed the root folder it
    created: recursively, taking another job's probe with it (the second job then failed preflight:
    'cannot write a test object here'). Six at once on fresh roots, five times: no problem."""
    import uuid

    from pipelines import preflight
    from pipelines.config import JobConfig

    problems = []
    for _ in range(5):
        prefix = f"fault-preflight-{uuid.uuid4().hex[:8]}"
        cfg = JobConfig(model={"uri": "tiny"}, ingest={"uploads_uri": s3_server.uri(f"{prefix}/u"), "vit_size": 32, "vae_size": 32},
                        artifacts={"root": s3_server.uri(f"{prefix}/c"), "work": s3_server.uri(f"{prefix}/w"),
                                   "runs": s3_server.uri(f"{prefix}/runs")},
                        mlflow={"tracking_uri": "http://127.0.0.1:1"})
        start = threading.Barrier(6)

        def probe():
            start.wait()
            problems.extend(preflight._writable(cfg, s3_server.storage_config()))

        threads = [threading.Thread(target=probe) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not problems, problems
