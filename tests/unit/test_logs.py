"""Logs for people: the progress lines made from the workers' reports, the logging setup (JSON lines,
third-party noise off unless debug), the per-step telemetry behind the MLflow curves, the job params.
(The job's real output is checked end to end in tests/integration/test_job_e2e.py.)"""
from __future__ import annotations

import json
import logging
import os
import warnings

import pytest

from jobs import logs
from pipelines.train import progress


class Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture()
def lines():
    logger = logging.getLogger("test.progress")
    handler = Lines()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield progress.ProgressLog(logger=logger), handler.lines
    logger.removeHandler(handler)


def step(pack: int, done: int, at: float, seconds: float = 1.0, steps: int = 10, packs: int = 2, loss: float = 8.0) -> dict:
    return {**progress.step_event(pack_index=pack, packs=packs, step=done, steps=steps, concepts=4, loss=loss,
                                  seconds=seconds), "time": at}


def test_progress_lines_have_the_step_the_rate_and_the_etas(lines):
    log, out = lines
    log.handle(progress.ready_event(attempt=1, world=2, zero_stage=2, seconds=41.2, resumed_pack_index=None, resumed_step=None))
    log.handle(progress.pack_start_event(pack_index=0, packs=2, concepts=4, start=0, steps=10))
    log.handle(step(0, 1, at=101.0))  # its step started at 100
    log.handle(step(0, 5, at=110.0))  # 5 steps in 10 s: 0.5 steps/s, 5 left in the pack, 10 more in pack 2
    log.handle({**progress.pack_done_event(pack_index=0, packs=2, concepts=4, loss=20.0, exported=4, seconds=30.0,
                                           concepts_done=4, concepts_total=5), "time": 130.0})
    assert out == [
        "[train] 2 workers ready (41s loading the base model and building the DeepSpeed ZeRO-2 engine), attempt 1",
        "[train] pack 1/2: 4 concepts, steps 0..10",
        "[train] pack 1/2 step 1/10 | loss 2.0000 per concept | 1.00 steps/s | pack ETA 9s | run ETA 19s",
        "[train] pack 1/2 step 5/10 | loss 2.0000 per concept | 0.50 steps/s | pack ETA 10s | run ETA 30s",
        "[train] pack 1/2 done in 30.0s | loss 5.0000 per concept | exported 4 | concepts 4/5 | run ETA 30s",
    ]


def test_a_resumed_run_says_where_and_measures_its_own_rate(lines):
    log, out = lines
    log.handle(step(1, 2, at=50.0))
    log.handle(progress.ready_event(attempt=2, world=2, zero_stage=2, seconds=3.0, resumed_pack_index=1, resumed_step=3))
    log.handle(step(1, 4, at=1000.0, seconds=2.0))
    assert out[1:3] == ["[train] 2 workers ready (3s loading the base model and building the DeepSpeed ZeRO-2 engine), attempt 2",
                        "[train] resumed at pack 2 step 3 (attempt 2)"]
    assert "| 0.50 steps/s | pack ETA 12s | run ETA 12s" in out[3]


def test_the_callback_forwards_rank_zeros_report_and_worker_errors():
    class Inbox:
        def __init__(self):
            self.events = []
            self.post = self

        def remote(self, event):
            self.events.append(event)

    inbox = Inbox()
    callback = progress.make_callback(inbox)
    callback.after_report(None, [{"event": "step", "step": 1}, {"event": "step", "step": 1, "rank": 1}], None)
    callback.after_report(None, [{"not": "ours"}], None)
    callback.after_exception(None, {1: RuntimeError("out of\nmemory")})
    assert inbox.events[0] == {"event": "step", "step": 1}
    assert len(inbox.events) == 2 and inbox.events[1]["event"] == "worker_error"
    assert inbox.events[1]["rank"] == 1 and inbox.events[1]["error"] == "RuntimeError: out of memory"


