"""A registered concept serves: the MLflow model (defined by code, no pickle) answers understand /
generate requests from a fresh process, and `omnipersona infer` takes any standard model URI.

Real services: the session's `mlflow server` (tests/services/mlflow_server.py). The concepts hold
random tokens shaped for the tiny BAGEL ('tiny', built once in its default cache folder): serving
checks plumbing, not quality.
"""
from __future__ import annotations

import base64
import importlib.metadata
import io
import json
import os
import subprocess
import sys
import tempfile
import uuid
from datetime import datetime, timezone
from pathlib import Path

import mlflow.artifacts
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image

from omnipersona.concepts.artifact import ConceptArtifact, ConceptManifest
from omnipersona.identity import ConceptId
from pipelines.evaluate.gate import Gate
from pipelines.inference import check_prompt_concepts, load_persona
from pipelines.model_store import load_base, resolve_model_uri
from pipelines.register import ConceptRegistry, JobRuns, JobRunSpec, MlflowConnection, RetryPolicy

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
BASE = "tiny"  # the base URI the concepts record (resolves to ~/.cache/omnipersona/tiny-bagel)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def tiny_concept(folder: Path, bundle, tenant: str, concept: str, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    d = bundle.config.llm.hidden_size
    manifest = ConceptManifest(
        tenant=tenant, concept=concept, display_name=concept.split("-")[0].title(), class_word="dog",
        training_config_hash="cfg0001", data_digest=f"digest{seed}", base_model_id=bundle.config.model_id,
        base_fingerprint=bundle.fingerprint, metrics={}, created_at=datetime(2026, 11, 29, tzinfo=timezone.utc),
    )
    ConceptArtifact(0.02 * torch.randn(1, d, generator=g), 0.02 * torch.randn(2, d, generator=g),
                    0.02 * torch.randn(2, d, generator=g), 0.02 * torch.randn(d, generator=g), manifest).save(folder)


@pytest.fixture(scope="module")
def served(mlflow_server, tmp_path_factory):
    """Three registered concepts (display names Ant, Bee, Cat), champions, recording the base 'tiny'."""
    bundle = load_base(resolve_model_uri(BASE))
    registry = ConceptRegistry(MlflowConnection(mlflow_server.tracking_uri, experiment_name=unique("test-serving"),
                                                retry=RetryPolicy(attempts=2, initial_delay_s=0.1)))
    run_id = JobRuns(registry.mlflow).start(JobRunSpec(
        job_id=unique("job"), snapshot_uri="s3://b/uploads", snapshot_digest="s", config_hash="cfg0001",
        base_model_id=bundle.config.model_id, base_fingerprint=bundle.fingerprint, zero_stage=2,
    ))
    local = tmp_path_factory.mktemp("serving")
    concepts, results = [ConceptId("acme", unique(n)) for n in ("ant", "bee", "cat")], []
    for seed, concept in enumerate(concepts):
        tiny_concept(local / concept.concept, bundle, concept.tenant, concept.concept, seed)
        results.append(registry.register_concept(run_id, local / concept.concept, metrics={"recognition_accuracy": 1.0},
                                                 gate=Gate(minimums={"recognition_accuracy": 0.5}), base_model_uri=BASE))
    assert all(r.promoted for r in results)
    return dict(tracking_uri=mlflow_server.tracking_uri, concepts=concepts, results=results, local=local)


