"""Entrypoint of the batch personalization job.

    ray job submit --working-dir . -- python -m jobs.personalize --config job.yaml

Thin on purpose: parse arguments, load the typed config, run `pipelines.personalize.run_job`,
print the summary, exit non-zero only when the job itself could not run (a failed concept is
reported in the summary, not as a failed job).
"""
from __future__ import annotations

import argparse
import logging
import sys

from pipelines.config import JobConfig
from pipelines.personalize import run_job


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.personalize", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="job YAML (see docs/job-config.md); OMNIPERSONA_* env vars override it")
    parser.add_argument("--job-id", help="override the job id (default: derived from snapshot and config)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    cfg = JobConfig.from_yaml(args.config)
    if args.job_id:
        cfg = cfg.model_copy(update={"job_id": args.job_id})
    summary = run_job(cfg)
    print(summary.to_markdown(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
