"""The log of a real run on a local Ray (`omnipersona demo --log-format json`, as small as it goes:
one concept on the shipped world base, three steps): what a log pipeline, and so a person, reads; and
what the demo shows a newcomer, the concept's before/after contact sheet and the summary line. A local Ray without a
dashboard is where Ray Train's placement group cleaner warns every second, Ray Data prints progress
blocks, MLflow warns and draws download bars; none of it reaches the log unless asked for with
--log-level debug. (The `ray job submit` path, in text, is checked in test_job_e2e.py.)"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from omnipersona.infer.contact_sheet import sheet_size

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_the_demo_log_is_for_people_and_shows_each_concept_before_and_after(tmp_path):
    """Break-checked once by hand (2026-11-30): with the demo's contact sheets switched off
    (`_before_and_after` not called) the sheet and summary assertions fail; with the sheet not logged
    to MLflow the artifact assertions fail."""
    env = os.environ.copy()
    # The defaults an operator has: no test-session switches that would hide the noise for us.
    for name in ("RAY_DATA_DISABLE_PROGRESS_BARS", "RAY_AUTH_MODE", "RAY_ADDRESS"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-m", "jobs.cli", "demo", "--dir", str(tmp_path / "demo"), "--concepts", "1",
                           "--steps", "3", "--log-format", "json"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stderr.strip() == "", done.stderr[-3000:]
    # JSON lines, every one of them: our own messages, nothing else.
    records = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert all(set(r) == {"time", "level", "logger", "message"} for r in records), records
    messages = [r["message"] for r in records]
    text = "\n".join(messages)
    # The job's first message names the job and its MLflow run (only the demo's own come before it).
    job = [r for r in records if r["logger"] != "omnipersona.demo"]
    assert job[0]["logger"] == "omnipersona.job" and re.fullmatch(r"job demo, MLflow run [0-9a-f]{32}", job[0]["message"]), text
    # One message per stage; progress inside the pack, with rate and ETA.
    for stage in ("[1/5] ingest: ", "[2/5] select: ", "[3/5] train: ", "[4/5] evaluate and [5/5] register: "):
        assert sum(m.startswith(stage) for m in messages) == 1, (stage, text)
    assert re.search(r"\[train\] pack 1/1 step 1/3 \| loss [\d.]+ per concept \| [\d.]+ steps/s \| pack ETA \d+s", text), text
    assert sum(m.startswith("[train] pack 1/1 done in") for m in messages) == 1, text
    repeated = sorted({m for m in messages if messages.count(m) > 1})
    assert not repeated, repeated
    for noise in ("PlacementGroupCleaner", "Failed to query Ray Train Controller", "TrainController", "RayTrainWorker",
                  "pickle", "can be interpreted in multiple ways", "Warning", "Downloading artifacts", "logging_progress",
                  "Running Dataset", "Started a local Ray instance", "Token authentication", "View run"):
        assert noise not in text, (noise, text)

    # The concept's contact sheet: a PNG of the announced layout, in outputs/ and on its MLflow model.
    sheets = sorted((tmp_path / "demo" / "outputs").glob("*.png"))
    assert [p.name for p in sheets] == ["acme_mabel.png"], sheets
    with Image.open(sheets[0]) as sheet:
        assert sheet.format == "PNG" and sheet.size == sheet_size(), sheet.size
    assert re.search(r"\[demo\] acme/mabel: held-out p\(yes\) [\d.]+ -> [\d.]+, look-alikes [\d.]+ -> [\d.]+", text), text
    assert re.search(r"\[demo\] trained beats untrained on held-out recognition for [01] of 1 concepts", text), text
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'demo' / 'mlflow' / 'mlflow.db'}")
    version = client.get_model_version_by_alias("omnipersona.acme.mabel", "champion")
    assert [a.path for a in client.list_artifacts(version.run_id, "contact_sheet")] == ["contact_sheet/acme_mabel.png"]
    logged_model = version.source.removeprefix("models:/")  # the version's logged model, models:/m-...
    assert "acme_mabel.png" in [a.path for a in client.list_logged_model_artifacts(logged_model)]
