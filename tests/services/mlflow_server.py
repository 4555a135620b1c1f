"""A real MLflow tracking server for the test session (sqlite backend unless told otherwise,
proxied artifacts).

Fixtures:
- ``mlflow_server``: artifacts in a local temporary folder (fast; most tests want this).
- ``mlflow_server_s3``: artifacts in ``s3://<bucket>/mlflow`` on the session's S3 server
  (``s3_server`` from tests.services.s3). The S3 credentials live in the server's environment
  only: clients upload and download through the server's artifact proxy, as in production.
- ``mlflow_server_postgres`` (tests.services.postgres): the backend store on an embedded
  PostgreSQL, as production runs it (``backend_store_uri`` below).

Both yield a :class:`MlflowServer` whose ``tracking_uri`` is what a client passes to
``MlflowClient(tracking_uri)``. Nothing here sets a global tracking URI. A test that stops and
restarts its server (an outage) starts its own :class:`MlflowServerProcess`.
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
    backend_store_uri: str = ""  # the server's database (sqlite:///... or postgresql+psycopg://...)


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


class MlflowServerProcess:
    """An ``mlflow server`` that can be stopped and started again on the same port, database and
    artifact store (what a test of an outage needs); ``running_mlflow_server`` wraps it.

    ``backend_store_uri``: the database, by default ``sqlite:///<workdir>/mlflow.db``; a
    ``postgresql+psycopg://`` URI (tests.services.postgres) runs it as production does.
    ``workers``: uvicorn workers (1 for tests; the registry benchmark runs 4, as production).
    ``startup_timeout_s``: how long to wait for /health (several workers on a busy machine take longer)."""

    def __init__(self, workdir: Path, artifacts_destination: str, extra_env: dict[str, str] | None = None,
                 backend_store_uri: str | None = None, workers: int = 1,
                 startup_timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.artifacts_destination = artifacts_destination
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.backend_store_uri = backend_store_uri or f"sqlite:///{workdir / 'mlflow.db'}"
        self.workers = workers
        self.startup_timeout_s = startup_timeout_s
        self.log_path = workdir / "server.log"
        self.env = {
            **os.environ,
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # else 7 extra job-runner processes (~1.8 GB)
            "MLFLOW_DISABLE_TELEMETRY": "true",
            **(extra_env or {}),
        }
        self.process: subprocess.Popen | None = None
        self._shm_before = _shm_temp_dirs()

    @property
    def server(self) -> MlflowServer:
        return MlflowServer(tracking_uri=self.url, artifacts_destination=self.artifacts_destination, log_path=self.log_path,
                            backend_store_uri=self.backend_store_uri)

    def start(self) -> MlflowServer:
        """Start on ``self.port`` and wait for /health."""
        command = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", self.backend_store_uri,
            "--artifacts-destination", self.artifacts_destination,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--workers", str(self.workers),
        ]
        with open(self.log_path, "ab") as log:
            # Own session: SIGTERM reaches the CLI and its uvicorn worker together.
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir, start_new_session=True
            )
        deadline = time.monotonic() + self.startup_timeout_s
        while not _is_healthy(self.url):
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                code = self.process.poll()
                self.stop()
                raise RuntimeError(f"mlflow server did not become healthy at {self.url} (exit code {code}):\n{tail}")
            time.sleep(0.25)
        return self.server

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)
            self.process = None
        _remove_job_runner_stores(self._shm_before)


@contextmanager
def running_mlflow_server(
    workdir: Path, artifacts_destination: str, extra_env: dict[str, str] | None = None,
    backend_store_uri: str | None = None, workers: int = 1,
) -> Iterator[MlflowServer]:
    """Start ``mlflow server`` on a free loopback port, wait for /health, stop it afterwards."""
    process = MlflowServerProcess(workdir, artifacts_destination, extra_env, backend_store_uri, workers)
    try:
        yield process.start()
    finally:
        process.stop()


def s3_server_env(s3) -> dict[str, str]:
    """What an MLflow server needs to keep its artifacts on the test S3 server (its own env only)."""
    return {
        # boto3 inside the server reads these; the test process never needs them.
        "MLFLOW_S3_ENDPOINT_URL": f"http://{s3.endpoint}",
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        "AWS_DEFAULT_REGION": s3.region,
    }


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
    with running_mlflow_server(workdir, f"s3://{s3.bucket}/mlflow", s3_server_env(s3)) as server:
        yield server
