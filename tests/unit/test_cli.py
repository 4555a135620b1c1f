"""The `omnipersona` command as an operator meets it: version, help for every option, exit codes in
--help, one-line errors (a traceback only with --debug), `status --json`."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from jobs.cli import build_parser

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_version():
    from importlib.metadata import version

    done = cli("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"omnipersona {version('omnipersona')}"


def test_help_lists_the_exit_codes():
    text = cli("--help").stdout
    for code, meaning in (("0", "every concept is done or skipped"), ("3", "the job ran, but some concepts failed"),
                          ("2", "the job could not run")):
        assert f"  {code}  {meaning}" in text, text
    assert "omnipersona delete --help" in text


def test_every_option_of_every_command_has_help_text():
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    undocumented = [
        f"{name} {'/'.join(action.option_strings) or action.dest}"
        for name, sub in [("omnipersona", parser), *commands.choices.items()]
        for action in sub._actions
        if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) and not action.help
    ]
    assert undocumented == []
    assert set(commands.choices) == {"personalize", "demo", "status", "infer", "delete"}


def test_an_error_is_one_line_and_the_traceback_needs_debug(tmp_path):
    done = cli("status", "some-job", "--config", str(tmp_path / "missing.yaml"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"omnipersona status: error: job config {tmp_path / 'missing.yaml'} does not exist (see docs/job-config.md for the format)"]
    debug = cli("status", "some-job", "--config", str(tmp_path / "missing.yaml"), "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


@pytest.fixture()
def job_with_a_run(tmp_path):
    from pipelines.summary import ConceptOutcome, JobSummary

    config = {"ingest": {"uploads_uri": str(tmp_path / "uploads"), "vit_size": 32, "vae_size": 32}, "model": {"uri": "tiny"},
              "artifacts": {"root": str(tmp_path / "store")}, "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'm.db'}"}}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(config))
    summary = JobSummary(job_id="job-1", run_id="run-a", started_at=datetime(2026, 11, 29, tzinfo=timezone.utc),
                         snapshot_uri="u", config_hash="h",
                         concepts=[ConceptOutcome(concept_key="acme/rex", outcome="done"),
                                   ConceptOutcome(concept_key="acme/kai", outcome="failed", reason="boom")])
    runs = tmp_path / "store" / "_work" / "job-1" / "runs" / "run-a"
    runs.mkdir(parents=True)
    (runs / "summary.json").write_text(summary.to_json())
    return tmp_path / "job.yaml"


def test_status_json_reports_every_run(job_with_a_run):
    done = cli("status", "job-1", "--config", str(job_with_a_run), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["job_id"] == "job-1" and report["state"] == "incomplete"
    assert [r["run_id"] for r in report["runs"]] == ["run-a"]
    assert {c["concept_key"]: c["outcome"] for c in report["runs"][0]["concepts"]} == {"acme/rex": "done", "acme/kai": "failed"}
    text = cli("status", "job-1", "--config", str(job_with_a_run))
    assert text.returncode == 0 and "acme/kai" in text.stdout and "boom" in text.stdout


def test_status_of_an_unknown_job(job_with_a_run):
    done = cli("status", "no-such-job", "--config", str(job_with_a_run), "--json")
    assert done.returncode == 1 and json.loads(done.stdout) == {"job_id": "no-such-job", "state": "unknown", "runs": []}
