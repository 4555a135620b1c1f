"""Run `omnipersona personalize` as an operator would, and report what it printed, how long it
took, and whether anything heavy (torch, Ray, MLflow, DeepSpeed) was imported before it answered."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "ray", "mlflow", "deepspeed")
_PROBE = (
    "import sys, jobs.cli\n"
    "rc = jobs.cli.main(sys.argv[1:])\n"
    f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
    "print('HEAVY-IMPORTS', heavy, file=sys.stderr)\n"
    "sys.exit(rc)\n"
)


@dataclass
class CliRun:
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def heavy_imports(self) -> list[str]:
        line = next(line for line in self.stderr.splitlines() if line.startswith("HEAVY-IMPORTS"))
        return eval(line.removeprefix("HEAVY-IMPORTS "))  # noqa: S307 - our own repr of a list of names

    @property
    def problems(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("omnipersona personalize: ")]


def write_config(folder: Path, config: dict) -> Path:
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def personalize(config_path: Path, *flags: str, env: dict[str, str] | None = None, timeout: float = 120) -> CliRun:
    env = {**os.environ, **(env or {})}
    env = {k: v for k, v in env.items() if v is not None}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _PROBE, "personalize", "--config", str(config_path), *flags],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    return CliRun(done.returncode, done.stdout, done.stderr, time.perf_counter() - start)
