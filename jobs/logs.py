"""Logging for the job and the CLI: readable by people by default, JSON lines for log pipelines.

Third-party libraries (Ray's internals, MLflow, botocore, DeepSpeed) are kept at WARNING unless the
operator asks for `--log-level debug`: what the job itself says is the signal.
"""
from __future__ import annotations

import json
import logging
import sys
import time

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")

# Loggers of libraries we use; at INFO they repeat what our own stage lines say.
THIRD_PARTY = ("ray", "mlflow", "botocore", "boto3", "urllib3", "s3transfer", "filelock", "deepspeed", "torch",
               "transformers", "diffusers", "alembic", "fsspec", "asyncio")


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
    """Set up the root logger once per process (later calls replace the handler)."""
    if level not in LEVELS:
        raise ValueError(f"log level {level!r}: use one of {', '.join(LEVELS)}")
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: use one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    third_party_level = logging.DEBUG if level == "debug" else logging.WARNING
    for name in THIRD_PARTY:
        logging.getLogger(name).setLevel(third_party_level)
