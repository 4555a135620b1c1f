"""How a job uses leases (`pipelines.lease`): one live run per job id, one live job per concept artifact.

- **The job id.** Two submissions of the same job (same snapshot, recipe and base) would share one
  Ray Train run name and storage folder. The first takes the lease `_jobs/<job id>`; a second waits
  until that run ends (or its lease expires: the run died), then selects again — what the first
  registered is `skipped`, with why "registered by job X run Y" (read from the version: the run
  waited for may itself have skipped a concept a third job registered).
- **Each concept artifact.** Two different jobs whose snapshots share an unchanged concept plan the
  same artifact. Before training, a job takes the lease of every artifact it will train or register;
  those another live job holds are set aside, the job does its own work first, then waits for each
  (polling until released or expired) and checks again: registered -> `skipped` ("registered by job X
  run Y"); exported but not registered -> this job registers it; neither -> `pending` (a rerun
  trains it).

Leases live under `<artifacts.work>/_leases/`, last `artifacts.lease_ttl_s` (default 300 s) without
renewal, and are renewed every third of that while the job runs; a concept's lease is released once
it is registered, every lease when the job ends. A holder killed on this machine (its pid is gone)
frees its leases at once, so a job resubmitted on the same head after a kill does not wait the TTL.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from pipelines.config import JobConfig
from pipelines.lease import Holder, Leases, lease_store
from pipelines.register.names import TAG_JOB_ID, TAG_JOB_RUN_ID
from pipelines.train.runner import TrainConcept

log = logging.getLogger("omnipersona.job")


def job_key(job_id: str) -> str:
    return f"_jobs/{job_id}"


def registered_by(version) -> str:
    """Who registered a model version: its job tag and MLflow run (not a lease holder's word: the
    holder may have skipped the concept itself, another job having registered it)."""
    tags = version.tags or {}
    return f"registered by job {tags.get(TAG_JOB_ID, '?')} run {tags.get(TAG_JOB_RUN_ID, '?')}"


@dataclass
class HeldElsewhere:
    concept: TrainConcept
    holder: Holder


class JobLeases:
    """The leases of one job run; `close` releases them all (call it when the job ends)."""

    def __init__(self, cfg: JobConfig, job_id: str, run_id: str | None, poll_s: float | None = None):
        ttl = cfg.artifacts.lease_ttl_s
        self.job_id = job_id
        self.leases = Leases(lease_store(cfg.artifacts.leases_root, cfg.storage), job_id, run_id, ttl, stale_dead_local=True)
        self.poll_s = poll_s if poll_s is not None else min(5.0, ttl / 10)
        self.leases.start_renewing()

    def take_job(self) -> Holder | None:
        """Hold this job id, waiting while another live run of the same job holds it. Returns the
        run waited for (None: nobody else ran it)."""
        waited = None
        while (holder := self.leases.acquire(job_key(self.job_id))) is not None:
            if waited is None or holder.owner != waited.owner:
                log.info("job %s: run %s is running it; waiting until it ends (%s)", self.job_id, holder.run_id,
                         holder.describe())
            waited = holder
            time.sleep(self.poll_s)
        return waited

    def claim(self, concepts: list[TrainConcept]) -> tuple[list[TrainConcept], list[HeldElsewhere]]:
        """Take the lease of each concept's artifact: (ours, held by another live job)."""
        ours, elsewhere = [], []
        for c in sorted(concepts, key=lambda c: c.subpath):
            holder = self.leases.acquire(c.subpath)
            if holder is None:
                ours.append(c)
            else:
                log.info("%s: held by %s; waiting for it after this job's own concepts", c.id.key, holder.describe())
                elsewhere.append(HeldElsewhere(c, holder))
        return ours, elsewhere

    def wait_released(self, held: HeldElsewhere) -> Holder:
        """Poll until the other job releases the concept or its lease expires; returns the last
        holder seen (whose run trained it, if anyone did)."""
        last = held.holder
        while (holder := self.leases.holder(held.concept.subpath)) is not None:
            last = holder
            time.sleep(self.poll_s)
        return last

    def acquire(self, concept: TrainConcept) -> Holder | None:
        return self.leases.acquire(concept.subpath)

    def release(self, concept: TrainConcept) -> None:
        self.leases.release(concept.subpath)

    def close(self) -> None:
        """Stop renewing and release every lease this run holds (the job id's included)."""
        try:
            self.leases.stop()
        except Exception:  # noqa: BLE001 - the store is down: the leases expire after their TTL
            log.warning("could not release the job's leases; they expire after %.0fs", self.leases.ttl_s, exc_info=True)
