"""Evaluation actors: the gate's evaluation on 1 and on 2 Ray actors, nothing else on the cores.

    python -m benchmarks.evaluation_actors                                  # 200 concepts (tiny), 1,2,2,1 actors
    python -m benchmarks.evaluation_actors --concepts 12 --actors 1,2       # a smoke run

The job (`pipelines.personalize.run_job`, `benchmarks.scale`'s world and config: tiny BAGEL, local
storage, sqlite MLflow) ingests and trains N generated concepts and exports them; its
evaluate-and-register stage is then replaced by this measurement, so registration never competes
with the actors. On the job's own context and exported concepts, the job's real evaluation path
runs once per entry of ``--actors``: `pipelines.evaluate.actors.evaluations(ctx, concepts,
evaluate)` with `evaluation.actors` set to that count (real `ConceptEvaluator` Ray actors, 1 CPU
each), `evaluate` being the job's own (`pipelines.personalize.evaluate`: the artifact loaded onto the
base, the gate's held-out examples scored, at most ``--max-examples`` a concept, no sample pictures).

The job's `evaluate` is wrapped to stamp each concept's start and end (wall clock, shared by every
process on this machine), the actor's pid, its torch thread count and its CPU seconds. Reported per
pass: start-up (from the `evaluations` call to each actor's first concept: process start, imports,
the base and the judge loaded), steady state (concepts that ended after every actor had finished
its first, over that window: no start-up, no first-call warm-up, no tail), the whole pass end to
end, and each actor's CPU use per wall second while it evaluated (1.0: it had a core to itself).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine, markdown_table, print_result  # noqa: E402

log = logging.getLogger("benchmarks.evaluation_actors")


def timed_evaluate(ctx, concept, judge):
    """The job's `evaluate`, stamped (runs in the actor; pickled by value: this module is not
    importable there)."""
    import os
    import time

    import torch

    from pipelines.personalize import evaluate

    cpu0, t0 = time.process_time(), time.time()
    evaluation = evaluate(ctx, concept, judge)
    return {"evaluation": evaluation, "pid": os.getpid(), "start": t0, "end": time.time(),
            "cpu_s": time.process_time() - cpu0, "torch_threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(), "omp": os.environ.get("OMP_NUM_THREADS")}


def summarise(actors: int, t_call: float, t_done: float, stamps: list[dict], failures: int) -> dict:
    """Start-up, steady state and end to end of one pass (see the module's docstring)."""
    by_pid: dict[int, list[dict]] = {}
    for s in stamps:
        by_pid.setdefault(s["pid"], []).append(s)
    first_start = {pid: min(s["start"] for s in ss) for pid, ss in by_pid.items()}
    first_end = {pid: min(s["end"] for s in ss) for pid, ss in by_pid.items()}
    warm_from = max(first_end.values())
    last_end = max(s["end"] for s in stamps)
    steady = [s for s in stamps if s["end"] > warm_from]
    window = last_end - warm_from
    steady_wall = sum(s["end"] - s["start"] for s in steady)
    return {
        "actors": actors, "actors_seen": len(by_pid), "concepts": len(stamps), "failures": failures,
        "startup_s": sorted(t - t_call for t in first_start.values()),
        "first_concept_s": sorted(first_end[p] - first_start[p] for p in by_pid),
        "steady_concepts": len(steady), "steady_window_s": window,
        "steady_concepts_per_hour": 3600 * len(steady) / window if window > 0 else float("nan"),
        "steady_s_per_concept_per_actor": steady_wall / len(steady) if steady else float("nan"),
        "steady_cpu_per_wall": sum(s["cpu_s"] for s in steady) / steady_wall if steady_wall else float("nan"),
        "gaps_s": _gaps(by_pid, warm_from),
        "end_to_end_s": t_done - t_call,
        "end_to_end_concepts_per_hour": 3600 * len(stamps) / (t_done - t_call),
        "concepts_per_actor": sorted(len(ss) for ss in by_pid.values()),
        "torch_threads": sorted({s["torch_threads"] for s in stamps}),
        "interop_threads": sorted({s["interop_threads"] for s in stamps}),
        "omp_num_threads": sorted({str(s["omp"]) for s in stamps}),
    }


def _gaps(by_pid: dict[int, list[dict]], warm_from: float) -> float:
    """Mean idle time of an actor between one concept's end and its next one's start (steady state):
    the dispatch cost (the driver's loop, Ray's call, the concept's pickling)."""
    gaps = []
    for ss in by_pid.values():
        ss = sorted(ss, key=lambda s: s["start"])
        gaps += [b["start"] - a["end"] for a, b in zip(ss, ss[1:]) if a["end"] >= warm_from]
    return sum(gaps) / len(gaps) if gaps else float("nan")


def measure(ctx, concepts: list, counts: list[int], loadavg: list) -> list[dict]:
    """One pass of the job's evaluation per entry of `counts`, on the job's own context."""
    from pipelines.evaluate.actors import evaluations

    passes = []
    for k in counts:
        cfg = ctx.cfg.model_copy(update={"evaluation": ctx.cfg.evaluation.model_copy(update={"actors": k})})
        pass_ctx = dataclasses.replace(ctx, cfg=cfg)
        before = Path("/proc/loadavg").read_text().split()[:3]
        print(f"[evaluation-actors] {k} actor(s), {len(concepts)} concepts ... (loadavg {' '.join(before)})", flush=True)
        t_call = time.time()
        stamps, failures = [], 0
        for c, result in evaluations(pass_ctx, concepts, timed_evaluate):
            if isinstance(result, dict):
                stamps.append(result)
            else:
                failures += 1
                print(f"[evaluation-actors] {c.id.key}: {result!r}", flush=True)
        t_done = time.time()
        after = Path("/proc/loadavg").read_text().split()[:3]
        metrics = next((s["evaluation"].metrics for s in stamps if s["evaluation"].metrics), {})
        r = summarise(k, t_call, t_done, stamps, failures)
        r.update(loadavg_before=before, loadavg_after=after, example_metrics=metrics)
        print(f"[evaluation-actors] {k} actor(s): steady {r['steady_concepts_per_hour']:,.0f} concepts/h, start-up "
              f"{', '.join(f'{s:.1f}' for s in r['startup_s'])} s, end to end {r['end_to_end_s']:.1f} s, "
              f"{r['steady_s_per_concept_per_actor']:.2f} s a concept, CPU/wall {r['steady_cpu_per_wall']:.2f}, "
              f"torch threads {r['torch_threads']} (loadavg after {' '.join(after)})", flush=True)
        passes.append(r)
    loadavg.append(os.getloadavg())
    return passes


def run(args) -> dict:
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import ray
    from mlflow import MlflowClient
    from ray import cloudpickle

    import pipelines.personalize as personalize
    from benchmarks.scale import job_config, prepare_base, write_world
    from pipelines.config import JobConfig

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    own_models = not args.models_dir
    args.models_dir = args.models_dir or tempfile.mkdtemp(prefix="bench-evaluation-actors-models-")
    prepare_base(args)
    root = Path(tempfile.mkdtemp(prefix="bench-evaluation-actors-"))
    write_world(root, args.concepts, args.tenants, args.seed)
    (root / "mlflow").mkdir()
    raw = job_config(root, SimpleNamespace(**{**vars(args), "evaluation_actors": 0}))
    raw["job_id"] = "evaluation-actors"
    raw["evaluation"] = {"enabled": True, "actors": 1, "cpus_per_actor": 1, "max_examples": args.max_examples,
                         "sample_images": False, "sampling_steps": 2}
    cfg = JobConfig(**raw)
    MlflowClient(cfg.mlflow.tracking_uri).create_experiment(
        cfg.mlflow.experiment, artifact_location=(root / "mlflow" / "artifacts").as_uri())

    env = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}  # as the job's own `_ensure_ray`
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        env["TORCH_EXTENSIONS_DIR"] = os.environ["TORCH_EXTENSIONS_DIR"]
    ray_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    ray.init(num_cpus=cfg.ray.num_cpus, include_dashboard=False, _temp_dir=ray_dir,
             runtime_env={"env_vars": env}, logging_level=logging.WARNING)
    passes, loadavg, exported = [], [], []

    def evaluate_instead_of_registering(ctx, selection) -> None:
        """The job's evaluate-and-register stage, replaced: its exported concepts evaluated on 1 and
        2 actors, nothing registered (registration would compete with the actors for the cores)."""
        exported.extend(selection.to_register)
        time.sleep(args.settle)  # the train workers' and Ray Data's processes wind down
        passes.extend(measure(ctx, list(selection.to_register), args.actor_counts, loadavg))

    personalize.evaluate_and_register = evaluate_instead_of_registering
    t0 = time.perf_counter()
    try:
        personalize.run_job(cfg)
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(ray_dir, ignore_errors=True)
        if own_models:
            shutil.rmtree(args.models_dir, ignore_errors=True)
    return {"concepts": len(exported), "max_examples": args.max_examples, "job_wall_s": time.perf_counter() - t0,
            "passes": passes}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concepts", type=int, default=200, help="concepts the job trains, exports and then evaluates")
    p.add_argument("--max-examples", type=int, default=16, help="held-out examples scored per concept (the job's default)")
    p.add_argument("--actors", default="1,2,2,1", help="one evaluation pass per entry, with that many actors")
    p.add_argument("--settle", type=float, default=10.0, help="seconds between training and the first pass")
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--pack-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers")
    p.add_argument("--tenants", type=int, default=4)
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--model", choices=("tiny", "small"), default="tiny")
    p.add_argument("--models-dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.actor_counts = [int(x) for x in args.actors.split(",") if x]
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    result = run(args)
    rows, per_count = [], {}
    for r in result["passes"]:
        per_count.setdefault(r["actors"], []).append(r)
        rows.append([r["actors"], r["concepts"], round(r["steady_concepts_per_hour"], 0), r["steady_concepts"],
                     round(r["steady_window_s"], 1), round(r["steady_s_per_concept_per_actor"], 2),
                     round(r["steady_cpu_per_wall"], 2), round(r["gaps_s"] * 1000, 1), " / ".join(f"{s:.1f}" for s in r["startup_s"]),
                     round(r["end_to_end_s"], 1), round(r["end_to_end_concepts_per_hour"]),
                     "/".join(map(str, r["torch_threads"])), " ".join(r["loadavg_before"]) + " -> " + " ".join(r["loadavg_after"])])
    mean = {k: {m: sum(r[m] for r in rs) / len(rs) for m in ("steady_concepts_per_hour", "end_to_end_concepts_per_hour")}
            for k, rs in per_count.items()}
    ratios = {}
    if 1 in mean and 2 in mean:
        ratios = {"steady_2_over_1": mean[2]["steady_concepts_per_hour"] / mean[1]["steady_concepts_per_hour"],
                  "end_to_end_2_over_1": mean[2]["end_to_end_concepts_per_hour"] / mean[1]["end_to_end_concepts_per_hour"]}
    print()
    print(markdown_table(["actors", "concepts", "steady concepts / hour", "steady concepts", "steady window (s)",
                          "s a concept per actor", "actor CPU / wall", "dispatch gap (ms)", "start-up per actor (s)",
                          "end to end (s)", "end-to-end concepts / hour", "torch threads", "loadavg before -> after"], rows))
    print()
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}x")
    payload = {"machine": machine(), "args": {k: v for k, v in vars(args).items() if k != "models_dir"},
               **result, "ratios": ratios}
    print_result("evaluation_actors", payload)
    return payload


if __name__ == "__main__":
    main()
