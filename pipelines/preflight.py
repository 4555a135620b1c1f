"""Preflight: what a job needs, checked in seconds, before torch, Ray or MLflow are imported.

    cfg = load_config("job.yaml")          # PreflightError: one Problem per bad field
    problems = endpoint_problems(cfg)      # [] when every store and service answers

`omnipersona personalize --validate` runs only this; the job runs it first. Each `Problem` names
the config field or the endpoint and says what to do, on one line.
"""
from __future__ import annotations

import os
import re
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs
from pydantic import ValidationError

from omnipersona.model.release_files import missing_release_files
from pipelines.config import JobConfig
from pipelines.storage import StorageConfig, filesystem_for, is_s3_uri

# Every endpoint check together must answer within this (the job's own retries are for later).
ENDPOINT_BUDGET_S = 25.0


@dataclass(frozen=True)
class Problem:
    where: str  # a config field (`train.recipe.setps`) or an endpoint (`ingest.uploads_uri s3://...`)
    what: str  # what is wrong and what to do

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


class PreflightError(Exception):
    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(map(str, problems)))


# ------------------------------------------------------------------------------------- config


def load_config(path: str | Path, job_id: str | None = None) -> JobConfig:
    """The validated job config; PreflightError with one Problem per bad field otherwise."""
    try:
        cfg = JobConfig.from_yaml(path)
    except ValidationError as e:
        raise PreflightError([_field_problem(err) for err in e.errors()]) from None
    except (OSError, ValueError) as e:  # missing file, YAML that is not a mapping or not YAML
        raise PreflightError([Problem(str(path), " ".join(str(e).split()))]) from None
    return cfg.model_copy(update={"job_id": job_id}) if job_id else cfg


_FIXES = {
    "extra_forbidden": "unknown key (a typo? docs/job-config.md lists every key)",
    "missing": "required, not set (docs/job-config.md)",
}


def _field_problem(err: dict) -> Problem:
    where = ".".join(str(part) for part in err["loc"]) or "config"
    message = _FIXES.get(err["type"])
    if message is None:
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] != "value_error":
            message += f" (got {_short(err.get('input'))})"
    if err["type"] == "value_error" and not err["loc"] and ": " in message:  # model-level: the message names its field
        where, _, message = message.partition(": ")
    return Problem(where, message + _env_hint(where))


def _env_hint(where: str) -> str:
    env = "OMNIPERSONA_" + where.upper().replace(".", "__")
    return f" [set by the environment variable {env}]" if env in os.environ else ""


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# ---------------------------------------------------------------------------------- endpoints


def endpoint_problems(cfg: JobConfig, budget_s: float = ENDPOINT_BUDGET_S) -> list[Problem]:
    """Reach every store and service the job will use, concurrently, within `budget_s` in all."""
    # Preflight asks once, quickly: the job's patient retry settings are for transient faults later.
    storage = cfg.storage.model_copy(update={"max_attempts": 1, "connect_timeout_s": 3.0, "request_timeout_s": 10.0})
    checks: dict[str, Callable[[], list[Problem]]] = {
        "uploads": lambda: _uploads(cfg, storage),
        "artifacts": lambda: _writable(cfg, storage),
        "mlflow": lambda: _mlflow(cfg.mlflow.tracking_uri),
        "base model": lambda: _base_model(cfg.model.uri, storage),
    }
    for field, uri in (("ingest.negatives_uri", cfg.ingest.negatives_uri), ("evaluation.eval_sets_uri", cfg.evaluation.eval_sets_uri)):
        if uri:
            checks[field] = lambda field=field, uri=uri: _exists(field, uri, storage)
    problems: list[Problem] = []
    pool = ThreadPoolExecutor(max_workers=len(checks), thread_name_prefix="preflight")
    futures = {name: pool.submit(check) for name, check in checks.items()}
    deadline = time.monotonic() + budget_s
    for name, future in futures.items():
        try:
            problems += future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            problems.append(Problem(name, f"no answer within {budget_s:.0f} s (endpoint down or unreachable?)"))
        except Exception as e:  # noqa: BLE001 - a check that crashes is a problem to report, not a traceback
            problems.append(Problem(name, _storage_error(e)))
    pool.shutdown(wait=False, cancel_futures=True)
    return problems


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _storage_error(error: BaseException) -> str:
    """What an S3 / filesystem error means for the operator."""
    return _access_problem(error) or _one_line(error)[:300]


def _access_problem(error: BaseException) -> str | None:
    """The store refused us or cannot be reached (and what to do); None for any other error."""
    text = _one_line(error)
    lowered = text.lower()
    squashed = re.sub(r"[\s_]", "", lowered)  # ACCESS_DENIED, AccessDenied and "access denied" alike
    if any(s in squashed for s in ("invalidaccesskeyid", "signaturedoesnotmatch", "accessdenied", "nocredentials",
                                   "unabletolocatecredentials", "forbidden")):
        return (f"refused: credentials missing or wrong ({text[:160]}); set OMNIPERSONA_STORAGE__ACCESS_KEY and "
                "OMNIPERSONA_STORAGE__SECRET_KEY (or the AWS credential chain)")
    if any(s in lowered for s in ("connection refused", "couldn't connect", "could not connect", "timed out",
                                  "curlcode: 7", "failed to connect", "name or service not known", "resolve host")):
        return f"cannot connect ({text[:160]}); check storage.endpoint_override / storage.scheme and that the server is up"
    return None


