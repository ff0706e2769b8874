"""Helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# A key the broker holds in tests: it must reach the scripted upstream and never the sandbox.
FAKE_UPSTREAM_KEY = "sk-ant-test-UPSTREAM-SECRET-do-not-leak"
# The scripted model's names, which no price table knows, priced as a gateway's would be (else the dear
# unknown-model price): the root cheap enough that its reservations (32k max_tokens a call) fit small budgets.
SCRIPTED_PRICES = {"scripted-root": {"input_per_mtok": 0.3, "output_per_mtok": 1.5},
                   "scripted-sub": {"input_per_mtok": 3.0, "output_per_mtok": 15.0}}


def fsrlm_executable() -> str:
    """The ``fsrlm`` console script of the interpreter running the tests (as a user runs it)."""
    import shutil
    import sys

    import pytest

    candidate = Path(sys.executable).parent / "fsrlm"
    found = str(candidate) if candidate.exists() else shutil.which("fsrlm")
    if not found:
        pytest.fail("the fsrlm console script is not installed next to the test interpreter")
    return found


def scripted_cli_env(url: str, tmp_path: Path) -> dict[str, str]:
    """The environment that points ``fsrlm`` at a scripted model on ``url``, with the test's own cache."""
    return {
        "FSRLM_UPSTREAM": "compatible",
        "FSRLM_UPSTREAM_BASE_URL": url,
        "FSRLM_CACHE_DIR": str(tmp_path / "cache"),
        "FSRLM_ROOT_MODEL": "scripted-root",
        "FSRLM_SUBMODEL": "scripted-sub",
        "FSRLM_TIMEOUT_SECONDS": "120",
    }


def log_lines(n: int = 600, label: str = "ERROR", every: int = 13) -> tuple[str, int]:
    """A log of ``n`` lines where every ``every``-th line has ``label``; returns (text, count)."""
    lines = [
        f"2026-01-01T00:{i // 60 % 60:02d}:{i % 60:02d} host-{i % 7} {label if i % every == 0 else 'INFO'} "
        f"request {i} finished with payload {'x' * 48}"
        for i in range(n)
    ]
    return "\n".join(lines) + "\n", sum(1 for i in range(n) if i % every == 0)


TOOLS_DIR = Path(__file__).resolve().parents[1] / "tools"  # relay.py, mux.py
AGENT_TOOLS_DIR = TOOLS_DIR / "workspace"  # what each run folder's tools/ gets


def load_tool(name: str):
    """Import the agent's ``tools/<name>.py`` as the sandbox would: standalone, not as part of a package."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(f"fsrlm_tools_{name}", AGENT_TOOLS_DIR / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# Run inside a sandbox (python3 -c PROBE): reports what the agent could see and do, as JSON.
SANDBOX_PROBE = r"""
import ctypes, json, os, urllib.request, urllib.error
# PR_GET_NO_NEW_PRIVS, asked directly: gVisor's /proc/self/status has no NoNewPrivs (nor CapAmb) line.
no_new_privs = ctypes.CDLL(None).prctl(39, 0, 0, 0, 0)
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
def writable(path):
    try:
        with open(path, "w") as f:
            f.write("x")
        return True
    except OSError:
        return False
