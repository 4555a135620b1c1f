"""Registry at scale: selection lookups and registration throughput on an MLflow server holding
thousands of concept models, on PostgreSQL (as production runs it) and on sqlite (the demo default).

    python -m benchmarks.registry_scale                        # 5,000 models, select 1,000, register 40 x 1/4/8 threads
    python -m benchmarks.registry_scale --models 500 --select 200 --register 16   # a quick run
    python -m benchmarks.registry_scale --backends postgresql --models 200 --select 100 --register 8 --threads 8 --by-request 20
                                                               # + the server's CPU per kind of request

Per backend, a fresh `mlflow server` (tests/services: PostgreSQL from `pgserver`, or a sqlite file;
artifacts in a local folder) is
1. pre-filled with N concept models `<prefix>.<tenant>.<concept>`, tagged as a job tags them
   (registered model: tenant, concept; version: tenant, concept, data digest, config hash, base
   fingerprint, base model id, job id, gate; every fifth model a second version, an older recipe).
   The versions' sources are placeholders (`s3://prefill/...`) and there are no aliases: lookups
   read neither (version searches return no aliases), and each alias costs two requests.
   Pre-filling uses threads against the server;
2. asked, for S concepts (half of them registered with this digest and recipe, a quarter
   registered with other data, a quarter new), what `select` asks: the matching version and the
   newest one: the per-concept path (`find_version` + `latest_version`: up to two requests per
   concept) and the batched one (`versions_of`: a few paged `name IN (...)` searches). Both must
   decide the same for every concept;
3. sent R real small concept artifacts (hidden size 64, 8 + 8 tokens, two 32-pixel pictures,
   metrics, the gate, lineage: what a job registers) through `register_many` with 1, 4 and 8
   threads (new concepts each time), then the 8-thread batch again: every concept must come back
   `already_registered` with still one version;
4. with ``--by-request N``: N more concepts registered one at a time, the server's and PostgreSQL's
   CPU read around every request: what each kind of request costs them (a quiet machine helps:
   the meter counts whatever the server does meanwhile).

The server runs `--workers` uvicorn workers: 4 on PostgreSQL (infra/mlflow/deployment.yaml), 1 on
sqlite (it locks under concurrent writers). The machine is shared, so besides wall time every phase
records the CPU time it cost (user + system) of this process, of the MLflow server's processes and
of PostgreSQL's: what the work needs of dedicated cores, whatever else runs. Prints a markdown table,
the machine's load (`uptime`) before and after, and a last line `RESULT {json}`.
"""
from __future__ import annotations

import argparse
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine, markdown_table, print_result  # noqa: E402

PREFIX = "bench"
FINGERPRINT = "fp-bench"
RECIPE = "recipe-2"
OLD_RECIPE = "recipe-1"


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


class CpuMeter:
    """CPU seconds (user + system) spent so far by this process, the MLflow server's process tree
    and PostgreSQL's (its postmaster and backends, those that exited included)."""

    def __init__(self, server_pid: int, postgres_pid: int | None) -> None:
        self.pids = {"server": server_pid, "postgres": postgres_pid}

    @staticmethod
    def _tree(pid: int | None) -> float:
        import psutil

        if pid is None:
            return 0.0
        total = 0.0
        try:
            root = psutil.Process(pid)
            processes = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0.0
        for process in processes:
            try:
                times = process.cpu_times()
                # children_*: the processes it reaped (PostgreSQL backends of closed connections)
                total += times.user + times.system + times.children_user + times.children_system
            except psutil.NoSuchProcess:
                pass
        return total

    def read(self) -> dict[str, float]:
        own = resource.getrusage(resource.RUSAGE_SELF)
        return {"client": own.ru_utime + own.ru_stime, **{k: self._tree(pid) for k, pid in self.pids.items()}}

    @staticmethod
    def spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {k: after[k] - before[k] for k in before}


class RequestCounter:
    """HTTP requests this process sends (MLflow's client goes through `requests.Session.request`),
    counted while installed (``with counter:``)."""

    def __init__(self) -> None:
        self.count = 0
        self._guard = threading.Lock()

    def __enter__(self) -> "RequestCounter":
        import requests

        original = self._original = requests.Session.request

        def counting(session, *args, **kwargs):
            with self._guard:
                self.count += 1
            return original(session, *args, **kwargs)

        requests.Session.request = counting
        return self

    def __exit__(self, *exc) -> None:
        import requests

        requests.Session.request = self._original


