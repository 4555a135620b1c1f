"""The run log: small JSON records that a training run's workers add to its run folder, one object
per record (object stores cannot append; nothing is ever rewritten), read back by tests, by a
resubmitted job and by anyone auditing a run.

    <run folder>/log/<kind>/<time ns, 20 digits>-r<rank>-<random>.json

Every record has `kind`, `time` (ISO 8601), `rank`, `attempt` (1 for the first start of that rank's
worker loop in this run, 2 after one restart, ...), `pid` and `host`, plus by kind:

    start       every worker-loop start: world, resumed_pack_index / resumed_step (null: fresh)
    resume      rank 0, when a start continues from a checkpoint: pack (1-based, as the job log
                prints it), pack_index (0-based), step
    checkpoint  rank 0, after each checkpoint was reported: pack_index, step (0: the pack-end one,
                with pack_index the next pack)
    export      rank 0, one per exported concept: concept, subpath, pack_index, checksum (sha256 of
                the tensors), path
    fault       an injected fault (`pipelines.train.faults`), just before the process exits
    zero        ZeRO-3 only, each rank once per attempt after its first trained pack: how the
                backbone's parameters are partitioned (`runner.zero3_partitioning`)
    early_stop  rank 0, when `train.early_stopping` stops a concept: concept, pack_index and its
                record (`omnipersona.training.ConceptStop.summary`)

`read_run_log(run_uri, storage, kind)` returns one kind's records in time order.
"""
from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

import pyarrow.fs as pafs

from pipelines.storage import StorageConfig, filesystem_for, join, list_files, write_bytes_atomic

LOG_FOLDER = "log"


@dataclass
class RunLog:
    """The run log of one run folder, written as `rank` in its `attempt`."""

    fs: pafs.FileSystem
    path: str  # the run folder, in `fs`'s namespace
    rank: int = 0
    attempt: int = 1

    @classmethod
    def open(cls, run_uri: str, storage: StorageConfig, rank: int = 0) -> "RunLog":
        """The run folder's log for `rank`; its attempt is one more than that rank's earlier starts."""
        fs, path = filesystem_for(run_uri, storage)
        log = cls(fs, path, rank)
        log.attempt = 1 + sum(1 for r in log.read("start") if r.get("rank") == rank)
        return log

    def add(self, kind: str, **fields) -> dict:
        record = {"kind": kind, "time": datetime.now(timezone.utc).isoformat(), "rank": self.rank,
                  "attempt": self.attempt, "pid": os.getpid(), "host": socket.gethostname(), **fields}
        name = f"{time.time_ns():020d}-r{self.rank}-{uuid.uuid4().hex[:8]}.json"
        write_bytes_atomic(self.fs, join(self.path, LOG_FOLDER, kind, name), json.dumps(record, sort_keys=True).encode())
        return record

    def read(self, kind: str) -> list[dict]:
        """Every record of `kind`, oldest first."""
        files = [f for f in list_files(self.fs, join(self.path, LOG_FOLDER, kind))
                 if f.base_name.endswith(".json") and not f.base_name.startswith(".tmp")]
        out = []
        for f in sorted(files, key=lambda f: f.base_name):
            with self.fs.open_input_stream(f.path) as stream:
                out.append(json.loads(stream.read()))
        return out


def read_run_log(run_uri: str, storage: StorageConfig | None, kind: str) -> list[dict]:
    """One kind's records of the run at `run_uri` (`TrainResult.run_uri`), oldest first."""
    fs, path = filesystem_for(run_uri, storage)
    return RunLog(fs, path).read(kind)
