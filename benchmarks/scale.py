"""Scale: N generated concepts through the whole job (ingest -> train -> register) on this machine.

    python -m benchmarks.scale                               # 250 and 1,000 concepts, 1 step each
    python -m benchmarks.scale --concepts 100,400 --steps 1  # what fits in a short run

Each size runs in its own fresh process and Ray session (so nothing carries over), on the tiny
BAGEL, with local storage, a sqlite MLflow and `evaluation.enabled: false` (the evaluation gate runs
inference per concept: it is per-concept work whose cost does not change with N, and it would
dominate a CPU run). While the job runs, a sampler thread reads every Ray process's peak resident
memory (VmHWM, the kernel's high-water mark, so no spike between samples is missed) and the object
store's bytes in use (the raylet's store stats). The table shows, per N: wall time by stage, the
peak RSS of each Ray Train worker, of the other Ray workers (ingest's Ray Data tasks) and of the
driver, and the object store's peak: worker memory must not grow with N.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine, markdown_table, print_result  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MiB = 2**20


# ----------------------------------------------------------------------------- setup
def write_world(root: Path, n: int, tenants: int, seed: int) -> None:
    from omnipersona.world import make_concepts
    from omnipersona.world.uploads import UploadOptions, write_uploads

    # Concepts must look distinct within a tenant (its hard negatives are one attribute off), not across
    # tenants: generating per tenant keeps the attribute space from running out at large n.
    sizes = [n // tenants + (1 if t < n % tenants else 0) for t in range(tenants)]
    by_tenant = {f"tenant{t:02d}": make_concepts(k, seed=seed * 1000 + t) for t, k in enumerate(sizes) if k}
    write_uploads(by_tenant, root / "uploads", options=UploadOptions(views=3, edits=1, pool_negatives=32))
    shutil.move(str(root / "uploads" / "_negatives"), str(root / "negatives"))


def small_bagel(folder: Path) -> Path:
    """benchmarks.flops' `small` config (~20x tiny in LLM width) saved in the release layout."""
    from benchmarks.flops import CONFIGS
    from omnipersona.model.tiny import build_tiny_bagel, tiny_config

    if not (folder / "ema.safetensors").exists():
        build_tiny_bagel(folder, seed=0, config=tiny_config(**CONFIGS["small"][0]))
    return folder


def prepare_base(args) -> None:
    """Build the base once, in this (parent) process, before any measured job."""
    from pipelines.model_store import resolve_model_uri

    if args.model == "tiny":
        resolve_model_uri("tiny", tiny_cache=str(Path(args.models_dir) / "tiny-bagel"))
    else:
        small_bagel(Path(args.models_dir) / "small-bagel")


def job_config(root: Path, args) -> dict:
    return {
        "job_id": "scale",
        "ingest": {"uploads_uri": str(root / "uploads"), "negatives_uri": str(root / "negatives"),
                   "vit_size": 32, "vae_size": 32, "epochs": 1, "samples_per_task": 2},
        # Built by the parent process (`prepare_base`): the driver's peak memory is the job's, not the build's.
        "model": {"uri": "tiny", "tiny_cache": str(Path(args.models_dir) / "tiny-bagel")} if args.model == "tiny"
                 else {"uri": str(Path(args.models_dir) / "small-bagel")},
        "train": {
            "recipe": {"steps": args.steps, "batch_size": args.batch_size, "lr": 0.02, "num_und_tokens": 8,
                       "num_gen_tokens": 8, "vit_size": 32, "vae_size": 32},
            "deepspeed": {"zero_stage": 2},
            "scaling": {"num_workers": args.workers, "cpus_per_worker": 1},
            "pack_size": args.pack_size,
            "checkpoint_every": 1000,
        },
        "artifacts": {"root": str(root / "store" / "concepts"), "work": str(root / "store" / "work"),
                      "runs": str(root / "store" / "ray")},
        "mlflow": {"tracking_uri": f"sqlite:///{root / 'mlflow' / 'mlflow.db'}", "experiment": "omnipersona-scale"},
        # With actors: the gate's evaluation on Ray actors (each loads the base once; the driver none),
        # kept short per concept (two examples, no sample pictures): its per-concept cost does not
        # change with N, what this benchmark measures is whether the driver and the actors stay flat.
        "evaluation": ({"enabled": True, "actors": args.evaluation_actors, "cpus_per_actor": 1, "max_examples": 2,
                        "sample_images": False, "sampling_steps": 2}
                       if args.evaluation_actors else {"enabled": False}),
        "hard_negative_features": "colour_histogram",
        "ray": {"num_cpus": 4},
    }


