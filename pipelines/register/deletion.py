"""What MLflow holds of one concept, found and purged one kind at a time (`pipelines.delete` runs
the steps and reports them).

- the registered model ``<prefix>.<tenant>.<concept>`` with its versions, tags and aliases: MLflow
  deletes these rows at once;
- its logged models (tags ``tenant``/``concept``): the package files are deleted through the
  artifact repository, the model is then soft-deleted;
- its registration runs (children of the job runs, tags ``omnipersona.tenant``/``.concept``):
  pictures and other files deleted, the run soft-deleted — its metrics, params, tags and dataset
  input go with it at the next ``mlflow gc``;
- on job runs: the per-run summaries (rewritten by the caller without the concept's rows), and what
  jobs logged there before registration runs existed (pictures under ``concepts/<tenant>/<concept>/``,
  dataset inputs named ``<tenant>/<concept>``).

Soft-deleted runs and logged models keep their database rows until ``mlflow gc --tracking-uri <url>
--backend-store-uri <database uri>`` (docs/deployment.md). Every step can run again: what is
already gone is not found again.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from omnipersona.identity import ConceptId
from pipelines.register import names
from pipelines.register.concept_model import concept_pictures_prefix
from pipelines.register.connection import MlflowConnection

SUMMARY_FILE_NAMES = ("summary.json", "summary.md")
_EXPERIMENTS_PER_SEARCH = 100  # experiment ids one search request carries


class CannotPurge(RuntimeError):
    """MLflow has no API to remove this record; the message says what to do instead."""


@dataclass(frozen=True)
class Found:
    """One record of the concept: ``label`` is what the report prints, ``ref`` what a purge needs."""

    label: str
    ref: Any = None


def _not_found(error: MlflowException) -> bool:
    return error.error_code == "RESOURCE_DOES_NOT_EXIST"


class MlflowConceptRecords:
    """The concept's records in one MLflow (tracking and registry), in every experiment."""

    def __init__(self, mlflow: MlflowConnection, concept: ConceptId, registered_model_name: str) -> None:
        self.mlflow = mlflow
        self.client = mlflow.client
        self.concept = concept
        self.model_name = registered_model_name

    def _pages(self, what: str, search: Callable[..., Any], *args: Any, **kwargs: Any) -> Iterator[Any]:
        token = None
        while True:
            page = self.mlflow.call(what, search, *args, page_token=token, **kwargs)
            yield from page
            token = page.token
            if not token:
                return

    def experiment_ids(self) -> list[str]:
        """Every experiment, deleted ones included (their runs exist until `mlflow gc`)."""
        return [e.experiment_id for e in self._pages("list experiments", self.client.search_experiments, view_type=ViewType.ALL)]

    def _search_everywhere(self, what: str, search: Callable[..., Any], **kwargs: Any) -> Iterator[Any]:
        """Every result of `search(experiment_ids, ...)` over all experiments, page by page."""
        experiments = self.experiment_ids()
        for start in range(0, len(experiments), _EXPERIMENTS_PER_SEARCH):
            yield from self._pages(what, search, experiments[start:start + _EXPERIMENTS_PER_SEARCH], **kwargs)

    def _ignore_not_found(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)`, or None when MLflow says the record does not exist (already gone: every step can run again)."""
        try:
            return self.mlflow.call(what, fn, *args)
        except MlflowException as e:
            if _not_found(e):
                return None
            raise

    def _repository(self, artifact_uri: str):
        # mlflow-artifacts:/ URIs resolve through this connection's server, not a global tracking URI.
        return get_artifact_repository(artifact_uri, tracking_uri=self.mlflow.tracking_uri)

    def _has_files(self, run_id: str, path: str | None = None) -> bool:
        """Whether the run holds a file below `path` (empty folders, which some stores keep, do not count)."""
        for info in self.mlflow.call("list artifacts", self.client.list_artifacts, run_id, path):
            if not info.is_dir or self._has_files(run_id, info.path):
                return True
        return False

    # ------------------------------------------------------------ the registered model

    def registered_model(self) -> list[Found]:
        if self._ignore_not_found("get registered model", self.client.get_registered_model, self.model_name) is None:
            return []
        versions = self.mlflow.call("list versions", self.client.search_model_versions, f"name = '{self.model_name}'")
        numbers = ", ".join(sorted((v.version for v in versions), key=int)) or "none"
        return [Found(f"registered model {self.model_name} (versions: {numbers})", self.model_name)]

    def delete_registered_model(self, found: Found) -> None:
        self._ignore_not_found("delete registered model", self.client.delete_registered_model, found.ref)

    # ------------------------------------------------------------ logged models

    def logged_models(self) -> list[Found]:
        """Active logged models tagged with the concept, and those behind its model versions."""
        models = {lm.model_id: lm for lm in self._search_everywhere(
            "list logged models", self.client.search_logged_models, filter_string=names.logged_model_filter(self.concept))}
        versions = self._ignore_not_found(
            "list versions", self.client.search_model_versions, f"name = '{self.model_name}'") or []
        from pipelines.register.registry import version_model_id

        for model_id in {version_model_id(v) for v in versions} - {None} - set(models):
            lm = self._ignore_not_found("get logged model", self.client.get_logged_model, model_id)
            if lm is not None and lm.lifecycle_stage != "deleted":
                models[model_id] = lm
        return [Found(f"logged model {mid} ({lm.artifact_location})", (mid, lm.artifact_location))
                for mid, lm in sorted(models.items())]

    def purge_logged_model(self, found: Found) -> None:
        """Its files first, then the soft delete: a model found again still has files to remove."""
        model_id, location = found.ref
        self._repository(location).delete_artifacts()
        self._ignore_not_found("delete logged model", self.client.delete_logged_model, model_id)

    # ------------------------------------------------------------ registration runs

    def concept_runs(self) -> list[Found]:
        """The concept's registration runs: active ones, and deleted ones that still have files."""
        out = []
        for run in self._search_everywhere("list runs", self.client.search_runs,
                                           filter_string=names.concept_run_filter(self.concept), run_view_type=ViewType.ALL):
            deleted = run.info.lifecycle_stage == "deleted"
            if deleted and not self._has_files(run.info.run_id):
                continue  # purged; its rows wait for `mlflow gc`
            parent = run.data.tags.get("mlflow.parentRunId", "none")
            out.append(Found(f"run {run.info.run_id} (registration run, parent {parent}{', deleted' if deleted else ''})",
                             (run.info.run_id, run.info.artifact_uri, deleted)))
        return out

    def purge_run(self, found: Found) -> None:
        run_id, artifact_uri, deleted = found.ref
        self._repository(artifact_uri).delete_artifacts()
        if not deleted:
            self._ignore_not_found("delete run", self.client.delete_run, run_id)

    def deleted_concept_runs(self) -> list[str]:
        """Soft-deleted registration runs of the concept: their rows wait for `mlflow gc`."""
        return sorted(r.info.run_id for r in self._search_everywhere(
            "list runs", self.client.search_runs, filter_string=names.concept_run_filter(self.concept),
            run_view_type=ViewType.DELETED_ONLY))

    # ------------------------------------------------------------ job runs

    def job_runs(self) -> list[Any]:
        """Every run that is not a registration run (job runs, whatever their tags)."""
        return [r for r in self._search_everywhere("list runs", self.client.search_runs, run_view_type=ViewType.ALL)
                if names.RUN_TAG_TENANT not in r.data.tags]

    def _walk(self, run_id: str, path: str | None = None) -> Iterator[str]:
        """The run's file paths; other concepts' legacy picture folders are not walked."""
        legacy_root = concept_pictures_prefix(self.concept).split("/")[0]
        for info in self.mlflow.call("list artifacts", self.client.list_artifacts, run_id, path):
            if info.is_dir:
                if info.path == legacy_root:
                    continue  # handled by `legacy_job_run_records`
                yield from self._walk(run_id, info.path)
            else:
                yield info.path

    def job_run_summaries(self, runs: list[Any]) -> list[tuple[Any, str]]:
        """(run, path) of every summary file logged on the job runs."""
        return [(run, path) for run in runs for path in self._walk(run.info.run_id)
                if path.rsplit("/", 1)[-1] in SUMMARY_FILE_NAMES]

    def read_text(self, run: Any, path: str) -> str:
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory(prefix="omnipersona-redact-") as tmp:
            local = self.mlflow.call("download", self._repository(run.info.artifact_uri).download_artifacts, path, tmp)
            return Path(local).read_text(encoding="utf-8")

    def write_text(self, run: Any, path: str, text: str) -> None:
        """Replace one run file (the artifact store overwrites a path on upload)."""
        import tempfile
        from pathlib import Path

        folder, _, name = path.rpartition("/")
        with tempfile.TemporaryDirectory(prefix="omnipersona-redact-") as tmp:
            local = Path(tmp) / name
            local.write_text(text, encoding="utf-8")
            self.mlflow.call("upload", self._repository(run.info.artifact_uri).log_artifact, str(local), folder or None)

    def legacy_job_run_records(self, runs: list[Any]) -> list[Found]:
        """What job runs held of the concept before registration runs: picture folders (deletable)
        and dataset inputs named after the concept (no API removes them)."""
        prefix = concept_pictures_prefix(self.concept)
        out = []
        for run in runs:
            run_id = run.info.run_id
            if self._has_files(run_id, prefix):
                out.append(Found(f"run {run_id}: pictures {prefix}/", ("pictures", run, prefix)))
            for dataset_input in run.inputs.dataset_inputs if run.inputs else []:
                if dataset_input.dataset.name == self.concept.key:
                    out.append(Found(f"run {run_id}: dataset input named {self.concept.key}", ("dataset", run, None)))
        return out

    def purge_legacy_job_run_record(self, found: Found) -> None:
        kind, run, prefix = found.ref
        if kind == "pictures":
            self._repository(f"{run.info.artifact_uri.rstrip('/')}/{prefix}").delete_artifacts()
            return
        raise CannotPurge(
            f"MLflow has no API to remove a dataset input from run {run.info.run_id} (logged before registration "
            "runs existed): delete that job run (`mlflow runs delete --run-id ...`, then `mlflow gc`), or remove its "
            "row from the `inputs` and `datasets` tables of the MLflow database"
        )