def concept_name(i: int, tenants: int) -> tuple[str, str]:
    return f"tenant{i % tenants:02d}", f"concept-{i:05d}"


def digest(i: int, salt: str = "") -> str:
    return f"{salt}d{i:07d}"


# ----------------------------------------------------------------------------- 1. pre-fill
def prefill(client, n: int, threads: int, tenants: int) -> float:
    """N registered models with versions tagged as a job tags them; returns seconds."""
    from pipelines.register import names

    def one(i: int) -> None:
        tenant, concept = concept_name(i, tenants)
        name = f"{PREFIX}.{tenant}.{concept}"
        client.create_registered_model(name, tags={names.TAG_TENANT: tenant, names.TAG_CONCEPT: concept})
        recipes = [OLD_RECIPE, RECIPE] if i % 5 == 0 else [RECIPE]
        for recipe in recipes:
            client.create_model_version(name, source=f"s3://prefill/{name}/{recipe}", tags={
                names.TAG_TENANT: tenant, names.TAG_CONCEPT: concept, names.TAG_DATA_DIGEST: digest(i),
                names.TAG_CONFIG_HASH: recipe, names.TAG_BASE_FINGERPRINT: FINGERPRINT,
                names.TAG_BASE_MODEL_ID: "bagel-bench", names.TAG_JOB_ID: "job-prefill", names.TAG_GATE: "passed",
                names.TAG_GATE_REASONS: "",
            })

    t0 = time.perf_counter()
    done = 0
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in pool.map(one, range(n)):
            done += 1
            if done % 1000 == 0:
                print(f"    pre-filled {done}/{n} ({time.perf_counter() - t0:.0f}s)", flush=True)
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- 2. select-style lookups
def select_keys(n_models: int, n_select: int, tenants: int) -> list[tuple[str, str]]:
    """(model name, data digest) of the concepts a job selects: half registered with this digest and
    recipe (skipped), a quarter registered with other data (retrained), a quarter new."""
    keys = []
    for k in range(n_select):
        kind = k % 4
        i = (k * 7919) % n_models if kind != 3 else n_models + k  # spread over the registry
        tenant, concept = concept_name(i, tenants)
        keys.append((f"{PREFIX}.{tenant}.{concept}", digest(i, salt="new-" if kind == 2 else "")))
    return keys


def decide(existing, latest) -> str:
    if existing is not None:
        return f"skip v{existing.version}"
    return f"train after v{latest.version}" if latest is not None else "train new"


def lookups(registry, keys, meter: CpuMeter) -> dict:
    c0 = meter.read()
    t0 = time.perf_counter()
    old = {}
    for name, data_digest in keys:  # what select did: find the matching version, else the newest
        existing = registry.find_version(name, data_digest, RECIPE, FINGERPRINT)
        old[name] = decide(existing, None if existing is not None else registry.latest_version(name))
    per_concept_s = time.perf_counter() - t0
    c1 = meter.read()

    t0 = time.perf_counter()
    found = registry.versions_of(name for name, _ in keys)
    new = {}
    for name, data_digest in keys:
        existing = found[name].matching(data_digest, RECIPE, FINGERPRINT)
        new[name] = decide(existing, None if existing is not None else found[name].latest())
    batched_s = time.perf_counter() - t0
    c2 = meter.read()
    if old != new:
        wrong = [(k, old[k], new.get(k)) for k in old if old[k] != new.get(k)][:5]
        raise SystemExit(f"batched lookup decides differently from the per-concept one: {wrong}")
    decisions = {}
    for d in new.values():
        kind = d.split(" v")[0].split(" after")[0]
        decisions[kind] = decisions.get(kind, 0) + 1
    return {"per_concept_s": per_concept_s, "batched_s": batched_s, "decisions": decisions,
            "per_concept_cpu_s": CpuMeter.spent(c0, c1), "batched_cpu_s": CpuMeter.spent(c1, c2)}


