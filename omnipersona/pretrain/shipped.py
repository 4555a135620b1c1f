"""The world base and its judge as they ship with the package (committed to the repository).

    omnipersona/pretrain/shipped/world-base/    the BAGEL release layout: llm_config.json, vit_config.json,
                                                bagel_config.json, ema.safetensors, ae.safetensors,
                                                tokenizer files, pretrain_recipe.json (`model.uri: world`)
    omnipersona/pretrain/shipped/world-probe/   the judge: probe.safetensors, probe_config.json
    omnipersona/pretrain/shipped/SHA256SUMS     sha256 and size of every file above

`python benchmarks/pretrain_base.py --write-shipped` writes them from the default recipe's build
(`ensure_world_base`, `ensure_probe`). A rebuild on the same machine gives the same bytes; CPUs with
other vector units give other floats, so the demo, the tests and the tables use these files, not a
rebuild. `ensure_world_base()` and `ensure_probe()` return them whenever their recipe is the one asked
for. Torch-free: a job's preflight resolves `model.uri: world` through this module.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from ..model.release_files import FINGERPRINT_FILE
from ..model.shipped_bases import WORLD_BASE

SHIPPED_ROOT = Path(__file__).resolve().parent / "shipped"
SHIPPED_BASE = WORLD_BASE  # where the product looks for `model.uri: world`
SHIPPED_PROBE = SHIPPED_ROOT / "world-probe"
SUMS_FILE = "SHA256SUMS"
RECIPE_FILE = "pretrain_recipe.json"
PROBE_FILES = ("probe.safetensors", "probe_config.json")
SIZE_LIMIT = 10_000_000  # bytes, every shipped file together (the release layout stays a small package file)
# Build timings differ from run to run: the shipped recipe keeps only what the bytes depend on.
_UNSHIPPED_RECIPE_KEYS = ("seconds",)


def shipped_recipe(folder: Path = SHIPPED_BASE) -> dict | None:
    """The shipped base's `pretrain_recipe.json` (config, digest, final losses), None when not shipped."""
    path = folder / RECIPE_FILE
    return json.loads(path.read_text()) if path.exists() else None


def shipped_base_digest(folder: Path = SHIPPED_BASE) -> str | None:
    recipe = shipped_recipe(folder)
    return None if recipe is None else recipe["digest"]


def shipped_probe_config(folder: Path = SHIPPED_PROBE) -> dict | None:
    """The shipped probe's config fields (`ProbeConfig(**...)`), None when not shipped."""
    path = folder / "probe_config.json"
    return json.loads(path.read_text()) if path.exists() and (folder / PROBE_FILES[0]).exists() else None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def file_table(root: Path = SHIPPED_ROOT) -> dict[str, tuple[str, int]]:
    """Every shipped file under `root` (but the sums file and the job's fingerprint records):
    relative path -> (sha256, bytes)."""
    files = sorted(p for p in root.rglob("*")
                   if p.is_file() and p.name not in (SUMS_FILE, FINGERPRINT_FILE) and not p.name.startswith("."))
    return {p.relative_to(root).as_posix(): (_sha256(p), p.stat().st_size) for p in files}


def _sums_text(table: dict[str, tuple[str, int]]) -> str:
    return "".join(f"{sha}  {size:>9}  {name}\n" for name, (sha, size) in table.items())


def read_sums(root: Path = SHIPPED_ROOT) -> dict[str, tuple[str, int]]:
    table = {}
    for line in (root / SUMS_FILE).read_text().splitlines():
        sha, size, name = line.split(maxsplit=2)
        table[name] = (sha, int(size))
    return table


def check_shipped(root: Path = SHIPPED_ROOT) -> list[str]:
    """What is wrong with the shipped files (empty: nothing): missing, altered or extra files, or too big."""
    if not (root / SUMS_FILE).exists():
        return [f"{root / SUMS_FILE} is missing: run python benchmarks/pretrain_base.py --write-shipped"]
    expected, found = read_sums(root), file_table(root)
    problems = [f"{name}: missing" for name in expected if name not in found]
    problems += [f"{name}: not listed in {SUMS_FILE}" for name in found if name not in expected]
    problems += [f"{name}: sha256 {found[name][0][:12]}..., {SUMS_FILE} says {sha[:12]}..."
                 for name, (sha, _) in expected.items() if name in found and found[name][0] != sha]
    total = sum(size for _, size in found.values())
    if total > SIZE_LIMIT:
        problems.append(f"{total} bytes shipped, more than {SIZE_LIMIT}")
    return problems


def write_shipped(base: Path, probe: Path, root: Path = SHIPPED_ROOT) -> dict[str, tuple[str, int]]:
    """Copy a built world base folder and a probe folder to `root` (replacing what is there) and write
    the sums file; returns the file table. Nothing is replaced when the files would exceed `SIZE_LIMIT`."""
    base, probe, root = Path(base), Path(probe), Path(root)
    staging = root.parent / f".{root.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / SHIPPED_BASE.name).mkdir(parents=True)
    (staging / SHIPPED_PROBE.name).mkdir()
    for f in sorted(base.iterdir()):
        if f.is_file() and f.name != RECIPE_FILE and not f.name.startswith("."):
            shutil.copyfile(f, staging / SHIPPED_BASE.name / f.name)
    recipe = {k: v for k, v in json.loads((base / RECIPE_FILE).read_text()).items() if k not in _UNSHIPPED_RECIPE_KEYS}
    (staging / SHIPPED_BASE.name / RECIPE_FILE).write_text(json.dumps(recipe, indent=2, sort_keys=True) + "\n")
    for name in PROBE_FILES:
        shutil.copyfile(probe / name, staging / SHIPPED_PROBE.name / name)
    table = file_table(staging)
    total = sum(size for _, size in table.values())
    if total > SIZE_LIMIT:
        shutil.rmtree(staging)
        raise ValueError(f"the shipped files would take {total} bytes, more than {SIZE_LIMIT}")
    (staging / SUMS_FILE).write_text(_sums_text(table))
    for name in (SHIPPED_BASE.name, SHIPPED_PROBE.name, SUMS_FILE):
        target = root / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    root.mkdir(parents=True, exist_ok=True)
    for entry in staging.iterdir():
        entry.rename(root / entry.name)
    staging.rmdir()
    return table