# ----------------------------------------------------------------------------- measuring
def _peak_rss_bytes(pid: int) -> int | None:
    """The process's peak resident set (VmHWM) so far; None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


class ResourceSampler(threading.Thread):
    """Peak memory of every Ray worker process, by role, and the object store's peak use."""

    def __init__(self, interval: float = 0.5):
        super().__init__(daemon=True)
        self.interval = interval
        self.stop_event = threading.Event()
        self.peaks: dict[int, int] = {}
        self.roles: dict[int, str] = {}
        self.names: dict[int, str] = {}
        self.store_peak = 0
        self.cpu_s: dict[int, float] = {}  # last seen user+system seconds of every process of this job
        self.store_last = None
        self.samples = 0

    def _store_stats(self):
        import ray
        from ray._private.internal_api import get_memory_info_reply, get_state_from_address

        state = get_state_from_address(ray.get_runtime_context().gcs_address)
        return get_memory_info_reply(state).store_stats

    def sample(self) -> None:
        import psutil

        # Only this job's Ray: a local `ray.init` starts the raylet as a child of this process and the
        # workers as the raylet's children (other Ray sessions on the machine are not ours).
        for proc in psutil.Process().children(recursive=True):
            try:
                cmd = " ".join(proc.cmdline())
                times = proc.cpu_times()
                self.cpu_s[proc.pid] = times.user + times.system
            except psutil.Error:
                continue
            if not cmd.startswith("ray::"):
                continue
            pid = proc.pid
            if pid not in self.names or not cmd.startswith("ray::IDLE"):
                self.names[pid] = cmd.strip()[:120]  # the last non-idle name says what the process did
            if "RayTrainWorker" in cmd:
                self.roles[pid] = "train_worker"
            else:
                self.roles.setdefault(pid, "other_ray_worker")
            peak = _peak_rss_bytes(pid)
            if peak is not None:
                self.peaks[pid] = max(self.peaks.get(pid, 0), peak)
        try:
            stats = self._store_stats()
            self.store_peak = max(self.store_peak, stats.object_store_bytes_used)
            self.store_last = stats
        except Exception:  # noqa: BLE001 - the store is unreachable while Ray starts or stops
            pass
        self.samples += 1

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.sample()
            self.stop_event.wait(self.interval)

    def stop(self) -> None:
        self.stop_event.set()
        self.join()
        self.sample()

    def by_role(self, role: str) -> list[int]:
        return sorted(v for pid, v in self.peaks.items() if self.roles.get(pid) == role)


