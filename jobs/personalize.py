"""Entrypoint of the batch personalization job.

    ray job submit --working-dir . -- python -m jobs.personalize --config job.yaml

Thin on purpose: parse arguments, load the typed config, run `pipelines.personalize.run_job`,
print the summary and exit with a code a scheduler can act on:

    0  every concept is done or skipped (quarantined uploads are reported in the summary, not failures)
    3  the job ran, but some concepts failed or are pending (see the summary; a rerun retries them)
    2  the job could not run or stopped early (bad config, unreachable service, a stage crashed)
"""
from __future__ import annotations

import argparse
import logging
import sys

EXIT_OK = 0
EXIT_JOB_FAILED = 2
EXIT_CONCEPTS_FAILED = 3

log = logging.getLogger("omnipersona.job")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.personalize", description=__doc__.splitlines()[0],
                                     epilog="exit codes: 0 all done or skipped; 3 some concepts failed or pending; "
                                            "2 the job could not run")
    parser.add_argument("--config", required=True, help="job YAML (see docs/job-config.md); OMNIPERSONA_* env vars override it")
    parser.add_argument("--job-id", help="override the job id (default: derived from snapshot, recipe and base)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)

    from pipelines.config import JobConfig
    from pipelines.personalize import run_job

    try:
        cfg = JobConfig.from_yaml(args.config)
        if args.job_id:
            cfg = cfg.model_copy(update={"job_id": args.job_id})
        summary = run_job(cfg)
    except Exception:  # noqa: BLE001 - the process's answer is its exit code; the traceback is logged
        log.exception("the job could not run")
        return EXIT_JOB_FAILED
    print(summary.to_markdown(), flush=True)
    if not summary.complete:
        log.error("job %s run %s: %s — see the summary", summary.job_id, summary.run_id, summary.counts())
        return EXIT_CONCEPTS_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
