"""How many sandboxes a machine can hold: what each Ray node advertises as ``fsrlm_sandbox``.

A run's sandbox may use up to ``executor.memory`` (swap included) and
``executor.cpus``; the agent mostly waits on the model, so CPUs are shared
``CPU_SHARE`` times over, while memory is never promised twice. Some memory
stays for the host: the node's own processes, one broker and one Ray worker per run.
"""

from __future__ import annotations

import os
import re

from pydantic import BaseModel

CPU_SHARE = 4.0  # sandboxes per CPU at a cpus=1.0 limit: runs wait on the model most of the time
HOST_RESERVE = 1 << 30  # memory kept for the node itself
PER_RUN_HOST = 256 << 20  # the run's broker and Ray worker, outside the sandbox
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


class Capacity(BaseModel):
    sandboxes: int
    by_memory: int
    by_cpu: int
    memory_bytes: int
    cpus: int
    reason: str


def parse_size(text: str) -> int:
    """Docker's memory notation: ``512m``, ``2g``, ``1073741824``."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([bkmgt]?)b?\s*", text.lower())
    if not match:
        raise ValueError(f"not a size: {text!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def _memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def machine_capacity(executor, *, memory_bytes: int | None = None, cpus: int | None = None) -> Capacity:
    """The sandboxes this machine holds under ``executor``'s limits (at least 1)."""
    memory_bytes = memory_bytes or _memory()
    cpus = cpus or len(os.sched_getaffinity(0))
    if executor.type == "local":  # no container limits: a run is the CLI and its scripts, ~0.5 GiB
        per_run, cpu_limit = 512 << 20, 1.0
    else:
        per_run, cpu_limit = parse_size(executor.memory), float(executor.cpus)
    by_memory = max(1, (memory_bytes - HOST_RESERVE) // (per_run + PER_RUN_HOST))
    by_cpu = max(1, int(cpus * CPU_SHARE / cpu_limit))
    sandboxes = int(min(by_memory, by_cpu))
    reason = (f"{memory_bytes / (1 << 30):.1f} GiB / ({per_run / (1 << 30):.2f} GiB per sandbox + host share) = "
              f"{by_memory}; {cpus} CPUs x {CPU_SHARE:g} / {cpu_limit:g} CPUs per sandbox = {by_cpu}")
    return Capacity(sandboxes=sandboxes, by_memory=int(by_memory), by_cpu=by_cpu, memory_bytes=memory_bytes,
                    cpus=cpus, reason=reason)
