"""The remote-docker executor's costs: per-run overhead against the local docker executor, and
how fast a workspace crosses the wire.

The "remote host" is ``--remote-host URL`` (with the usual DOCKER_TLS_VERIFY / DOCKER_CERT_PATH),
or else a second Docker daemon started on loopback for the measurement (``tests/dockerd.py``, from a source checkout;
needs root). On loopback the numbers are the machinery's own cost — archiving, the tunnel, the
extra API calls — not a network's.

    fsrlm bench remote [--reps 5] [--size-mb 100] [--remote-host tcp://…]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fsrlm.executors.base import SandboxSpec
from fsrlm.executors.configs import RemoteDockerExecutorConfig
from fsrlm.executors.contract import AgentContract
from fsrlm.executors.docker.remote import RemoteDockerExecutor

from fsrlm.broker.endpoint import BrokerEndpoint
from fsrlm.config import RLMConfig
from fsrlm.rlm import RLM
from fsrlm.testing.plans import bash_plan
from fsrlm.testing.scripted_model import ScriptedModelServer

Row = dict[str, Any]


def _config(executor: dict, url: str, tmp: Path) -> RLMConfig:
    return RLMConfig.model_validate({
        "upstream": {"type": "compatible", "base_url": url, "max_retries": 0},
        "executor": executor, "cache_responses": False, "cache_dir": str(tmp / "cache"),
        "workspace_dir": str(tmp / "runs"), "root_model": "scripted-root", "submodel": "scripted-sub",
    })


def bench_overhead(host: str, reps: int) -> list[Row]:
    """The same trivial 2-turn run (one Bash call writing the answer, then the end) on docker and remote-docker.

    Both under runc: the engine here may offer gVisor (``isolation = "auto"`` would pick it) while the
    loopback "remote" daemon does not, and the kernel, not the transport, would make the difference.
    """
    rows: list[Row] = []
    medians: dict[str, float] = {}
    with ScriptedModelServer(bash_plan("echo hi > output/answer.md")) as model, tempfile.TemporaryDirectory() as tmp:
        for name, executor in (("docker", {"type": "docker", "isolation": "runc"}),
                               ("remote-docker", {"type": "remote-docker", "host": host, "isolation": "runc"})):
            rlm = RLM(_config(executor, model.url, Path(tmp)))
            warm = rlm.invoke("input", question="q")  # image built / shipped, caches warm
            assert warm.success, warm.errors
            times = []
            for _ in range(reps):
                t = time.perf_counter()
                result = rlm.invoke("input", question="q")
                times.append(time.perf_counter() - t)
                assert result.success, result.errors
            medians[name] = statistics.median(times)
            rows.append({"executor": name, "runs": reps, "median_s": round(medians[name], 3),
                         "min_s": round(min(times), 3), "max_s": round(max(times), 3)})
    rows.append({"executor": "remote-docker minus docker", "runs": "", "median_s":
                 round(medians["remote-docker"] - medians["docker"], 3), "min_s": "", "max_s": ""})
    return rows


async def _transfer(host: str, size_mb: int, tmp: Path) -> Row:
    workspace = tmp / "ws"
    (workspace / "input").mkdir(parents=True)
    (workspace / "output").mkdir()
    block = os.urandom(1024 * 1024)
    with open(workspace / "input" / "prompt.md", "wb") as f:
        for _ in range(size_mb):
            f.write(block)
    broker = await asyncio.start_unix_server(lambda r, w: w.close(), str(tmp / "b.sock"))

    async def no_tcp() -> int:
        raise AssertionError

    executor = RemoteDockerExecutor(RemoteDockerExecutorConfig(host=host))
    await executor.check()
    spec = SandboxSpec(workspace=workspace, broker=BrokerEndpoint(unix_socket=tmp / "b.sock", open_tcp=no_tcp),
                       agent=AgentContract(run_id=f"bench-transfer-{os.getpid()}", token="bench"),
                       timeout_seconds=600)
    try:
        async with await executor.prepare(spec) as sandbox:
            sandbox.cli_path = "/bin/sh"
            process = await sandbox.start_agent(["-c", "cat input/prompt.md > output/copy.md"])
            await process.close_stdin()
            async for _ in process.stdout_lines():
                pass
            result = await process.wait()
            assert result.exit_code == 0, result.stderr_tail
            await sandbox.collect()
            t = sandbox.workspace.transfer
    finally:
        broker.close()
    assert (workspace / "output" / "copy.md").stat().st_size == size_mb * 1024 * 1024
    mb_in, mb_out = t["bytes_in"] / 2**20, t["bytes_out"] / 2**20
    return {"input": f"{size_mb} MB", "in_MB": round(mb_in, 1), "in_s": t["seconds_in"],
            "in_MB_per_s": round(mb_in / t["seconds_in"], 1), "out_MB": round(mb_out, 1),
            "out_s": t["seconds_out"], "out_MB_per_s": round(mb_out / t["seconds_out"], 1)}


def bench_transfer(host: str, size_mb: int) -> list[Row]:
    """Copy a ``size_mb`` input in; the agent copies it once more; copy everything back."""
    with tempfile.TemporaryDirectory() as tmp:
        return [asyncio.run(_transfer(host, size_mb, Path(tmp)))]


@contextlib.contextmanager
def remote_host(url: str | None):
    """``url``, or a throwaway second Docker daemon on loopback."""
    if url:
        yield url
        return
    with second_dockerd() as daemon:
        yield daemon.url


def second_dockerd():
    """The tests' throwaway second daemon (``tests/dockerd.py``): there only in a source checkout."""
    tests = Path(__file__).resolve().parents[1] / "tests"  # benchmarks/ -> the repository
    if not (tests / "dockerd.py").is_file():
        raise SystemExit("fsrlm bench remote: no --remote-host given, and tests/dockerd.py (a throwaway second "
                         "Docker daemon) exists only in a source checkout; give --remote-host tcp://HOST:2376")
    sys.path.insert(0, str(tests))
    from dockerd import SecondDockerd

    return SecondDockerd()


def main(argv: list[str] | None = None) -> int:
    from fsrlm.benchmarks.perf import print_table

    parser = argparse.ArgumentParser(prog="fsrlm bench remote", description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--remote-host", default=None, help="default: a second dockerd on loopback (root)")
    args = parser.parse_args(argv)
    with remote_host(args.remote_host) as host:
        print_table(f"per-run overhead, trivial 2-turn run, remote host {host}", bench_overhead(host, args.reps))
        print_table("workspace transfer (copy in, agent copies the input, copy everything back)",
                    bench_transfer(host, args.size_mb))
    return 0


if __name__ == "__main__":
    sys.exit(main())
