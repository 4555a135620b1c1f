"""One local Ray session per test run (starting Ray costs seconds; every Ray test shares it).

num_cpus=4 on a 2-core machine on purpose: logical oversubscription keeps Ray Data's read/map tasks
schedulable while train workers hold CPUs. A short ``_temp_dir`` avoids the Unix-socket path limit.
"""

from __future__ import annotations

import tempfile

import pytest


@pytest.fixture(scope="session")
def ray_session():
    import ray

    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    ray.init(num_cpus=4, include_dashboard=False, _temp_dir=temp_dir, ignore_reinit_error=True)
    try:
        yield ray
    finally:
        ray.shutdown()
