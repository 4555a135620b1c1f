"""Entrypoint of the batch personalization job.

    ray job submit --working-dir . -- python -m jobs.personalize --config job.yaml

Thin on purpose: parse arguments, load the typed config, run `pipelines.personalize.run_job`,
print the summary and exit with a code a scheduler can act on (EXIT_CODES below).
"""
from __future__ import annotations

import argparse
import logging
import sys

EXIT_OK = 0
EXIT_JOB_FAILED = 2
EXIT_CONCEPTS_FAILED = 3
EXIT_CODES = """exit codes:
  0  every concept is done or skipped (quarantined uploads are reported in the summary, not failures)
  3  the job ran, but some concepts failed or are pending (see the summary; a rerun retries them)
  2  the job could not run or stopped early (bad config, unreachable service, a stage crashed)
"""

log = logging.getLogger("omnipersona.job")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="job YAML (see docs/job-config.md); OMNIPERSONA_* env vars override it")
    parser.add_argument("--job-id", help="override the job id (default: derived from snapshot, recipe and base)")
    parser.add_argument("--validate", action="store_true",
                        help="only check the config and reach every store and service (seconds; nothing is written "
                             "but a probe object that is removed again); exit 0 when the job could run")


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("personalize", parents=[common], help="run the batch job from a YAML config (what `ray job submit` runs)",
                       epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(s)
    s.set_defaults(fn=run)


def run(args) -> int:
    from pipelines.preflight import PreflightError, endpoint_problems, load_config

    # Before torch, Ray or MLflow load: a bad config or a store that is down fails in seconds.
    try:
        cfg = load_config(args.config, job_id=args.job_id)
        problems = endpoint_problems(cfg)
    except PreflightError as e:
        problems = e.problems
    for problem in problems:
        print(f"omnipersona personalize: {problem}", file=sys.stderr, flush=True)
    if problems:
        return EXIT_JOB_FAILED
    if args.validate:
        print(f"{args.config}: config valid; uploads, artifact stores, MLflow and the base model answer", flush=True)
        return EXIT_OK

    from pipelines.personalize import run_job

    try:
        summary = run_job(cfg)
    except Exception:  # noqa: BLE001 - the process's answer is its exit code; the traceback is logged
        log.exception("the job could not run")
        return EXIT_JOB_FAILED
    from jobs.logs import log_format

    if log_format() == "text":  # JSON lines stay JSON lines; the summary is also in the work store and MLflow
        print(summary.to_markdown(), flush=True)
    if not summary.complete:
        log.error("job %s run %s: %s — see the summary", summary.job_id, summary.run_id, summary.counts())
        return EXIT_CONCEPTS_FAILED
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """`python -m jobs.personalize`: the same as `omnipersona personalize`."""
    from jobs.cli import main as cli_main

    return cli_main(["personalize", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
