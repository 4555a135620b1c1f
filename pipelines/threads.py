"""Torch threads for a process Ray started: as many as the CPUs Ray granted it."""
from __future__ import annotations


def use_granted_cpus(cpus: float) -> int:
    """Run `max(1, int(cpus))` torch threads in this process and return that number, whatever
    OMP_NUM_THREADS the job's runtime env sets for every process (infra/kuberay/rayjob.yaml: 8):
    workers and actors sharing a node must not each run a thread per core."""
    import torch

    threads = max(1, int(cpus))
    torch.set_num_threads(threads)
    return threads
