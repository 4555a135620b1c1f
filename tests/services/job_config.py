"""The smallest whole-job config the integration tests run: one ZeRO-2 worker on the tiny base at
32 px, everything under `<prefix>/` of the test bucket, evaluation off; a test names only what it
is about (`overrides`, merged section by section)."""
from __future__ import annotations


def merged(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for key, value in overrides.items():
        out[key] = merged(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def small_job_config(s3, prefix: str, mlflow_uri: str, runs: str, model: str, overrides: dict | None = None) -> dict:
    base = {
        "ingest": {"uploads_uri": s3.uri(f"{prefix}/uploads"), "negatives_uri": s3.uri(f"{prefix}/negatives"),
                   "vit_size": 32, "vae_size": 32, "epochs": 1, "samples_per_task": 1},
        "model": {"uri": model},
        "train": {"recipe": {"steps": 2, "batch_size": 2, "num_und_tokens": 2, "num_gen_tokens": 2},
                  "deepspeed": {"zero_stage": 2}, "scaling": {"num_workers": 1, "cpus_per_worker": 1}, "pack_size": 1},
        "artifacts": {"root": s3.uri(f"{prefix}/concepts"), "work": s3.uri(f"{prefix}/work"), "runs": runs},
        "mlflow": {"tracking_uri": mlflow_uri, "experiment": prefix, "registry_prefix": prefix},
        "evaluation": {"enabled": False},
        "hard_negative_features": "colour_histogram",
    }
    return merged(base, overrides or {})
