"""Shared pytest setup.

Real services are started once per test session by the plugins below (each in its own module so
that a reader finds the S3 server, the MLflow server and the Ray cluster by file name).
"""
import os

# Quiet, deterministic, offline test runs; set before any library import reads them.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = [
    "tests.services.s3",
    "tests.services.mlflow_server",
    "tests.services.postgres",
    "tests.services.ray_cluster",
    "tests.services.ray_head",
]

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_bagel_dir(tmp_path_factory):
    """A tiny random BAGEL saved in the release layout (built once per test session)."""
    from omnipersona.model.tiny import build_tiny_bagel

    folder = tmp_path_factory.mktemp("tiny-bagel")
    build_tiny_bagel(folder, seed=0)
    return folder


@pytest.fixture()
def tiny_bagel(tiny_bagel_dir):
    """A fresh in-memory copy per test (tests may perturb weights)."""
    from omnipersona.model.checkpoint import load_bagel

    return load_bagel(str(tiny_bagel_dir))