def fresh_env(tracking_uri: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING") and k != "PYTHONPATH"}
    return {**env, "MLFLOW_TRACKING_URI": tracking_uri}


def cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.cli", "infer", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


# A client that has only the installed package and the tracking URI: nothing of this test process.
LOAD_AND_PREDICT = r"""
import base64, io, json, sys
import mlflow.pyfunc
from PIL import Image

uri, name = sys.argv[1], sys.argv[2]
model = mlflow.pyfunc.load_model(uri)
buffer = io.BytesIO()
Image.new("RGB", (32, 32), "red").save(buffer, format="PNG")
photo = base64.b64encode(buffer.getvalue()).decode()
out = model.predict(
    [{"task": "understand", "prompt": f"Is <{name}> in this image?", "image": photo},
     {"task": "generate", "prompt": f"A photo of <{name}> on a beach."}],
    params={"sampling_steps": 2, "image_size": 32, "replay": False},
).to_dict("records")
picture = Image.open(io.BytesIO(base64.b64decode(out[1]["image"])))
try:
    model.predict([{"task": "understand", "prompt": "Hello"}], params={"base_model_uri": "/nonexistent/base"})
    override = "ignored"
except Exception as e:
    override = str(e)
print(json.dumps({"understand": out[0], "picture": [picture.format, list(picture.size)],
                  "prompt_used": out[1]["prompt_used"], "override": override}))
"""


def test_registered_concept_serves_from_a_fresh_process(served, tmp_path):
    concept = served["concepts"][0]
    done = subprocess.run([sys.executable, "-c", LOAD_AND_PREDICT, concept.model_uri(alias="champion"), "Ant"],
                          cwd=tmp_path, env=fresh_env(served["tracking_uri"]), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    understand = out["understand"]
    assert isinstance(understand["answer"], str) and 0.0 <= understand["yes_probability"] <= 1.0
    assert understand["prompt_used"] == "Is <Ant> in this image?" and understand["image"] is None
    assert out["picture"] == ["PNG", [32, 32]]
    assert out["prompt_used"] == "A photo of <Ant> on a beach."
    assert "/nonexistent/base" in out["override"]  # params override the base recorded at log time


def test_concept_model_is_code_with_requirements_and_no_pickle(served, tmp_path):
    name = served["concepts"][1].model_name()
    client = MlflowClient(served["tracking_uri"])
    source = client.get_model_version_download_uri(name, "1")
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(tmp_path),
                                                     tracking_uri=served["tracking_uri"]))
    files = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    assert "serving.py" in files and "MLmodel" in files and "input_example.json" in files, files
    assert not [f for f in files if f.endswith((".pkl", ".pickle")) or "python_model" in f], files
    for path in local.rglob("*"):
        if path.is_file():
            assert b"cloudpickle" not in path.read_bytes().lower(), path  # no pickled model, no pickle settings

    requirements = (local / "requirements.txt").read_text().split()
    assert f"omnipersona=={importlib.metadata.version('omnipersona')}" in requirements
    assert "torch==2.13.0" in requirements and not [r for r in requirements if "+" in r], requirements

    mlmodel_text = (local / "MLmodel").read_text()
    for temp in {tempfile.gettempdir(), "/tmp", str(REPO)}:
        assert temp not in mlmodel_text, f"MLmodel records a local path under {temp}:\n{mlmodel_text}"
    pyfunc = yaml.safe_load(mlmodel_text)["flavors"]["python_function"]
    assert pyfunc["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert pyfunc["model_code_path"] == "serving.py"
    assert pyfunc["config"]["base_model_uri"] == BASE
    signature = yaml.safe_load(mlmodel_text)["signature"]
    assert [c["name"] for c in json.loads(signature["inputs"])] == ["task", "prompt", "image"]
    assert {p["name"] for p in json.loads(signature["params"])} >= {"base_model_uri", "sampling_steps", "image_size"}


def test_infer_takes_alias_version_and_logged_model_uris(served, tmp_path):
    ant, bee, cat = served["concepts"]
    uris = [ant.model_uri(alias="champion"), bee.model_uri(version=1), f"models:/{served['results'][2].model_id}"]
    photo = tmp_path / "photo.png"
    Image.new("RGB", (32, 32), "blue").save(photo)
    args = [arg for uri in uris for arg in ("--model", uri)]
    env = fresh_env(served["tracking_uri"])
    del env["MLFLOW_TRACKING_URI"]  # from the flag; no --base: the base the concept models recorded
    done = cli("understand", *args, "--tracking-uri", served["tracking_uri"], "--prompt", "Are <Ant>, <Bee> and <Cat> here?",
               "--image", str(photo), "--image-size", "32", env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-4000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert isinstance(answer["answer"], str) and 0.0 <= answer["yes_probability"] <= 1.0


def test_infer_reads_tracking_uri_and_base_from_the_job_config(served, tmp_path):
    config = {
        "ingest": {"uploads_uri": str(tmp_path / "uploads"), "vit_size": 32, "vae_size": 32},
        "model": {"uri": "tiny", "tiny_cache": str(tmp_path / "tiny")},  # the same seed-0 model, built here
        "artifacts": {"root": str(tmp_path / "concepts")},
        "mlflow": {"tracking_uri": served["tracking_uri"]},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(config))
    env = fresh_env(served["tracking_uri"])
    del env["MLFLOW_TRACKING_URI"]
    out = tmp_path / "out.png"
    done = cli("generate", "--model", served["concepts"][2].model_uri(alias="champion"), "--config", str(tmp_path / "job.yaml"),
               "--prompt", "<Cat> on a sofa", "--steps", "2", "--image-size", "32", "--no-replay", "--out", str(out),
               env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-4000:]
    assert (tmp_path / "tiny" / "ema.safetensors").exists()  # the config's base, not the recorded one
    assert json.loads(done.stdout.strip().splitlines()[-1])["prompt_used"] == "<Cat> on a sofa"
    assert Image.open(out).size == (32, 32)


def test_infer_refuses_a_concept_that_is_not_loaded_in_one_line(served, tmp_path):
    # The tracking URI comes from the environment here.
    done = cli("understand", "--model", served["concepts"][0].model_uri(alias="champion"), "--prompt", "Is <Ghost> here?",
               "--image-size", "32", env=fresh_env(served["tracking_uri"]), cwd=REPO)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "<Ghost>" in lines[0] and "not loaded" in lines[0] and "<Ant>" in lines[0], done.stderr


def test_every_uri_is_checked_before_anything_downloads(served, monkeypatch):
    def download(**kw):
        raise AssertionError(f"downloaded {kw.get('artifact_uri')} before every URI was checked")

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", download)
    good = served["concepts"][0].model_uri(alias="champion")
    with pytest.raises(ValueError, match="not an MLflow model URI"):
        load_persona(served["tracking_uri"], [good, "models:/omnipersona.acme.ant"])
    with pytest.raises(LookupError, match="does not exist"):
        load_persona(served["tracking_uri"], [good, ConceptId("acme", unique("nope")).model_uri(alias="champion")])
    with pytest.raises(LookupError, match="does not exist"):
        load_persona(served["tracking_uri"], [good, f"models:/m-{uuid.uuid4().hex}"])


# ---- pure logic (no server)


def test_prompt_naming_a_concept_that_is_not_loaded_is_refused():
    check_prompt_concepts("Is <Mr. Whiskers> next to <Rex>? 1 < 2 > 0", ["Rex", "Mr. Whiskers"])
    with pytest.raises(ValueError, match=r"names <rex>, which is not loaded; loaded concepts: <Rex>"):
        check_prompt_concepts("Is <rex> here?", ["Rex"])

