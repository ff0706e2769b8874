"""The local executor: the agent runs as a host process in the run folder.

It isolates nothing — the agent's scripts can read and write anything the user
can — so it is for trusted input only. Credentials still stay in the broker:
the process gets a scrubbed environment with the run token and no API key.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from fsrlm.executors.base import (
    AgentProcess,
    ExecResult,
    Executor,
    Sandbox,
    SandboxSpec,
)
from fsrlm.executors.bundled_cli import bundled_cli
from fsrlm.executors.configs import LocalExecutorConfig
from fsrlm.executors.contract import SandboxPlaces, agent_environment

from fsrlm.errors import ExecutorUnavailable, SandboxError, WorkspaceError
from fsrlm.safe_fs import check_identity, make_dirs_beneath

STDOUT_LINE_LIMIT = 64 * 1024 * 1024
# Host variables that are safe and useful to keep; everything else is dropped.
_KEEP = ("PATH", "LC_ALL", "TZ", "TMPDIR")


_PR_SET_PDEATHSIG = 1


def _records_dir() -> Path:
    """Where running local agents are recorded, so ``fsrlm gc`` can reap them after a crash."""
    return Path(tempfile.gettempdir()) / f"fsrlm-{os.getuid()}" / "local"


def _die_with_parent() -> None:
    # Runs in the child before exec: the CLI gets SIGKILL if the orchestrator dies,
    # even by SIGKILL; scripts it started are reaped by `fsrlm gc` (same process group).
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def processes_of_run(run_id: str) -> list[int]:
    """Pids of every process that inherited this run's environment.

    The CLI starts each Bash command in a new session, so neither the process
    group nor the session finds the agent's scripts; the ``FSRLM_RUN_ID``
    variable they all inherit does, even after they were orphaned.
    """
    marker = f"FSRLM_RUN_ID={run_id}\0".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def kill_run_processes(run_id: str) -> int:
    """SIGKILL every process of the run; return how many were signalled."""
    pids = processes_of_run(run_id)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LocalProcess(AgentProcess):
    def __init__(self, proc: asyncio.subprocess.Process, run_id: str, timeout_seconds: float | None = None) -> None:
        self._proc = proc
        self._run_id = run_id
        self._stderr_tail = b""
        self._killed = False
        self.timed_out = False  # True when the spec's timeout_seconds ran out and we killed it
        self._stderr_task = asyncio.create_task(self._drain_stderr())
        self._timeout_kill: asyncio.Task[None] | None = None
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(timeout_seconds, self._on_timeout) if timeout_seconds else None

    def _on_timeout(self) -> None:
        if self._proc.returncode is None:
            self.timed_out = True
            self._timeout_kill = asyncio.ensure_future(self.kill())

    async def _drain_stderr(self) -> None:
        assert self._proc.stderr is not None
        while chunk := await self._proc.stderr.read(65536):
            self._stderr_tail = (self._stderr_tail + chunk)[-4000:]

    async def write(self, data: bytes) -> None:
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(data)
            await self._proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as e:
            raise SandboxError(f"the agent process closed its input: {e}") from None

    async def close_stdin(self) -> None:
        if self._proc.stdin is not None and not self._proc.stdin.is_closing():
            self._proc.stdin.close()

    async def stdout_lines(self) -> AsyncIterator[bytes]:
        assert self._proc.stdout is not None
        while line := await self._proc.stdout.readline():
            yield line.rstrip(b"\n")

    async def wait(self) -> ExecResult:
        code = await self._proc.wait()
        if self._deadline is not None:
            self._deadline.cancel()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._stderr_task), 2)
        return ExecResult(exit_code=code, killed=self._killed,
                          stderr_tail=self._stderr_tail.decode("utf-8", "replace"))

    async def kill(self) -> None:
        if self._proc.returncode is None:
            self._killed = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            await self._proc.wait()
        # Scripts the agent started live in sessions of their own: find them by the run id.
        await asyncio.to_thread(kill_run_processes, self._run_id)
        self._stderr_task.cancel()


class LocalSandbox(Sandbox):
    def __init__(self, spec: SandboxSpec, cli_path: str, broker_url: str) -> None:
        self.spec = spec
        self.cli_path = cli_path
        # The CLI's own temp files (task output, sockets) in the run folder, not in the host's
        # /tmp/claude-<uid>, where every run would leave a folder; the scripts' TMPDIR is left alone.
        self.places = SandboxPlaces(workspace=str(spec.workspace), broker_url=broker_url,
                                    home=str(spec.workspace / ".agent" / "home"),
                                    plumbing={"CLAUDE_CODE_TMPDIR": str(spec.workspace / ".agent" / "tmp")})
        self._process: LocalProcess | None = None
        self._record: Path | None = None
        self._closed = False

    async def start_agent(self, argv: list[str]) -> AgentProcess:
        if self._closed:
            raise SandboxError("This sandbox is closed; prepare a new one.")
        inherited = {k: os.environ[k] for k in _KEEP if k in os.environ}
        env = agent_environment(self.spec.agent, self.places, inherited)
        try:
            # The local agent could reach any folder anyway; still, the host follows no link it planted
            # (.agent may be one after a first run) and starts in the folder it created, nowhere else.
            if self.spec.workspace_id is not None:
                check_identity(self.spec.workspace, self.spec.workspace_id)
            make_dirs_beneath(self.spec.workspace, ".agent/home", 0o700)
            make_dirs_beneath(self.spec.workspace, ".agent/tmp", 0o700)
        except (OSError, WorkspaceError) as e:
            raise SandboxError(f"Cannot start the agent in {self.places.workspace}: {e}") from None
        try:
            proc = await asyncio.create_subprocess_exec(
                self.cli_path, *argv, cwd=self.places.workspace, env=env,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                start_new_session=True, limit=STDOUT_LINE_LIMIT, preexec_fn=_die_with_parent,
            )
        except OSError as e:
            raise SandboxError(f"cannot start the Claude Code CLI at {self.cli_path}: {e.strerror}") from None
        self._record = _records_dir() / f"{self.spec.run_id}.json"
        with contextlib.suppress(OSError):
            self._record.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._record.write_text(json.dumps({"orchestrator": os.getpid(), "created": time.time()}))
        self._process = LocalProcess(proc, self.spec.run_id, self.spec.timeout_seconds)
        return self._process

    async def collect(self) -> None:
        return None  # the agent wrote straight into the run folder

    async def close(self) -> None:
        self._closed = True
        if self._process is not None:
            await self._process.kill()
            self._process = None
        if self._record is not None:
            self._record.unlink(missing_ok=True)
            self._record = None


class LocalExecutor(Executor):
    def __init__(self, config: LocalExecutorConfig | None = None) -> None:
        self.config = config or LocalExecutorConfig()
        self.cli_path = self.config.cli_path or str(bundled_cli() or "claude")

    async def check(self) -> None:
        if not os.access(self.cli_path, os.X_OK):
            raise ExecutorUnavailable(
                f"the Claude Code CLI was not found at {self.cli_path}; reinstall claude-agent-sdk "
                "(it bundles the CLI) or set executor.cli_path"
            )

    async def prepare(self, spec: SandboxSpec) -> Sandbox:
        port = await spec.broker.open_tcp()
        return LocalSandbox(spec, self.cli_path, f"http://127.0.0.1:{port}")

    async def gc(self, older_than_seconds: float = 0.0) -> list[str]:
        """Kill the process groups of local runs whose orchestrator is gone."""
        removed: list[str] = []
        for record in sorted(_records_dir().glob("*.json")) if _records_dir().is_dir() else []:
            try:
                info = json.loads(record.read_text())
            except (OSError, ValueError):
                continue
            if _alive(int(info["orchestrator"])) or time.time() - info.get("created", 0) < older_than_seconds:
                continue
            killed = kill_run_processes(record.stem)
            record.unlink(missing_ok=True)
            removed.append(f"local run {record.stem} ({killed} processes)")
        return removed
