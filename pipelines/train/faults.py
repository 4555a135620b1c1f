"""Fault injection for tests of the train stage: a worker process that dies at a chosen point.

    FaultSpec(rank=1, pack=1, point="after_step", step=2)   # rank 1, pack 2, once 2 steps are done
    FaultSpec(rank=0, pack=2, point="after_export")         # rank 0, after pack 3's artifacts

`after_step` fires once `step` steps of the pack are done, after that step's checkpoint (when the
step has one); `after_export` fires after the pack's artifacts are all written (every rank waits
for rank 0's exports) and before the pack-end checkpoint. Each fault fires once per run: a `fault`
record (rank, point, pack_index, step) in the run log is written first, so neither a restarted worker
group nor a resubmission of the run fires it again, and a test can see that it fired. The process then exits with `os._exit(1)`, as a killed worker would.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Literal

from pydantic import BaseModel, Field

from pipelines.train.run_log import RunLog

log = logging.getLogger("omnipersona.train")
Point = Literal["after_step", "after_export"]


class FaultSpec(BaseModel):
    rank: int = Field(1, ge=0)
    pack: int = Field(0, ge=0, description="0-based pack index")
    point: Point = "after_step"
    step: int = Field(1, ge=1, description="after_step: steps of the pack done when it fires")


def maybe_fail(faults: list[FaultSpec], run_log: RunLog, point: Point, pack_index: int, step: int | None = None) -> None:
    """Exit this process if a fault of this rank is due here and has not fired in this run yet."""
    for fault in faults:
        if (fault.rank, fault.point, fault.pack) != (run_log.rank, point, pack_index):
            continue
        if point == "after_step" and fault.step != step:
            continue
        where = {"point": point, "pack_index": pack_index, "step": step}
        if any(r["rank"] == run_log.rank and all(r.get(k) == v for k, v in where.items()) for r in run_log.read("fault")):
            continue  # fired before a restart (or in an earlier submission of the run)
        run_log.add("fault", **where)
        log.warning("injected fault: rank %d exits at %s of pack %d", run_log.rank, point, pack_index + 1)
        sys.stderr.flush()
        os._exit(1)
