"""A real Ray head on loopback (`ray start --head`) with the job server, for `ray job submit` tests.

Separate from `ray_cluster.ray_session` (an in-process `ray.init`): this is a cluster other
processes submit jobs to, as in production.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class RayHead:
    gcs_address: str
    dashboard_url: str
    env: dict
    temp_dir: str = ""  # the head's session folders: every Ray log of the jobs it ran


def submit_command(head: RayHead, entrypoint: list[str], *, submission_id: str | None = None,
                   runtime_env: dict | None = None) -> list[str]:
    """`ray job submit` of `entrypoint` to `head` with this repository as the working dir (what an
    operator types; run it with `cwd` at the repository root and `env=head.env`)."""
    cmd = [_ray_cli(), "job", "submit", "--address", head.dashboard_url, "--working-dir", "."]
    if submission_id:
        cmd += ["--submission-id", submission_id]
    if runtime_env:
        cmd += ["--runtime-env-json", json.dumps(runtime_env)]
    return [*cmd, "--", *entrypoint]


def agent_not_up(output: str) -> bool:
    """A freshly started head answers before its job agent is up: that is not a failed job."""
    return "No available agent" in output


def wait_for_job_agent(head: RayHead, cwd: Path, timeout_s: float = 180) -> None:
    """Submit a no-op until the head accepts jobs, so that submissions meant to run at once do."""
    deadline = time.monotonic() + timeout_s
    while True:
        done = subprocess.run(submit_command(head, [sys.executable, "-c", "pass"]), cwd=cwd, env=head.env,
                              capture_output=True, text=True, timeout=300)
        if not agent_not_up(done.stdout + done.stderr):
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
            return
        assert time.monotonic() < deadline, "the Ray head's job agent did not come up"
        time.sleep(3)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_cli() -> str:
    return shutil.which("ray") or str(Path(sys.executable).parent / "ray")


def start_ray_head(env: dict, *, num_cpus: int = 4, resources: dict | None = None) -> RayHead:
    """`ray start --head` on loopback with the job server, on free ports; stop it with `stop_ray`."""
    temp_dir = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Unix socket paths are limited
    port, dash = _free_port(), _free_port()
    cmd = [_ray_cli(), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", f"--num-cpus={num_cpus}",
           "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--temp-dir={temp_dir}",
           "--disable-usage-stats",
           # The session's in-process Ray (ray_cluster.py) holds the default agent ports: pick free ones.
           *_agent_ports(), *(["--resources", json.dumps(resources)] if resources else [])]
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=120)
    url = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/api/version", timeout=2):
                break
        except OSError:
            time.sleep(0.5)
    else:
        stop_ray(temp_dir)
        raise RuntimeError(f"the Ray job server at {url} did not come up")
    return RayHead(gcs_address=f"127.0.0.1:{port}", dashboard_url=url, env=env, temp_dir=temp_dir)


def add_worker_node(head: RayHead, *, num_cpus: int, resources: dict | None = None) -> str:
    """A second Ray node on this machine joined to `head` (`ray start --address=...`): a real
    multi-node cluster, with its own raylet and object store. Returns its temp dir (for stop_ray)."""
    temp_dir = tempfile.mkdtemp(prefix="rn", dir="/tmp")
    cmd = [_ray_cli(), "start", f"--address={head.gcs_address}", "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}",
           "--disable-usage-stats", f"--temp-dir={temp_dir}", f"--node-manager-port={_free_port()}",
           f"--object-manager-port={_free_port()}", *_agent_ports(),
           *(["--resources", json.dumps(resources)] if resources else [])]
    subprocess.run(cmd, env=head.env, check=True, capture_output=True, timeout=120)
    return temp_dir


def _agent_ports() -> list[str]:
    return [f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
            f"--metrics-export-port={_free_port()}", f"--runtime-env-agent-port={_free_port()}"]


def ray_head_env(s3_server) -> dict:
    return {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "OMP_NUM_THREADS": "1",
        # The session's S3 credentials in the head's environment, as a pod's env from a Secret: every
        # job driver and worker inherits them. Never in a submission's runtime env: Ray writes that,
        # variables included, to its runtime_env_agent log (docs/deployment.md).
        **s3_server.job_env(),
    }


@pytest.fixture(scope="session")
def ray_head(s3_server):
    head = start_ray_head(ray_head_env(s3_server))
    try:
        yield head
    finally:
        stop_ray(head.temp_dir)


def stop_ray(temp_dir: str) -> None:
    _stop_processes_of(temp_dir)
    shutil.rmtree(temp_dir, ignore_errors=True)


def _stop_processes_of(temp_dir: str) -> None:
    """Stop only this head's processes (`ray stop` would stop every Ray on the machine)."""
    import psutil

    procs = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in part for part in (p.info["cmdline"] or [])):
                procs.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for p in procs:
        p.terminate()
    # The raylet and the GCS server sit out SIGTERM for 15 s (measured); nothing of a test's head is
    # kept, so after a short grace they are killed.
    _, alive = psutil.wait_procs(procs, timeout=2)
    for p in alive:
        p.kill()
    psutil.wait_procs(alive, timeout=10)
