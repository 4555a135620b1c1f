"""Leases on the real stores: of jobs racing for one concept artifact exactly one holds it, a
renewed lease outlives its TTL, an abandoned one is taken over once, and the old holder learns it."""
from __future__ import annotations

import threading
import time

import pytest

from pipelines.lease import Leases, lease_store


@pytest.fixture(params=["s3", "local"])
def store(request, tmp_path):
    if request.param == "local":
        return lease_store(str(tmp_path / "leases"), None)
    s3 = request.getfixturevalue("s3_server")
    return lease_store(s3.uri(f"leases/{tmp_path.name}"), s3.storage_config())


def test_one_holder_at_a_time_and_release_hands_it_on(store):
    first, second = Leases(store, "job-a", "run-1", ttl_s=60), Leases(store, "job-a", "run-2", ttl_s=60)
    assert first.acquire("acme/rex/d/r/b") is None
    holder = second.acquire("acme/rex/d/r/b")
    assert holder is not None and holder.owner == first.owner and holder.run_id == "run-1"
    assert second.acquire("acme/kai/d/r/b") is None, "other artifacts are free"
    first.release("acme/rex/d/r/b")
    assert second.holder("acme/rex/d/r/b") is None
    assert second.acquire("acme/rex/d/r/b") is None


def test_racing_jobs_one_wins(store):
    contenders = [Leases(store, f"job-{i}", "run", ttl_s=60) for i in range(8)]
    results: dict[int, object] = {}
    start = threading.Barrier(len(contenders))

    def race(i):
        start.wait()
        results[i] = contenders[i].acquire("acme/rex/d/r/b")

    threads = [threading.Thread(target=race, args=(i,)) for i in range(len(contenders))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, r in results.items() if r is None]
    assert len(winners) == 1, results
    assert {r.owner for r in results.values() if r is not None} == {contenders[winners[0]].owner}


def test_renewal_outlives_the_ttl_and_an_abandoned_lease_is_taken_over_once(store):
    alive, waiting = Leases(store, "job-a", "r1", ttl_s=1.5), Leases(store, "job-b", "r2", ttl_s=60)
    assert alive.acquire("acme/rex/d/r/b") is None
    alive.start_renewing()
    time.sleep(2.5)
    assert waiting.acquire("acme/rex/d/r/b") is not None, "renewed: still held after its TTL"
    alive._stop.set()  # the holder dies without releasing
    alive._thread.join()
    time.sleep(1.7)
    takers = [Leases(store, f"job-{i}", "r", ttl_s=60) for i in range(3)]
    assert sum(t.acquire("acme/rex/d/r/b") is None for t in takers) == 1
    assert alive.renew() == ["acme/rex/d/r/b"], "the old holder learns it lost the lease"