def _where(field: str, uri: str) -> str:
    return f"{field} ({uri})"


def _uploads(cfg: JobConfig, storage: StorageConfig) -> list[Problem]:
    uri = cfg.ingest.uploads_uri
    where = _where("ingest.uploads_uri", uri)
    try:
        fs, path = filesystem_for(uri, storage)
        info = fs.get_file_info(path)
        entries = fs.get_file_info(pafs.FileSelector(path, recursive=False)) if info.type == pafs.FileType.Directory else []
    except Exception as e:  # noqa: BLE001
        return [Problem(where, _storage_error(e))]
    if info.type == pafs.FileType.File:
        return [Problem(where, "is a file; it must be the folder/prefix holding <tenant>/<concept>/ uploads")]
    if not entries and not cfg.ingest.allow_empty:
        state = "does not exist" if info.type == pafs.FileType.NotFound else "is empty"
        return [Problem(where, f"{state}: no uploads to train (check the path; set ingest.allow_empty: true if an "
                               "empty snapshot is expected)")]
    return []


def _exists(field: str, uri: str, storage: StorageConfig) -> list[Problem]:
    try:
        fs, path = filesystem_for(uri, storage)
        missing = fs.get_file_info(path).type == pafs.FileType.NotFound
    except Exception as e:  # noqa: BLE001
        return [Problem(_where(field, uri), _storage_error(e))]
    return [Problem(_where(field, uri), "does not exist (fix the path, or remove the setting)")] if missing else []


def _writable(cfg: JobConfig, storage: StorageConfig) -> list[Problem]:
    """Write and remove a probe object under each root the job writes."""
    problems = []
    roots = {"artifacts.root": cfg.artifacts.root, "artifacts.work": cfg.artifacts.work_root, "artifacts.runs": cfg.artifacts.runs_root}
    for field, uri in roots.items():
        if field != "artifacts.root" and uri.startswith(cfg.artifacts.root.rstrip("/") + "/"):
            continue  # under the root: the root's probe speaks for it
        try:
            fs, path = filesystem_for(uri, storage)
            probe = f"{path}/.preflight-{uuid.uuid4().hex}"
            existed = fs.get_file_info(path).type != pafs.FileType.NotFound
            if not is_s3_uri(uri):
                fs.create_dir(path, recursive=True)
            with fs.open_output_stream(probe) as out:
                out.write(b"ok")
            try:
                fs.delete_file(probe)
            except FileNotFoundError:
                pass  # another job's preflight removed the empty folder with it (jobs submitted at once)
            # Leave no folder (or S3 folder marker) behind that was not there, but only an empty one:
            # a job started meanwhile may be writing into it (never a recursive delete).
            if not existed and not fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=False)):
                try:
                    fs.delete_dir(path)
                except FileNotFoundError:
                    pass
        except Exception as e:  # noqa: BLE001
            what = _access_problem(e) or (f"cannot write a test object here ({_one_line(e)[:300]}); give the job write "
                                          f"access or pick another {field}")
            problems.append(Problem(_where(field, uri), what))
    return problems


def _mlflow(tracking_uri: str) -> list[Problem]:
    where = _where("mlflow.tracking_uri", tracking_uri)
    parsed = urlparse(tracking_uri)
    if parsed.scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(f"{tracking_uri.rstrip('/')}/health", timeout=5) as response:
                if response.status == 200:
                    return []
                return [Problem(where, f"answered HTTP {response.status} on /health; is this an MLflow tracking server?")]
        except urllib.error.HTTPError as e:
            return [Problem(where, f"answered HTTP {e.code} on /health; is this an MLflow tracking server?")]
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            return [Problem(where, f"unreachable ({reason}); start the server or fix the URI "
                                   "(OMNIPERSONA_MLFLOW__TRACKING_URI overrides it)")]
    if parsed.scheme == "sqlite":
        db = Path(tracking_uri.removeprefix("sqlite:///")) if tracking_uri.startswith("sqlite:///") else None
        if db is not None and not db.parent.is_dir():
            return [Problem(where, f"the folder {db.parent} of the sqlite file does not exist; create it")]
        return []
    if parsed.scheme in ("", "file", "databricks", "postgresql", "mysql", "mssql"):
        return []
    return [Problem(where, f"unsupported scheme {parsed.scheme!r}; use http(s)://host:port of an MLflow server or sqlite:///path")]


def _base_model(uri: str, storage: StorageConfig) -> list[Problem]:
    if uri == "tiny":
        return []
    if uri == "world":  # the base shipped with the package: checked like any local base folder
        from omnipersona.model.shipped_bases import WORLD_BASE

        uri = str(WORLD_BASE)
    where = _where("model.uri", uri)
    try:
        fs, path = filesystem_for(uri, storage)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            return [Problem(where, "does not exist: point model.uri at a BAGEL checkpoint folder (or 'tiny')")]
        names = [Path(f.path).name for f in fs.get_file_info(pafs.FileSelector(path, recursive=False))]
    except Exception as e:  # noqa: BLE001
        return [Problem(where, _storage_error(e))]
    missing = missing_release_files(names)
    if missing:
        return [Problem(where, f"not a BAGEL checkpoint folder: missing {', '.join(missing)} (docs/job-config.md, 'model')")]
    return []
