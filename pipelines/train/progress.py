"""Training progress for people, driven by the workers' `ray.train.report` metrics.

Every rank reports one small dict per event (the same reports on every rank, as Ray Train
requires; `pipelines.train.loop` decides when): `ready` once its engine is built (and where a
checkpoint resumed it), `pack_start`, `step` (a pack's first step, every step that carries a
checkpoint, and one every `progress_interval_s` seconds) and `pack_done` with the pack-end
checkpoint. Ray Train V2 hands each round of reports to `UserCallback.after_report` on its
controller, an actor in another process: the callback forwards rank 0's dict (and any worker error)
to a small inbox actor, and `follow_progress` — a thread of the job process around `trainer.fit()`
— reads the inbox and logs one line per event with the `omnipersona.train` logger, with the step
rate and ETAs. So progress lines are the job's own log records (text or JSON, each once), whether
or not Ray forwards the workers' output.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

log = logging.getLogger("omnipersona.train")

READY, PACK_START, STEP, PACK_DONE, WORKER_ERROR = "ready", "pack_start", "step", "pack_done", "worker_error"


# ----------------------------------------------------------------------------- worker side: what a report carries


def ready_event(*, attempt: int, world: int, zero_stage: int, seconds: float, resumed_pack_index: int | None,
                resumed_step: int | None) -> dict:
    return _event(READY, attempt=attempt, world=world, zero_stage=zero_stage, seconds=round(seconds, 3),
                  resumed_pack_index=-1 if resumed_pack_index is None else resumed_pack_index,
                  resumed_step=-1 if resumed_step is None else resumed_step)


def pack_start_event(*, pack_index: int, packs: int, concepts: int, start: int, steps: int) -> dict:
    return _event(PACK_START, pack_index=pack_index, packs=packs, concepts=concepts, start=start, steps=steps)


def step_event(*, pack_index: int, packs: int, step: int, steps: int, concepts: int, loss: float, seconds: float) -> dict:
    """`step`: steps of the pack done; `loss`: the pack's loss at that step (summed over its concepts)."""
    return _event(STEP, pack_index=pack_index, packs=packs, step=step, steps=steps, concepts=concepts,
                  loss=float(loss), seconds=round(seconds, 4))


def pack_done_event(*, pack_index: int, packs: int, concepts: int, loss: float | None, exported: int, seconds: float,
                    concepts_done: int, concepts_total: int) -> dict:
    """`loss`: the pack's loss at its last step (-1: the pack had no step left, e.g. after a restart)."""
    return _event(PACK_DONE, pack_index=pack_index, packs=packs, concepts=concepts, loss=-1.0 if loss is None else float(loss),
                  exported=exported, seconds=round(seconds, 3), concepts_done=concepts_done, concepts_total=concepts_total)


def _event(kind: str, **fields) -> dict:
    # Flat scalars only: Ray keeps checkpointed reports' metrics in its run state.
    return {"event": kind, "time": time.time(), **fields}


# ----------------------------------------------------------------------------- job side: events into log lines


@dataclass
class ProgressLog:
    """Turns progress events into log lines, one per event."""

    logger: logging.Logger = log
    started: float | None = None  # this process's clock when the run started (None: not measured)
    _pack_t0: dict[int, tuple[float, int]] = field(default_factory=dict)  # pack -> (time, step) before its first reported step
    _packs_timed: list[float] = field(default_factory=list)
    events: int = 0

    def handle(self, event: dict) -> None:
        self.events += 1
        kind = event.get("event")
        handler = getattr(self, f"_on_{kind}", None)
        if handler is not None:
            handler(event)

    def _on_ready(self, e: dict) -> None:
        self._pack_t0.clear()  # a restarted attempt measures its own rate
        after = f" after {_duration(time.time() - self.started)}" if self.started is not None and e["attempt"] == 1 else ""
        self.logger.info("[train] %d workers ready%s (%.0fs loading the base model and building the DeepSpeed ZeRO-%d "
                         "engine), attempt %d", e["world"], after, e["seconds"], e["zero_stage"], e["attempt"])
        if e["resumed_pack_index"] >= 0:
            self.logger.info("[train] resumed at pack %d step %d (attempt %d)", e["resumed_pack_index"] + 1,
                             e["resumed_step"], e["attempt"])

    def _on_pack_start(self, e: dict) -> None:
        self.logger.info("[train] pack %d/%d: %d concepts, steps %d..%d", e["pack_index"] + 1, e["packs"], e["concepts"],
                         e["start"], e["steps"])

    def _on_step(self, e: dict) -> None:
        pack, step, steps = e["pack_index"], e["step"], e["steps"]
        # The pack's clock starts when its first reported step started (this attempt).
        t0, s0 = self._pack_t0.setdefault(pack, (e["time"] - e["seconds"], step - 1))
        rate = (step - s0) / max(e["time"] - t0, 1e-6)  # steps per second
        left_in_pack = (steps - step) / rate
        left_in_run = left_in_pack + (e["packs"] - pack - 1) * steps / rate
        self.logger.info("[train] pack %d/%d step %d/%d | loss %.4f per concept | %.2f steps/s | pack ETA %s | run ETA %s",
                         pack + 1, e["packs"], step, steps, e["loss"] / max(e["concepts"], 1), rate,
                         _duration(left_in_pack), _duration(left_in_run))

    def _on_pack_done(self, e: dict) -> None:
        self._packs_timed.append(e["seconds"])
        per_pack = sum(self._packs_timed) / len(self._packs_timed)
        loss = f" | loss {e['loss'] / max(e['concepts'], 1):.4f} per concept" if e["loss"] >= 0 else ""
        self.logger.info("[train] pack %d/%d done in %.1fs%s | exported %d | concepts %d/%d | run ETA %s",
                         e["pack_index"] + 1, e["packs"], e["seconds"], loss, e["exported"], e["concepts_done"],
                         e["concepts_total"], _duration(per_pack * (e["packs"] - e["pack_index"] - 1)))

    def _on_worker_error(self, e: dict) -> None:
        self.logger.warning("[train] worker rank %s failed: %s", e["rank"], e["error"])


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


