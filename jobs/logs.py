"""Logging for the job and the CLI: readable by people by default, JSON lines for log pipelines.

`configure_logging` is the one setup, called first thing by every command. What the job itself says
(`omnipersona.*`, `pipelines.*`, `jobs.*`) is the signal; third-party libraries are kept quiet unless
the operator asks for `--log-level debug`:

- their loggers (Ray, Ray Data, MLflow, botocore, DeepSpeed, ...) are set to ERROR, and the
  libraries that configure their own loggers when imported (Ray, Ray Data, MLflow, transformers,
  diffusers) get the same level through the environment variables they read then — so the setting
  holds whatever is imported later, and in the Ray processes this process starts;
- progress bars are off (Ray Data's progress blocks, MLflow's artifact download bars), and so are
  MLflow's "View run at" lines for every run it ends;
- Python warnings (cloudpickle, deprecations) go through logging (`py.warnings`) and are shown at debug;
- Ray's worker processes (train workers, the train controller, Ray Data tasks) do not forward their
  output to the job's log: the job starts Ray with `log_to_driver` only at debug
  (`pipelines.personalize`), and training progress reaches the log through `ray.train.report`
  (`pipelines.train.progress`). Their logs stay in Ray's session folder.

An environment variable the operator set explicitly is left as it is.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")

# Loggers of libraries we use; below ERROR they repeat what our own stage lines say, or warn about
# things an operator cannot act on (pickling, deprecations, retries that succeeded).
THIRD_PARTY = ("ray", "ray.data", "ray.train", "ray.tune", "mlflow", "alembic", "botocore", "boto3", "urllib3",
               "s3transfer", "filelock", "deepspeed", "DeepSpeed", "torch", "transformers", "diffusers", "fsspec",
               "asyncio", "py.warnings", "PIL", "matplotlib")


def library_environment(debug: bool) -> dict[str, str]:
    """What the libraries read from the environment when imported (and Ray's processes inherit)."""
    if debug:
        return {"RAY_LOGGER_LEVEL": "debug", "RAY_DATA_LOG_LEVEL": "DEBUG", "MLFLOW_LOGGING_LEVEL": "DEBUG",
                "TRANSFORMERS_VERBOSITY": "debug", "DIFFUSERS_VERBOSITY": "debug"}
    return {"RAY_LOGGER_LEVEL": "error", "RAY_DATA_LOG_LEVEL": "ERROR", "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
            "MLFLOW_LOGGING_LEVEL": "ERROR", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
            "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
            "TRANSFORMERS_VERBOSITY": "error", "DIFFUSERS_VERBOSITY": "error"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC ISO-8601), level, logger, message (+ exception)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    """Set up the root logger once per process (later calls replace the handler), and quiet the
    libraries unless `level` is debug."""
    if level not in LEVELS:
        raise ValueError(f"log level {level!r}: use one of {', '.join(LEVELS)}")
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: use one of {', '.join(FORMATS)}")
    debug = level == "debug"
    for name, value in library_environment(debug).items():
        os.environ.setdefault(name, value)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.captureWarnings(True)
    third_party_level = logging.DEBUG if debug else max(logging.ERROR, root.level)
    for name in THIRD_PARTY:
        logging.getLogger(name).setLevel(third_party_level)


def log_format() -> str:
    """The format `configure_logging` set up for this process ("text" when it was not called)."""
    return "json" if any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers) else "text"
