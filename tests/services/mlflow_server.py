"""A real MLflow tracking server for the test session (sqlite backend, proxied artifacts).

Fixtures:
- ``mlflow_server``: artifacts in a local temporary folder (fast; most tests want this).
- ``mlflow_server_s3``: artifacts in ``s3://<bucket>/mlflow`` on the session's S3 server
  (``s3_server`` from tests.services.s3). The S3 credentials live in the server's environment
  only: clients upload and download through the server's artifact proxy, as in production.

Both yield a :class:`MlflowServer` whose ``tracking_uri`` is what a client passes to
``MlflowClient(tracking_uri)``. Nothing here sets a global tracking URI.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

STARTUP_TIMEOUT_S = 90.0  # first start runs the sqlite migrations: ~5-10 s, more on a busy machine
SHM = Path("/dev/shm")


@dataclass(frozen=True)
class MlflowServer:
    tracking_uri: str
    artifacts_destination: str
    log_path: Path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _shm_temp_dirs() -> set[Path]:
    return set(SHM.glob("tmp*")) if SHM.is_dir() else set()


def _is_healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _remove_job_runner_stores(before: set[Path]) -> None:
    # The server's job runner (off here, but on if someone drops the env flag) leaves its huey
    # queue in a fresh /dev/shm/tmp* folder. Remove only such folders that appeared during our
    # session and hold nothing but huey stores, so no other process's temp dir is touched.
    for folder in _shm_temp_dirs() - before:
        entries = list(folder.iterdir()) if folder.is_dir() else []
        if entries and all(".mlflow-huey-store" in e.name for e in entries):
            shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def running_mlflow_server(
    workdir: Path, artifacts_destination: str, extra_env: dict[str, str] | None = None
) -> Iterator[MlflowServer]:
    """Start ``mlflow server`` on a free loopback port, wait for /health, stop it afterwards."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = workdir / "server.log"
    env = {
        **os.environ,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # else 7 extra job-runner processes (~1.8 GB)
        "MLFLOW_DISABLE_TELEMETRY": "true",
        **(extra_env or {}),
    }
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
        "--artifacts-destination", artifacts_destination,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", "1",
    ]
    shm_before = _shm_temp_dirs()
    with open(log_path, "wb") as log:
        # Own session: SIGTERM reaches the CLI and its uvicorn worker together.
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir, start_new_session=True
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _is_healthy(url):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(
                    f"mlflow server did not become healthy at {url} (exit code {process.poll()}):\n{tail}"
                )
            time.sleep(0.25)
        yield MlflowServer(tracking_uri=url, artifacts_destination=artifacts_destination, log_path=log_path)
    finally:
        _stop(process)
        _remove_job_runner_stores(shm_before)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    workdir = tmp_path_factory.mktemp("mlflow")
    with running_mlflow_server(workdir, str(workdir / "artifacts")) as server:
        yield server


@pytest.fixture(scope="session")
def mlflow_server_s3(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MlflowServer]:
    try:
        s3 = request.getfixturevalue("s3_server")
    except pytest.FixtureLookupError:
        pytest.skip("tests.services.s3 provides no s3_server fixture")
    workdir = tmp_path_factory.mktemp("mlflow-s3")
    server_env = {
        # boto3 inside the server reads these; the test process never needs them.
        "MLFLOW_S3_ENDPOINT_URL": f"http://{s3.endpoint}",
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        "AWS_DEFAULT_REGION": s3.region,
    }
    with running_mlflow_server(workdir, f"s3://{s3.bucket}/mlflow", server_env) as server:
        yield server