# ----------------------------------------------------------------------------- between the controller and the job


class ProgressInbox:
    """A small actor: the controller's callback posts events, the job process takes them in order."""

    def __init__(self) -> None:
        self._events: list[dict] = []

    def post(self, event: dict) -> None:
        self._events.append(event)

    def take(self) -> list[dict]:
        events, self._events = self._events, []
        return events


def _one_line(error: BaseException) -> str:
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text if len(text) <= 300 else text[:297] + "..."


def make_callback(inbox):
    """A Ray Train `UserCallback` (it runs on the controller) that forwards rank 0's reported
    metrics and the workers' errors to `inbox`. It never raises: progress must not fail a run."""
    from ray.train import UserCallback

    class ProgressCallback(UserCallback):
        def __init__(self, inbox) -> None:
            self.inbox = inbox

        def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
            with contextlib.suppress(Exception):
                if metrics and isinstance(metrics[0], dict) and "event" in metrics[0]:
                    self.inbox.post.remote(dict(metrics[0]))

        def after_exception(self, run_context, worker_exceptions: dict[int, Exception]) -> None:
            with contextlib.suppress(Exception):
                for rank, error in sorted(worker_exceptions.items()):
                    self.inbox.post.remote(_event(WORKER_ERROR, rank=rank, error=_one_line(error)))

    return ProgressCallback(inbox)


# Ray Train's controller takes one report per worker each time it polls them (every 2 s by default): a
# worker's next report waits until then. Polled faster, reports reach the job promptly and training
# rarely waits on them. Ray Train passes this variable from the job process on to its controller.
POLL_ENV, POLL_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5"
STARTING_HEARTBEAT_S = 30.0  # while no worker has reported yet, say every 30 s that they are still starting


@contextlib.contextmanager
def follow_progress(poll_s: float = 1.0, progress: ProgressLog | None = None) -> Iterator[Any]:
    """Around `trainer.fit()`: yields the `UserCallback` to give `RunConfig(callbacks=[...])`, and
    logs the events it forwards while the block runs (the rest once it ends). Until the first
    report it says every 30 s that the workers are still starting."""
    import os

    import ray

    inbox = ray.remote(num_cpus=0, max_concurrency=1)(ProgressInbox).remote()
    progress = progress or ProgressLog()
    progress.started = time.time()
    stop = threading.Event()

    def drain() -> None:
        for event in ray.get(inbox.take.remote()):
            progress.handle(event)

    def follow() -> None:
        heartbeat = progress.started + STARTING_HEARTBEAT_S
        while not stop.wait(poll_s):
            with contextlib.suppress(Exception):
                drain()
            if not progress.events and time.time() >= heartbeat:
                heartbeat += STARTING_HEARTBEAT_S
                progress.logger.info("[train] still starting the workers (%s)", _duration(time.time() - progress.started))

    set_poll = POLL_ENV not in os.environ
    if set_poll:
        os.environ[POLL_ENV] = POLL_S

    thread = threading.Thread(target=follow, name="train-progress", daemon=True)
    thread.start()
    try:
        yield make_callback(inbox)
    finally:
        if set_poll:
            os.environ.pop(POLL_ENV, None)
        stop.set()
        thread.join()
        with contextlib.suppress(Exception):
            drain()
        with contextlib.suppress(Exception):
            ray.kill(inbox)