class StageClock(logging.Handler):
    """Timestamps of the job's '[k/5]' stage log lines."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.marks: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.startswith("[") and "/5]" in msg[:6]:
            self.marks.setdefault(msg[1], time.perf_counter())


def run_one(n: int, args) -> dict:
    """One job of n concepts in this process (a fresh Ray session)."""
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import ray
    from mlflow import MlflowClient

    from pipelines.config import JobConfig
    from pipelines.personalize import run_job

    root = Path(tempfile.mkdtemp(prefix=f"bench-scale-{n}-"))
    t0 = time.perf_counter()
    write_world(root, n, args.tenants, args.seed)
    t_world = time.perf_counter() - t0
    (root / "mlflow").mkdir()
    cfg = JobConfig(**job_config(root, args))
    client = MlflowClient(cfg.mlflow.tracking_uri)
    client.create_experiment(cfg.mlflow.experiment, artifact_location=(root / "mlflow" / "artifacts").as_uri())

    env = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        env["TORCH_EXTENSIONS_DIR"] = os.environ["TORCH_EXTENSIONS_DIR"]
    ray_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Unix socket paths have a length limit
    ray.init(num_cpus=cfg.ray.num_cpus, include_dashboard=False, _temp_dir=ray_dir,
             runtime_env={"env_vars": env}, logging_level=logging.WARNING)
    clock = StageClock()
    logging.getLogger("omnipersona.job").addHandler(clock)
    logging.getLogger("omnipersona.job").setLevel(logging.INFO)
    sampler = ResourceSampler(args.sample_interval)
    sampler.start()
    t_start = time.perf_counter()
    own = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = own.ru_utime + own.ru_stime
    try:
        summary = run_job(cfg)
    finally:
        t_end = time.perf_counter()
        sampler.stop()
    own = resource.getrusage(resource.RUSAGE_SELF)
    job_cpu = sum(sampler.cpu_s.values()) + own.ru_utime + own.ru_stime - cpu_before
    load_average = os.getloadavg()
    spilled = int(getattr(sampler.store_last, "spilled_bytes_total", 0) or 0)
    store_capacity = int(getattr(sampler.store_last, "object_store_bytes_avail", 0) or 0)
    ray.shutdown()
    m = clock.marks
    stages = {
        "ingest_s": m.get("3", t_end) - m.get("1", t_start),  # ingest + select (MLflow lookups)
        "train_s": m.get("4", t_end) - m.get("3", t_end),  # writing the examples + training
        "register_s": t_end - m.get("4", t_end),
    }
    train_workers, others = sampler.by_role("train_worker"), sampler.by_role("other_ray_worker")
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(ray_dir, ignore_errors=True)
    return {
        "concepts": n, "model": args.model, "evaluation_actors": args.evaluation_actors,
        "images_per_s_ingest": 3 * n / max(stages["ingest_s"], 1e-9),
        "counts": summary.counts(), "world_s": t_world, "wall_s": t_end - t_start, **stages,
        "job_cpu_s": job_cpu, "load_average_1_5_15": load_average,
        "train_worker_peak_rss_mib": [v / MiB for v in train_workers],
        "other_ray_worker_peak_rss_mib_max": max(others, default=0) / MiB, "other_ray_workers": len(others),
        "driver_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "object_store_peak_mib": sampler.store_peak / MiB, "object_store_capacity_mib": store_capacity / MiB,
        "object_store_spilled_mib": spilled / MiB, "samples": sampler.samples,
        "processes": [{"pid": pid, "role": sampler.roles.get(pid), "cmd": sampler.names.get(pid), "peak_rss_mib": v / MiB}
                      for pid, v in sorted(sampler.peaks.items())],
    }


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concepts", default="250,1000", help="comma list of job sizes, each run in a fresh process")
    p.add_argument("--steps", type=int, default=1, help="optimizer steps per concept")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--pack-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers")
    p.add_argument("--tenants", type=int, default=10)
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--sample-interval", type=float, default=0.5)
    p.add_argument("--evaluation-actors", type=int, default=0,
                   help="evaluate on this many Ray actors (0: evaluation off, as the first figures were taken)")
    p.add_argument("--model", choices=("tiny", "small"), default="tiny", help="the base: tiny, or flops.py's small")
    p.add_argument("--models-dir", help=argparse.SUPPRESS)
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _child_args(args, n: int) -> list[str]:
    return ["--one", str(n), "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--pack-size",
            str(args.pack_size), "--workers", str(args.workers), "--tenants", str(args.tenants), "--seed", str(args.seed),
            "--sample-interval", str(args.sample_interval), "--evaluation-actors", str(args.evaluation_actors),
            "--model", args.model, "--models-dir", args.models_dir]


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.one is not None:
        print_result("scale-one", run_one(args.one, args))
        return {}
    args.models_dir = tempfile.mkdtemp(prefix="bench-scale-models-")
    prepare_base(args)
    results = []
    for n in [int(x) for x in args.concepts.split(",") if x]:
        print(f"[scale] {n} concepts: world + job in a fresh process ...", flush=True)
        done = subprocess.run([sys.executable, "-m", "benchmarks.scale", *_child_args(args, n)], cwd=REPO,
                              capture_output=True, text=True, check=False)
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
        if done.returncode != 0 or not lines:
            print(done.stdout[-3000:], done.stderr[-5000:], sep="\n")
            raise SystemExit(f"the {n}-concept run failed (exit {done.returncode})")
        r = json.loads(lines[-1][len("RESULT "):])
        print(f"[scale] {n} concepts: {r['wall_s']:.0f}s, outcomes {r['counts']}", flush=True)
        results.append(r)
    rows = []
    for r in results:
        workers = r["train_worker_peak_rss_mib"]
        done = r["counts"].get("done", 0)
        rows.append([r["concepts"], r.get("model", "tiny"), r.get("evaluation_actors", 0), round(r["wall_s"]), round(r["ingest_s"]), round(r["train_s"]), round(r["register_s"]),
                     round(3600 * done / max(r["register_s"], 1e-9)), round(r.get("images_per_s_ingest", 0), 1),
                     round(3600 * done / r["wall_s"]), round(r["job_cpu_s"]), f"{r['load_average_1_5_15'][1]:.1f}", " / ".join(f"{w:.0f}" for w in workers) or "-",
                     round(r["other_ray_worker_peak_rss_mib_max"]), round(r["driver_peak_rss_mib"]),
                     f"{r['object_store_peak_mib']:.1f} of {r['object_store_capacity_mib']:.0f}",
                     round(r["object_store_spilled_mib"], 1),
                     ", ".join(f"{k} {v}" for k, v in sorted(r["counts"].items()) if v)])
    print()
    print(markdown_table(["concepts", "base", "evaluation actors", "job wall (s)", "ingest (s)", "train (s)",
                          "evaluate + register (s)", "evaluate + register concepts / hour", "ingest images / s",
                          "concepts / hour",
                          "job CPU (s)", "machine load (5 min)",
                          "peak RSS per train worker (MiB)", "peak RSS other Ray worker, max (MiB)",
                          "driver peak RSS (MiB)", "object store peak (MiB)", "spilled (MiB)", "outcomes"], rows))
    print()
    payload = {"machine": machine(), "args": {k: v for k, v in vars(args).items() if k != "one"}, "rows": results}
    print_result("scale", payload)
    return payload


if __name__ == "__main__":
    main()