# ----------------------------------------------------------------------------- 3. registration
def write_artifacts(folder: Path, tag: str, count: int, tenants: int) -> list[tuple[Path, str]]:
    """``count`` small concept artifacts; returns (folder, concept key) pairs."""
    import torch

    from omnipersona.concepts.artifact import ConceptArtifact, ConceptManifest

    paths = []
    hidden = 64
    for k in range(count):
        g = torch.Generator().manual_seed(k)
        manifest = ConceptManifest(
            tenant=f"tenant{k % tenants:02d}", concept=f"reg-{tag}-{k:04d}", display_name=f"Reg {k}", class_word="dog",
            training_config_hash=RECIPE, data_digest=digest(k, salt="reg-"), base_model_id="bagel-bench",
            base_fingerprint=FINGERPRINT, metrics={"loss_text": 0.5, "loss_image": 0.4},
            created_at=datetime(2026, 11, 30, tzinfo=timezone.utc),
        )
        artifact = ConceptArtifact(torch.randn(1, hidden, generator=g), torch.randn(8, hidden, generator=g),
                                   torch.randn(8, hidden, generator=g), torch.randn(hidden, generator=g), manifest)
        path = folder / tag / f"{k:04d}"
        artifact.save(path)
        paths.append((path, manifest.concept_id))
    return paths


def registration(registry, run_id: str, folder: Path, count: int, threads_list: list[int], tenants: int,
                 meter: CpuMeter) -> dict:
    from PIL import Image

    from pipelines.evaluate.gate import Gate
    from pipelines.register.registry import RegistrationRequest

    gate = Gate(minimums={"recognition_accuracy": 0.6})
    pictures = {"t2i sample": Image.new("RGB", (32, 32), "red"), "edit sample": Image.new("RGB", (32, 32), "blue")}

    def requests_for(paths):  # half pass the gate (champion moves), half stay candidates
        return [RegistrationRequest(run_id, path, metrics={"recognition_accuracy": 0.5 + (k % 2) * 0.4}, images=pictures,
                                    gate=gate, data_uri=f"s3://uploads/{key}", base_model_uri="s3://models/bagel-bench")
                for k, (path, key) in enumerate(paths)]

    out = {}
    last = None
    for threads in threads_list:
        paths = write_artifacts(folder, f"t{threads}", count, tenants)
        requests = requests_for(paths)
        c0 = meter.read()
        t0 = time.perf_counter()
        with RequestCounter() as sent:
            outcomes = registry.register_many(requests, threads=threads)
        seconds = time.perf_counter() - t0
        cpu = CpuMeter.spent(c0, meter.read())
        errors = [o.error for o in outcomes if o.error is not None]
        if errors:
            raise SystemExit(f"{len(errors)} registrations failed with {threads} threads, first: {errors[0]!r}")
        statuses = {o.result.status for o in outcomes}
        if statuses != {"registered"}:
            raise SystemExit(f"expected every concept registered, got {statuses}")
        cpu_per_concept = sum(cpu.values()) / count
        out[threads] = {"seconds": seconds, "concepts_per_s": count / seconds, "cpu_s": cpu,
                        "cpu_s_per_concept": cpu_per_concept, "ceiling_2_cores_per_s": 2 / cpu_per_concept,
                        "requests_per_concept": sent.count / count}
        print(f"    register {count} with {threads} thread(s): {seconds:.1f}s, {count / seconds:.2f} concepts/s, "
              f"{sent.count / count:.1f} requests a concept; CPU per "
              f"concept {1000 * cpu_per_concept:.0f} ms (" + ", ".join(f"{k} {1000 * v / count:.0f}" for k, v in cpu.items())
              + f"): at most {2 / cpu_per_concept:.1f} concepts/s on 2 dedicated cores", flush=True)
        last = (requests, outcomes)
    if last is not None:  # idempotent: the same batch again registers nothing, even 8 at a time
        requests, first = last
        t0 = time.perf_counter()
        again = registry.register_many(requests, threads=max(threads_list))
        seconds = time.perf_counter() - t0
        statuses = {o.result.status if o.result else repr(o.error) for o in again}
        versions = {o.result.model_name: o.result.version for o in first}
        if statuses != {"already_registered"} or {o.result.model_name: o.result.version for o in again} != versions:
            raise SystemExit(f"registering the same batch again was not a no-op: {statuses}")
        client = registry.client
        counts = {len(client.search_model_versions(f"name = '{name}'")) for name in versions}
        if counts != {1}:
            raise SystemExit(f"a concept registered twice has {counts} versions")
        out["again_s"] = seconds
    return out


def request_kind(method: str, url: str) -> str:
    """"METHOD path" of a request to the server, ids masked, an artifact upload named by its place."""
    import re

    path = re.sub(r"m-[0-9a-f]{32}|[0-9a-f]{32}", "<id>", url.split("/", 3)[-1].split("?")[0])
    if "mlflow-artifacts/artifacts/" in path:
        return f"{method} artifact file ({'logged model package' if '/models/' in path else 'run'})"
    return f"{method} {path}"


