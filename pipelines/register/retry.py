"""Retries for MLflow calls: transient failures again with backoff, logic errors at once.

On top of MLflow's own HTTP retries. Creations look before creating and look again after a failed
attempt (the server may have applied a create whose answer got lost), so a retry never duplicates
a run, a registered model or a version.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, TypeVar

import requests
from mlflow.exceptions import MlflowException
from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)
T = TypeVar("T")


class RetryPolicy(BaseModel):
    """Exponential backoff for transient MLflow failures."""

    model_config = ConfigDict(extra="forbid")
    attempts: int = Field(5, ge=1)
    initial_delay_s: float = Field(0.5, ge=0)
    max_delay_s: float = Field(10.0, ge=0)

    def delays(self) -> list[float]:
        return [min(self.initial_delay_s * 2**i, self.max_delay_s) for i in range(self.attempts - 1)]


def is_transient(error: BaseException) -> bool:
    """Connection trouble or a server-side failure: worth another try. 4xx answers are not."""
    if isinstance(error, (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError)):
        return True
    if isinstance(error, MlflowException):
        status = error.get_http_status_code()
        return status >= 500 or status == 429
    return False


def call_with_retries(fn: Callable[[], T], policy: RetryPolicy, what: str) -> T:
    """Run ``fn``; on a transient error wait and try again, up to ``policy.attempts`` times."""
    for delay in [*policy.delays(), None]:
        try:
            return fn()
        except Exception as e:
            if delay is None or not is_transient(e):
                raise
            log.warning("MLflow call %s failed (%s); retrying in %.1f s", what, e, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def already_exists(error: BaseException) -> bool:
    return isinstance(error, MlflowException) and error.error_code == "RESOURCE_ALREADY_EXISTS"


def create_once(
    find: Callable[[], T | None], create: Callable[[], T], policy: RetryPolicy, what: str, look_first: bool = True
) -> tuple[T, bool]:
    """Find-or-create that never duplicates. Returns (obj, created).

    Another process may create the same object between our look and our create (two runs starting
    at once): the server then answers RESOURCE_ALREADY_EXISTS and we take theirs. Without
    ``look_first`` (the caller has just looked, or the object cannot exist yet) the first request
    is the create: ``find`` runs only after a failed attempt (a create the server may have applied).
    """
    if look_first:
        found = call_with_retries(find, policy, f"find {what}")
        if found is not None:
            return found, False
    for delay in [*policy.delays(), None]:
        try:
            return create(), True
        except Exception as e:
            if already_exists(e):
                found = call_with_retries(find, policy, f"find {what}")
                if found is not None:
                    return found, False
                raise
            if delay is None or not is_transient(e):
                raise
            log.warning("creating %s failed (%s); checking and retrying in %.1f s", what, e, delay)
            time.sleep(delay)
            found = call_with_retries(find, policy, f"find {what}")
            if found is not None:
                return found, False
    raise AssertionError("unreachable")
