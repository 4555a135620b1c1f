"""Every job config the project ships validates through `JobConfig`: the KubeRay ConfigMap the
nightly RayJob mounts, the YAML examples in the docs, and the demo's config."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pipelines.config import JobConfig

REPO = Path(__file__).resolve().parents[2]
FENCED_YAML = re.compile(r"```ya?ml\n(.*?)```", re.DOTALL)


def _is_job_config(doc) -> bool:
    """A YAML mapping that is no Kubernetes object and holds any section of a job config."""
    return isinstance(doc, dict) and "kind" not in doc and bool({"ingest", "model", "train", "artifacts", "mlflow"} & set(doc))


def configmap_job_configs() -> list[tuple[str, dict]]:
    found = []
    for path in sorted((REPO / "infra").rglob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "ConfigMap":
                for key, text in (doc.get("data") or {}).items():
                    data = yaml.safe_load(text) if key.endswith((".yaml", ".yml")) else None
                    if _is_job_config(data):
                        found.append((f"{path.relative_to(REPO)}:{doc['metadata']['name']}/{key}", data))
    return found


def docs_job_configs() -> list[tuple[str, dict]]:
    found = []
    for path in sorted([REPO / "README.md", *(REPO / "docs").rglob("*.md")]):
        for i, block in enumerate(FENCED_YAML.findall(path.read_text())):
            data = yaml.safe_load(block)
            if _is_job_config(data):
                found.append((f"{path.relative_to(REPO)} block {i + 1}", data))
    return found


CONFIGMAPS = configmap_job_configs()
DOCS = docs_job_configs()


@pytest.fixture(autouse=True)
def no_env_overrides(monkeypatch):
    """Validate the files as written: no OMNIPERSONA_* variable of this shell fills a gap."""
    import os

    for name in list(os.environ):
        if name.startswith("OMNIPERSONA_"):
            monkeypatch.delenv(name)


def test_the_deployed_configmap_and_the_docs_hold_job_configs():
    names = [where for where, _ in CONFIGMAPS]
    assert any("omnipersona-job-config/job.yaml" in n for n in names), names  # what rayjob.yaml mounts
    assert any(where.startswith("docs/job-config.md") for where, _ in DOCS), [w for w, _ in DOCS]


@pytest.mark.parametrize("where,data", CONFIGMAPS + DOCS, ids=[w for w, _ in CONFIGMAPS + DOCS])
def test_shipped_job_config_validates(where, data):
    JobConfig(**data)


def test_the_demo_config_validates(tmp_path):
    from jobs.demo import demo_config

    cfg = JobConfig(**demo_config(tmp_path))
    assert cfg.ingest.uploads_uri.startswith(str(tmp_path))


def test_a_broken_job_config_is_refused():
    """The check above can fail: the ConfigMap as it was (flat keys) is rejected field by field."""
    with pytest.raises(ValueError) as err:
        JobConfig(uploads_uri="s3://b/u", base_model={"uri": "x"}, train={"steps": 3}, mlflow={"tracking_uri": "http://m"})
    message = str(err.value)
    for field in ("uploads_uri", "base_model", "train.steps", "ingest", "model", "artifacts"):
        assert field in message, (field, message)


@pytest.mark.parametrize("where,data", CONFIGMAPS + DOCS, ids=[w for w, _ in CONFIGMAPS + DOCS])
def test_shipped_configs_train_at_the_size_ingest_prepares(where, data):
    """The ConfigMap once left the recipe's sizes out: the 7B base would have trained on 64 px
    samples (the recipe's default) of the 224 / 512 px pictures ingest prepared. Without
    `_one_size_per_picture_kind` this fails for the ConfigMap (64 != 224)."""
    cfg = JobConfig(**data)
    assert (cfg.train.recipe.vit_size, cfg.train.recipe.vae_size) == (cfg.ingest.vit_size, cfg.ingest.vae_size)


def test_a_recipe_size_other_than_ingests_is_refused():
    data = {"ingest": {"uploads_uri": "s3://b/u", "vit_size": 224, "vae_size": 512}, "model": {"uri": "tiny"},
            "train": {"recipe": {"vit_size": 64}}, "artifacts": {"root": "s3://b/c"}, "mlflow": {"tracking_uri": "http://m"}}
    with pytest.raises(ValueError, match=r"train.recipe.vit_size is 64 but ingest.vit_size is 224"):
        JobConfig(**data)
    data["train"]["recipe"]["vit_size"] = 224  # equal sizes, or none at all, are fine
    assert JobConfig(**data).train.recipe.vae_size == 512