def by_request(registry, run_id: str, folder: Path, count: int, tenants: int, meter: CpuMeter) -> list[dict]:
    """``count`` new concepts registered one at a time (the registration phase's pictures, metrics
    and gate); the server's and PostgreSQL's CPU is read before and after every request. Returns one
    row per kind of request: how many a concept sends, server / PostgreSQL CPU and wall time each."""
    import requests
    from PIL import Image

    from pipelines.evaluate.gate import Gate

    gate = Gate(minimums={"recognition_accuracy": 0.6})
    pictures = {"t2i sample": Image.new("RGB", (32, 32), "red"), "edit sample": Image.new("RGB", (32, 32), "blue")}
    paths = write_artifacts(folder, "seq", count, tenants)
    kinds: dict[str, list[float]] = {}
    original = requests.Session.request

    def measured(session, method, url, *args, **kwargs):
        before, t0 = meter.read(), time.perf_counter()
        try:
            return original(session, method, url, *args, **kwargs)
        finally:
            wall, spent = time.perf_counter() - t0, CpuMeter.spent(before, meter.read())
            row = kinds.setdefault(request_kind(method, url), [0, 0.0, 0.0, 0.0])
            row[0] += 1
            row[1] += spent["server"]
            row[2] += spent["postgres"]
            row[3] += wall

    requests.Session.request = measured
    try:
        for k, (path, key) in enumerate(paths):  # half pass the gate, as in the registration phase
            registry.register_concept(run_id, path, metrics={"recognition_accuracy": 0.5 + (k % 2) * 0.4},
                                      images=pictures, gate=gate, data_uri=f"s3://uploads/{key}",
                                      base_model_uri="s3://models/bagel-bench")
    finally:
        requests.Session.request = original
    return [{"request": kind, "per_concept": n / count, "server_ms": 1000 * server / n, "postgres_ms": 1000 * pg / n,
             "wall_ms": 1000 * wall / n} for kind, (n, server, pg, wall) in sorted(kinds.items(), key=lambda kv: -kv[1][1])]


