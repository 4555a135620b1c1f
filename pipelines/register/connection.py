"""One MLflow connection: an explicit client (no global tracking URI), the experiment, the retry policy."""
from __future__ import annotations

from functools import cached_property
from typing import Any, Callable, TypeVar

from mlflow.tracking import MlflowClient

from pipelines.register.retry import RetryPolicy, call_with_retries, create_once

T = TypeVar("T")


class MlflowConnection:
    """What job runs and the concept registry share; every call goes through `call` (retried)."""

    def __init__(self, tracking_uri: str, experiment_name: str = "omnipersona", retry: RetryPolicy | None = None,
                 registry_uri: str | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri or tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=self.registry_uri)
        self.experiment_name = experiment_name
        self.retry = retry or RetryPolicy()

    def call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return call_with_retries(lambda: fn(*args, **kwargs), self.retry, what)

    def create_once(self, find: Callable[[], T | None], create: Callable[[], T], what: str) -> tuple[T, bool]:
        return create_once(find, create, self.retry, what)

    @cached_property
    def experiment_id(self) -> str:
        experiment, _ = self.create_once(
            lambda: self.client.get_experiment_by_name(self.experiment_name),
            lambda: self.client.get_experiment(self.client.create_experiment(self.experiment_name)),
            f"experiment {self.experiment_name}",
        )
        return experiment.experiment_id
