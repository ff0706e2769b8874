"""A real multi-node Ray cluster on one machine, for tests and benchmarks.

Each node is its own ``ray start --block`` process tree, in its own session,
with its own loopback address (head 127.0.0.2, workers 127.0.0.3, ...), so
results name the node of each job, and a node can be killed alone, as a
machine that dies: SIGKILL to every process of that node. Loopback only: no
address outside 127.0.0.0/8 is ever used.

Every process of the cluster carries ``FSRLM_RAY_CLUSTER=<marker>/<node>`` in
its environment (Ray's workers inherit it), which is how ``stop`` finds and
ends all of them, and how ``leftovers`` proves none is left. Ray's files
(sessions, logs, sockets) live in a private temporary folder, removed at the end:
nothing is written to /tmp/ray.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

MARKER_VAR = "FSRLM_RAY_CLUSTER"
START_TIMEOUT = 90.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class RayNode:
    name: str
    ip: str
    resources: dict[str, float]
    process: subprocess.Popen | None = None
    output: list[str] = field(default_factory=list)
    started: threading.Event = field(default_factory=threading.Event)
    marker: str = ""  # FSRLM_RAY_CLUSTER value of its processes


def _ray_command() -> str:
    found = Path(sys.executable).with_name("ray")
    return str(found) if found.exists() else (shutil.which("ray") or "ray")


class LocalRayCluster:
    """``with LocalRayCluster(workers=[{"fsrlm_sandbox": 2}] * 2) as cluster: cluster.address``."""

    def __init__(self, workers: list[dict[str, float]], *, head: dict[str, float] | None = None,
                 env: dict[str, str] | None = None, object_store_mb: int = 256, num_cpus: int = 2) -> None:
        self.marker = secrets.token_hex(8)
        self.env = dict(env or {})
        self.object_store_mb = object_store_mb
        self.num_cpus = num_cpus
        self.temp_dir: Path | None = None
        self.port = 0
        self.head = RayNode("head", "127.0.0.2", dict(head or {}))
        self.workers = [RayNode(f"worker{i + 1}", f"127.0.0.{3 + i}", dict(r)) for i, r in enumerate(workers)]

    @property
    def nodes(self) -> list[RayNode]:
        return [self.head, *self.workers]

    @property
    def address(self) -> str:
        return f"{self.head.ip}:{self.port}"

    @property
    def driver_env(self) -> dict[str, str]:
        """Environment for a driver process (``fsrlm batch --ray ADDRESS``) on the head node."""
        return {"RAY_TMPDIR": str(self.temp_dir), "RAY_NODE_IP_ADDRESS": self.head.ip,
                MARKER_VAR: f"{self.marker}/driver"}

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> LocalRayCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        # A short path: Ray's unix sockets live under it and must stay below the 107-byte limit.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="fsrlm-ray-", dir="/tmp"))
        self.port = free_port(self.head.ip)
        self._launch(self.head, ["--head", f"--port={self.port}", f"--temp-dir={self.temp_dir}",
                                 "--include-dashboard=false"])
        for worker in self.workers:
            self._launch(worker, [f"--address={self.address}"])

    def _launch(self, node: RayNode, extra: list[str]) -> None:
        node.marker = f"{self.marker}/{node.name}"
        argv = [_ray_command(), "start", "--block", *extra, f"--node-ip-address={node.ip}",
                f"--num-cpus={self.num_cpus}", "--num-gpus=0", "--disable-usage-stats",
                f"--object-store-memory={self.object_store_mb * 1024 * 1024}",
                f"--dashboard-agent-listen-port={free_port()}", f"--resources={json.dumps(node.resources)}"]
        env = {**os.environ, **self.env, "RAY_TMPDIR": str(self.temp_dir), MARKER_VAR: node.marker,
               "RAY_USAGE_STATS_ENABLED": "0"}
        node.process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, text=True, start_new_session=True)
        threading.Thread(target=self._read, args=(node,), daemon=True, name=f"ray-{node.name}").start()
        if not node.started.wait(START_TIMEOUT) or node.process.poll() is not None:
            tail = "\n".join(node.output[-30:])
            raise RuntimeError(f"Ray node {node.name} did not start:\n{tail}")

    @staticmethod
    def _read(node: RayNode) -> None:
        assert node.process is not None and node.process.stdout is not None
        for line in node.process.stdout:
            node.output.append(line.rstrip())
            if "Ray runtime started" in line:
                node.started.set()
        node.started.set()  # ended: let the waiter look at the exit status

    def kill(self, node: RayNode) -> None:
        """SIGKILL every process of ``node`` at once, as when its machine dies."""
        self._kill_marked(node.marker, signal.SIGKILL)

    def stop(self) -> None:
        """End every process of the cluster and remove its folder. Safe to call twice."""
        for node in reversed(self.nodes):
            if node.process is not None and node.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    node.process.send_signal(signal.SIGTERM)  # ray start --block stops its node's processes
        deadline = time.monotonic() + 20
        for node in self.nodes:
            if node.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.process.wait(max(0.1, deadline - time.monotonic()))
        for _ in range(50):
            if not self._kill_marked(f"{self.marker}/", signal.SIGKILL):
                break
            time.sleep(0.1)
        for node in self.nodes:
            if node.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.process.wait(5)
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def leftovers(self) -> list[int]:
        """Pids of live processes of this cluster (its nodes, its workers, a driver started with ``driver_env``)."""
        return _marked_pids(f"{self.marker}/")

    def _kill_marked(self, prefix: str, sig: int) -> list[int]:
        pids = _marked_pids(prefix)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        return pids


def _marked_pids(prefix: str) -> list[int]:
    """Live (not zombie) processes whose environment holds ``FSRLM_RAY_CLUSTER=<prefix>...``."""
    needle = f"{MARKER_VAR}={prefix}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            environ = (entry / "environ").read_bytes()
        except (OSError, IndexError):
            continue
        if any(item.startswith(needle) for item in environ.split(b"\0")):
            found.append(int(entry.name))
    return found