# ----------------------------------------------------------------------------- one backend
def run_backend(backend: str, args, root: Path) -> dict:
    from mlflow import MlflowClient

    from pipelines.register import ConceptRegistry, JobRuns, JobRunSpec, MlflowConnection
    from tests.services.mlflow_server import MlflowServerProcess
    from tests.services.postgres import running_postgres

    workers = args.pg_workers if backend == "postgresql" else args.sqlite_workers
    folder = root / backend
    folder.mkdir(parents=True)
    t0 = time.perf_counter()
    with running_postgres(folder / "pg") if backend == "postgresql" else _nothing() as pg:
        backend_uri = pg.create_database("mlflow") if pg is not None else None
        process = MlflowServerProcess(folder / "mlflow", str(folder / "artifacts"), backend_store_uri=backend_uri,
                                      workers=workers, startup_timeout_s=600)
        try:
            server = process.start()
            meter = CpuMeter(process.process.pid, pg.pid if pg is not None else None)
            start_s = time.perf_counter() - t0
            print(f"[{backend}] server up in {start_s:.0f}s ({workers} worker(s)); pre-filling {args.models} models "
                  f"with {args.prefill_threads} threads ...", flush=True)
            client = MlflowClient(server.tracking_uri)
            prefill_s = prefill(client, args.models, args.prefill_threads, args.tenants)
            print(f"[{backend}] pre-filled in {prefill_s:.0f}s; {args.select} select-style lookups ...", flush=True)
            registry = ConceptRegistry(MlflowConnection(server.tracking_uri, experiment_name="registry-scale"), prefix=PREFIX)
            looked = lookups(registry, select_keys(args.models, args.select, args.tenants), meter)
            print(f"[{backend}] select {args.select}: per-concept {looked['per_concept_s']:.1f}s, "
                  f"batched {looked['batched_s']:.2f}s ({looked['decisions']})", flush=True)
            run_id = JobRuns(registry.mlflow).start(JobRunSpec(
                job_id=f"job-bench-{uuid.uuid4().hex[:6]}", snapshot_uri="s3://uploads", snapshot_digest="snap",
                config_hash=RECIPE, base_model_id="bagel-bench", base_fingerprint=FINGERPRINT, zero_stage=2,
            ))
            registered = registration(registry, run_id, folder / "concepts", args.register,
                                      [int(t) for t in args.threads.split(",")], args.tenants, meter)
            per_request = (by_request(registry, run_id, folder / "concepts", args.by_request, args.tenants, meter)
                           if args.by_request else [])
        finally:
            process.stop()
    return {"backend": backend, "server_workers": workers, "server_start_s": start_s, "models": args.models,
            "prefill_s": prefill_s, "select": args.select, **looked, "register": registered,
            "by_request": per_request}


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", default="postgresql,sqlite")
    p.add_argument("--models", type=int, default=5000, help="concept models pre-filled into the registry")
    p.add_argument("--select", type=int, default=1000, help="concepts a job selects")
    p.add_argument("--register", type=int, default=40, help="concepts registered per thread count")
    p.add_argument("--threads", default="1,4,8", help="register_many thread counts")
    p.add_argument("--tenants", type=int, default=20)
    p.add_argument("--prefill-threads", type=int, default=8)
    p.add_argument("--pg-workers", type=int, default=4, help="mlflow server workers on PostgreSQL")
    p.add_argument("--sqlite-workers", type=int, default=1, help="mlflow server workers on sqlite")
    p.add_argument("--by-request", type=int, default=0, metavar="N",
                   help="then register N concepts one at a time, measuring the server's CPU per request kind")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    load_before = uptime()
    print(f"[registry-scale] {load_before}", flush=True)
    root = Path(tempfile.mkdtemp(prefix="registry-scale-"))
    results = []
    try:
        for backend in [b for b in args.backends.split(",") if b]:
            if backend not in ("postgresql", "sqlite"):
                raise SystemExit(f"unknown backend {backend!r}: postgresql or sqlite")
            results.append(run_backend(backend, args, root))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    load_after = uptime()
    threads = [int(t) for t in args.threads.split(",")]

    def cpu(spent: dict) -> float:
        return sum(spent.values())

    print()
    print(markdown_table(
        ["backend", "server workers", "models", "pre-fill (s)", "concepts selected", "per-concept lookups (s)",
         "batched lookup (s)", "speed-up (wall)", "per-concept lookups, CPU (s)", "batched lookup, CPU (s)"],
        [[r["backend"], r["server_workers"], f"{r['models']:,}", round(r["prefill_s"]), f"{r['select']:,}",
          round(r["per_concept_s"], 1), round(r["batched_s"], 2), f"{r['per_concept_s'] / r['batched_s']:.0f}x",
          round(cpu(r["per_concept_cpu_s"]), 1), round(cpu(r["batched_cpu_s"]), 2)] for r in results]))
    print()
    rows = []
    for r in results:
        for t in threads:
            reg = r["register"][t]
            per = {k: 1000 * v / args.register for k, v in reg["cpu_s"].items()}
            rows.append([r["backend"], r["server_workers"], t, round(reg["seconds"], 1), round(reg["concepts_per_s"], 2),
                         round(reg["requests_per_concept"], 1), round(1000 * reg["cpu_s_per_concept"]),
                         f"{per['client']:.0f} / {per['server']:.0f} / {per['postgres']:.0f}",
                         round(reg["ceiling_2_cores_per_s"], 1)])
    print(markdown_table(["backend", "server workers", "threads", f"register {args.register} (s)", "concepts/s (wall)",
                          "requests per concept", "CPU per concept (ms)", "client / server / PostgreSQL (ms)",
                          "CPU-bound ceiling on 2 dedicated cores (concepts/s)"], rows))
    for r in results:
        if r["by_request"]:
            print()
            print(f"{r['backend']}: {args.by_request} concepts registered one at a time, CPU of each request")
            print(markdown_table(["request", "per concept", "server CPU (ms)", "PostgreSQL CPU (ms)", "wall (ms)"],
                                 [[x["request"], round(x["per_concept"], 1), round(x["server_ms"], 1),
                                   round(x["postgres_ms"], 1), round(x["wall_ms"], 1)] for x in r["by_request"]]))
    print()
    print(f"load before: {load_before}")
    print(f"load after:  {load_after}")
    payload = {"machine": machine(), "args": vars(args), "uptime_before": load_before, "uptime_after": load_after,
               "rows": results}
    print_result("registry_scale", payload)
    return payload


if __name__ == "__main__":
    main()