@pytest.fixture()
def logging_restored(monkeypatch):
    """configure_logging changes the process: put the root logger, the library loggers and the
    environment back afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, {n: logging.getLogger(n).level for n in logs.THIRD_PARTY})
    for name in {*logs.library_environment(False), *logs.library_environment(True)}:
        monkeypatch.setenv(name, "x")
        monkeypatch.delenv(name)
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    for name, level in saved[2].items():
        logging.getLogger(name).setLevel(level)
    logging.captureWarnings(False)


def test_json_lines_for_our_messages_and_no_library_noise_by_default(logging_restored, capsys):
    logs.configure_logging("info", "json")
    assert logs.log_format() == "json"
    logging.getLogger("omnipersona.job").info("job %s, MLflow run %s", "job-1", "abc")
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").warning("Failed to query")
    logging.getLogger("mlflow.pyfunc").warning("Passing a Python object ... CloudPickle")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("The specified dataset source can be interpreted in multiple ways", UserWarning)
    out = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["message"] for line in out] == ["job job-1, MLflow run abc"]
    assert json.loads(out[0])["logger"] == "omnipersona.job" and json.loads(out[0])["level"] == "info"
    for name in ("ray.train.v2._internal.execution.controller.placement_group_cleaner", "ray.data", "mlflow.pyfunc"):
        assert not logging.getLogger(name).isEnabledFor(logging.WARNING), name
    # Libraries that configure their own logging when imported read these.
    assert os.environ["RAY_DATA_LOG_LEVEL"] == "ERROR" and os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"


def test_debug_brings_the_libraries_back(logging_restored, capsys):
    logs.configure_logging("debug", "text")
    assert logs.log_format() == "text"
    for name in ("ray.train.v2._internal.execution.controller.placement_group_cleaner", "mlflow.pyfunc", "deepspeed"):
        assert logging.getLogger(name).isEnabledFor(logging.DEBUG), name
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("cloudpickle", UserWarning)
    assert "WARNING py.warnings: " in capsys.readouterr().out
    assert os.environ["RAY_LOGGER_LEVEL"] == "debug" and "RAY_DATA_DISABLE_PROGRESS_BARS" not in os.environ


def test_telemetry_keeps_each_steps_loss_and_terms():
    from omnipersona.training import StepRecord
    from pipelines.train.runner import Telemetry

    nan = float("nan")
    tel = Telemetry()
    tel.add(StepRecord(0, 9.0, {"ce": [5.0, 6.0]}, [2, 2], 0.1), slot=0)
    tel.add(StepRecord(1, 9.0, {"ce": [4.0, 6.0], "t2i": [1.5, nan]}, [2, 2], 0.1), slot=0)
    tel.add(StepRecord(2, 9.0, {"ce": [3.0, 6.0], "t2i": [nan, 1.0]}, [2, 2], 0.1), slot=0)
    assert tel.history == {"step": [1, 2, 3], "loss": [5.0, 5.5, 3.0], "ce": [5.0, 4.0, 3.0], "t2i": [None, 1.5, None]}
    assert Telemetry.from_dict(json.loads(json.dumps(tel.to_dict()))).history == tel.history  # through a checkpoint


def test_job_params_hold_the_recipe_and_settings_but_no_credentials(tmp_path):
    from jobs.demo import demo_config
    from pipelines.config import JobConfig
    from pipelines.personalize import job_params

    raw = demo_config(tmp_path, steps=7)
    raw["storage"] = {"access_key": "AKIA-SECRET", "secret_key": "very-secret"}
    raw["mlflow"]["tracking_uri"] = "http://user:password@mlflow:5000"
    params = job_params(JobConfig(**raw))
    assert params["recipe.steps"] == "7" and params["recipe.betas"] == "[0.9, 0.999]"
    assert params["train.deepspeed.zero_stage"] == "2" and params["train.pack_size"] == "4"
    assert params["gate.minimums.recognition_accuracy"] == "0.0" and params["gate.maximums"] == "{}"
    assert params["evaluation.judge"] == "null" and params["mlflow.experiment"] == "omnipersona-demo"
    assert all(isinstance(v, str) for v in params.values())
    assert not any(secret in v for v in params.values() for secret in ("SECRET", "secret", "password"))
