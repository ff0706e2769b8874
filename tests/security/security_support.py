"""Helpers of the security suite (fixtures live in conftest.py)."""

from __future__ import annotations

import json
import os
import socket
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fsrlm.results import RLMResult

MB = 1 << 20

# Prepended to every attack script: a findings dict saved to scratch/findings.json.
PREAMBLE = textwrap.dedent("""
    import json, os, sys
    WS = os.environ.get("FSRLM_WORKSPACE", os.getcwd())
    F = {}
    def save():
        with open(os.path.join(WS, "scratch", "findings.json"), "w") as fh:
            json.dump(F, fh, default=str)
""")


@dataclass
class AttackRun:
    result: RLMResult
    findings: dict[str, Any]

    @property
    def workspace(self) -> Path:
        assert self.result.workspace_path is not None
        return self.result.workspace_path


def read_findings(result: RLMResult) -> dict[str, Any]:
    if result.workspace_path is None:
        return {}
    path = result.workspace_path / "scratch" / "findings.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def host_ip() -> str:
    """An address of this host other than loopback (the route to the outside), if any."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def peak_growth(fn: Callable[[], Any], measure: Callable[[], int]) -> tuple[Any, int]:
    """Run ``fn``; return its value and how far ``measure()`` rose above where it started meanwhile."""
    base = measure()
    peak = base
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, measure())
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        value = fn()
    finally:
        done.set()
        sampler.join()
    return value, peak - base


def peak_rss_growth(fn: Callable[[], Any]) -> tuple[Any, int]:
    """This process's peak RSS growth (bytes) while ``fn`` runs."""
    return peak_growth(fn, _rss)


def peak_fd_growth(fn: Callable[[], Any]) -> tuple[Any, int]:
    """This process's peak growth in open file descriptors while ``fn`` runs."""
    return peak_growth(fn, _open_fds)


def our_containers(tmp_path: Path) -> list[str]:
    """fsRLM containers whose workspace lies under ``tmp_path`` (other sessions' are ignored)."""
    try:
        import docker

        client = docker.from_env()
    except Exception:
        return []
    try:
        found = []
        for c in client.containers.list(all=True, filters={"label": "fsrlm=1"}, ignore_removed=True):
            mounts = c.attrs.get("Mounts") or []
            if any(str(m.get("Source", "")).startswith(str(tmp_path)) for m in mounts):
                found.append(c.name)
        return found
    finally:
        client.close()


class ContainerCpu:
    """Samples, from the host, the CPU time of the containers whose workspace lies under ``tmp_path``.

    Inside gVisor a process's CPU time is what gVisor's kernel counts, not what the host's
    scheduler granted, so a CPU cap is checked here: the container's cgroup (cgroup v1
    ``cpuacct.usage`` or v2 ``cpu.stat``), read every ``interval`` seconds while ``fn`` runs.
    ``peak_rate(window)`` is the most CPU per second seen over any ``window`` seconds.
    """

    def __init__(self, tmp_path: Path, interval: float = 0.2) -> None:
        self.tmp_path = tmp_path
        self.interval = interval
        self.samples: list[tuple[float, float]] = []  # (monotonic time, CPU seconds)

    def _cgroup_usage(self, pid: int) -> float | None:
        try:
            lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        except OSError:
            return None
        for line in lines:
            _, controllers, path = line.split(":", 2)
            if "cpuacct" in controllers.split(","):
                base = Path("/sys/fs/cgroup") / controllers  # e.g. cpu,cpuacct
                for folder in (Path("/sys/fs/cgroup/cpuacct") / path.lstrip("/"), base / path.lstrip("/")):
                    try:
                        return int((folder / "cpuacct.usage").read_text()) / 1e9
                    except OSError:
                        continue
            if controllers == "":
                try:
                    stat = (Path("/sys/fs/cgroup") / path.lstrip("/") / "cpu.stat").read_text()
                    return int(stat.split("usage_usec", 1)[1].split()[0]) / 1e6
                except (OSError, IndexError, ValueError):
                    continue
        return None

    def run(self, fn: Callable[[], Any]) -> Any:
        import docker

        client = docker.from_env()
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                total = 0.0
                for c in client.containers.list(filters={"label": "fsrlm=1"}, ignore_removed=True):
                    if any(str(m.get("Source", "")).startswith(str(self.tmp_path)) for m in c.attrs.get("Mounts") or []):
                        usage = self._cgroup_usage(c.attrs["State"]["Pid"])
                        total += usage or 0.0
                if total:
                    self.samples.append((time.monotonic(), total))
                time.sleep(self.interval)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            return fn()
        finally:
            done.set()
            sampler.join()
            client.close()

    def peak_rate(self, window: float) -> float:
        best = 0.0
        for i, (t0, u0) in enumerate(self.samples):
            for t1, u1 in self.samples[i + 1:]:
                if t1 - t0 >= window:
                    best = max(best, (u1 - u0) / (t1 - t0))
                    break
        return best
