"""One MLflow connection: an explicit client (no global tracking URI), the experiment, the retry policy."""
from __future__ import annotations

import os
from functools import cached_property
from typing import Any, Callable, TypeVar

from mlflow.tracking import MlflowClient

from pipelines.register.retry import RetryPolicy, call_with_retries, create_once

T = TypeVar("T")

# MLflow's own HTTP retries default to 7 per request with backoff factor 2 and a 120 s timeout: against a
# server that is down, one call would wait minutes, and `RetryPolicy` retries it again. Bounded here
# (unless the operator set them): a stopped server is detected in ~20 s (2 retries of each request,
# 0 s then ~2 s apart, times RetryPolicy's 5 attempts 0.5-4 s apart); a hung one after 30 s per try.
BOUNDED_HTTP_RETRIES = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


# MLflow prints a "View run" line when a run ends, after reading the run again to word it: one
# request per concept registration, for a line nobody reads in a job's log.
QUIET_RUN_END = {"MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}


def bound_http_retries() -> None:
    """Set MLflow's HTTP retry and timeout variables to `BOUNDED_HTTP_RETRIES`, and `QUIET_RUN_END`,
    where unset (MLflow reads them at every request)."""
    for name, value in {**BOUNDED_HTTP_RETRIES, **QUIET_RUN_END}.items():
        os.environ.setdefault(name, value)


class MlflowConnection:
    """What job runs and the concept registry share; every call goes through `call` (retried)."""

    def __init__(self, tracking_uri: str, experiment_name: str = "omnipersona", retry: RetryPolicy | None = None,
                 registry_uri: str | None = None) -> None:
        bound_http_retries()
        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri or tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=self.registry_uri)
        self.experiment_name = experiment_name
        self.retry = retry or RetryPolicy()

    def call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return call_with_retries(lambda: fn(*args, **kwargs), self.retry, what)

    def reachable(self, timeout_s: float = 5.0) -> bool:
        """Whether the tracking server answers its health check now (a local store always does)."""
        if not self.tracking_uri.startswith(("http://", "https://")):
            return True
        import requests

        try:
            return requests.get(f"{self.tracking_uri.rstrip('/')}/health", timeout=timeout_s).status_code == 200
        except requests.RequestException:
            return False

    def create_once(self, find: Callable[[], T | None], create: Callable[[], T], what: str,
                    look_first: bool = True) -> tuple[T, bool]:
        return create_once(find, create, self.retry, what, look_first)

    def set_alias(self, name: str, alias: str, version: str | int) -> None:
        """Point a registered model's alias at a version in one request: `MlflowClient.set_registered_model_alias`
        first reads the registered model to refuse prompts (a second request); ours are never prompts."""
        registry = getattr(self.client, "_get_registry_client", None)  # MLflow 3.17; else the public call
        set_alias = registry().set_registered_model_alias if registry else self.client.set_registered_model_alias
        self.call(f"set {alias}", set_alias, name, alias, str(version))

    @cached_property
    def experiment_id(self) -> str:
        experiment, _ = self.create_once(
            lambda: self.client.get_experiment_by_name(self.experiment_name),
            lambda: self.client.get_experiment(self.client.create_experiment(self.experiment_name)),
            f"experiment {self.experiment_name}",
        )
        return experiment.experiment_id
