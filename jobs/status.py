"""`omnipersona status <job-id>`: the runs of a job and its latest summary."""
from __future__ import annotations

import argparse
import json
import sys


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("status", parents=[common], help="summary (or state) of a job")
    s.add_argument("job_id", metavar="job-or-submission-id",
                   help="the job id the job printed at start (or `--job-id` given to personalize), or the Ray "
                        "submission id of one of its runs (looked up in MLflow)")
    s.add_argument("--config", required=True, help="the job YAML (its stores hold the summaries)")
    s.add_argument("--json", action="store_true", help="print one JSON object (job id, state, every run's summary) instead")
    s.set_defaults(fn=run)


def job_of_submission(cfg, submission_id: str) -> str | None:
    """The job a Ray submission ran, from the tag on its MLflow run (None: none, or MLflow unreachable)."""
    import os

    from pipelines.register import MlflowConnection
    from pipelines.register.job_runs import JobRuns

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # status answers now, or says it could not
    try:
        return JobRuns(MlflowConnection(cfg.mlflow.tracking_uri, experiment_name=cfg.mlflow.experiment)).job_of_submission(submission_id)
    except ValueError:
        return None  # not a token a submission id can be
    except Exception as e:  # noqa: BLE001 - the summaries were looked up first; MLflow only maps ids
        print(f"could not look {submission_id} up as a Ray submission in MLflow: {' '.join(str(e).split())[:200]}", file=sys.stderr)
        return None


def read_job(cfg, job_id: str) -> tuple[list, str]:
    """A job's run summaries (oldest first) and its state: complete, incomplete, running or unknown."""
    from pipelines.paths import JobPaths
    from pipelines.storage import filesystem_for
    from pipelines.summary import read_run_summaries

    paths = JobPaths.of(cfg, job_id)
    fs, runs_dir = filesystem_for(paths.runs, cfg.storage)
    summaries = read_run_summaries(fs, runs_dir)
    if summaries:
        return summaries, "complete" if summaries[-1].complete else "incomplete"
    ingested = fs.get_file_info(filesystem_for(paths.quarantine, cfg.storage)[1]).type.name == "File"
    return summaries, "running" if ingested else "unknown"


def run(args) -> int:
    from pipelines.config import JobConfig
    from pipelines.summary import runs_table

    cfg = JobConfig.from_yaml(args.config)
    job_id = args.job_id
    summaries, state = read_job(cfg, job_id)
    if not summaries and (submitted := job_of_submission(cfg, job_id)):
        print(f"Ray submission {job_id} ran job {submitted}", file=sys.stderr)
        job_id = submitted
        summaries, state = read_job(cfg, job_id)
    if args.json:
        print(json.dumps({"job_id": job_id, "state": state, "runs": [s.model_dump(mode="json") for s in summaries]}))
    elif summaries:
        print(f"job {job_id}: {len(summaries)} run(s)\n")
        print(runs_table(summaries))
        print(f"latest run {summaries[-1].run_id}:\n")
        print(summaries[-1].to_markdown())
    else:
        what = "running (ingest done)" if state == "running" else "unknown (no trace of this job id)"
        print(f"job {job_id}: {what}; training progress is in the job log (`ray job logs <submission id>`)")
    return 1 if state == "unknown" else 0