def get(headers, tries=100):
    req = urllib.request.Request(os.environ["FSRLM_BROKER_URL"] + "/fsrlm/v1/health", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, None
    except urllib.error.URLError as e:  # the relay starts beside the agent: give it a moment
        if isinstance(e.reason, ConnectionRefusedError) and tries:
            import time; time.sleep(0.05); return get(headers, tries - 1)
        raise
prompt = "/workspace/input/prompt.md"
print(json.dumps({
    "uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
    "status": {k: status.get(k, "").strip() for k in ("CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb", "NoNewPrivs",
                                                      "Seccomp")},
    "no_new_privs": no_new_privs,
    "net": sorted(os.listdir("/sys/class/net")),
    "writable": {p: writable(p) for p in ("/probe", "/etc/probe", "/usr/local/bin/probe", "/opt/fsrlm/probe",
                                          "/workspace/probe.txt", "/workspace/output/probe.txt", "/tmp/probe",
                                          "/home/sandbox/probe")},
    "input": open(prompt).read() if os.path.exists(prompt) else None,
    "env": dict(os.environ),
    "health": get({"x-api-key": os.environ["FSRLM_BROKER_TOKEN"]}),
    "health_without_token": get({}),
    "cwd": os.getcwd(),
}))
"""


def run_objects(client, run_id: str) -> list[str]:
    """Names of the containers and volumes a Docker engine still holds for ``run_id``."""
    from fsrlm.executors.base import LABEL_RUN_ID

    filters = {"label": f"{LABEL_RUN_ID}={run_id}"}
    return ([c.name for c in client.containers.list(all=True, filters=filters)]
            + [v.name for v in client.volumes.list(filters=filters)])


def run_ids_under(root: Path) -> set[str]:
    """Run ids of the run folders (``state/job.json``) under ``root``, nested runs included (six levels down)."""
    import json

    ids: set[str] = set()
    if not root.is_dir():
        return ids
    # Fixed depths, never rglob: an agent's tree may be deeper than the recursion limit.
    for job in (job for depth in range(1, 7) for job in root.glob("*/" * depth + "state/job.json")):
        try:
            run_id = json.loads(job.read_text()).get("run_id")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(run_id, str):
            ids.add(run_id)
    return ids


def run_processes(run_ids: set[str]) -> list[int]:
    """Pids of live processes that carry one of ``run_ids`` in their environment."""
    markers = [f"FSRLM_RUN_ID={r}\0".encode() for r in run_ids]
    found: list[int] = []
    if not markers:
        return found
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                env = (entry / "environ").read_bytes()
            except OSError:
                continue
            if any(m in env for m in markers):
                found.append(int(entry.name))
    return found


@contextlib.contextmanager
def ray_test_cluster(node_tmp: Path, **options: Any) -> Iterator[Any]:
    """A head and two workers of two sandboxes each (``LocalRayCluster``), whose nodes use ``node_tmp``
    as their temp dir; on leaving, checks that no process of it is left and its folder is gone."""
    from fsrlm.testing.ray_cluster import LocalRayCluster

    with LocalRayCluster(workers=[{"fsrlm_sandbox": 2}, {"fsrlm_sandbox": 2}], env={"TMPDIR": str(node_tmp)},
                         **options) as cluster:
        yield cluster
    assert cluster.leftovers() == []
    assert not Path(cluster.temp_dir).exists()


def node_leftovers(node_tmp: Path) -> list[str]:
    """What runs left in a node's temp dir: broker sockets, job (or baseline) folders, local-run records."""
    left = [p.name for p in node_tmp.iterdir() if p.name.startswith(("fsrlm-broker-", "fsrlm-job-"))]
    return left + [str(p.relative_to(node_tmp)) for p in node_tmp.glob("fsrlm-*/local/*.json")]
# -- the sandbox's kernel (tests/conftest.py: the sandbox_runtime fixture) ----------------------------

SANDBOX_RUNTIMES = ("runc", "runsc")
ISOLATION_OF = {"runc": "runc", "runsc": "gvisor"}


def kernel_env() -> dict[str, str]:
    """``FSRLM_ISOLATION`` as the running test set it, for a ``fsrlm`` command a test starts itself."""
    value = os.environ.get("FSRLM_ISOLATION")
    return {"FSRLM_ISOLATION": value} if value else {}


@contextlib.contextmanager
def default_isolation(value: str) -> Iterator[None]:
    """Make ``value`` the default ``isolation`` of every container executor config built meanwhile.

    Tests build executor configs many ways (``DockerExecutorConfig()``, dicts assigned to
    ``config.executor``, ``FSRLM_EXECUTOR``); changing the field's default reaches them all.
    """
    from fsrlm.config import RLMConfig
    from fsrlm.executors.configs import DockerExecutorConfig, RemoteDockerExecutorConfig

    models = (DockerExecutorConfig, RemoteDockerExecutorConfig)
    old = [m.model_fields["isolation"].default for m in models]
    try:
        for m in models:
            m.model_fields["isolation"].default = value
            m.model_rebuild(force=True)
        RLMConfig.model_rebuild(force=True)
        yield
    finally:
        for m, default in zip(models, old):
            m.model_fields["isolation"].default = default
            m.model_rebuild(force=True)
        RLMConfig.model_rebuild(force=True)


def engine_has_gvisor(client=None) -> bool:
    """Whether the local Docker engine has a gVisor runtime the docker executor can use."""
    from fsrlm.executors.docker.isolation import engine_runtimes, usable_gvisor

    try:
        import docker

        client = client or docker.from_env(timeout=20)
        return usable_gvisor(engine_runtimes(client.info()), bind_socket=True) is not None
    except Exception:  # noqa: BLE001 - no engine: the docker tests fail on their own
        return False


def gvisor_runtimes() -> dict[str, dict]:
    """The runtimes table a test's own dockerd gets so that it offers gVisor (empty without runsc here)."""
    import shutil

    runsc = shutil.which("runsc")
    return {"runsc": {"path": runsc, "runtimeArgs": ["--network=none", "--host-uds=open"]}} if runsc else {}
