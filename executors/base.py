"""The one interface every executor backend implements.

Two layers, kept apart:

* ``Executor`` — *where* the agent runs: check the backend is usable, prepare a
  ``Sandbox`` for one workspace, reap leftovers by label.
* ``Sandbox`` — *what* runs in it: start the agent process (stdin/stdout
  streams), copy results back, close.

What a sandbox gives the agent (its environment, the credential check) is not up
to a backend: ``executors.contract`` says it once. The orchestrator only ever talks
to these classes; it never branches on the backend type. A new backend is done
when it passes the conformance suite (``tests/executors/test_conformance.py``).
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Literal

from fsrlm.executors.contract import AgentContract
from pydantic import BaseModel, ConfigDict

from fsrlm.broker.endpoint import BrokerEndpoint
from fsrlm.safe_fs import DirIdentity

# Label put on every container, volume and socket a run creates, so that
# ``fsrlm gc`` can find leftovers of a crashed orchestrator.
LABEL_RUN_ID = "fsrlm.run-id"
LABEL_CREATED = "fsrlm.created"
LABEL_APP = "fsrlm"
LABEL_ORCHESTRATOR = "fsrlm.orchestrator"  # executors/liveness.py: is the run still going?


class SandboxSpec(BaseModel):
    """Everything an executor needs to prepare a sandbox for one run."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    workspace: Path  # the run folder on the host
    # Device and inode of the run folder the host created: what the sandbox must mount (None: as found at prepare).
    workspace_id: DirIdentity | None = None
    broker: BrokerEndpoint
    agent: AgentContract  # the run's side of the sandbox contract (token, depth, API mode)
    timeout_seconds: float
    # Started ahead of its run (a warm pool): the sandbox yields the CPU to running sandboxes until
    # ``Sandbox.activate``. A scheduling weight only; every limit stays as configured.
    standby: bool = False

    @property
    def run_id(self) -> str:
        return self.agent.run_id


class SandboxInfo(BaseModel):
    """Which kernel a run's agent had; the result, the host-side run record and the run's events say it."""

    model_config = ConfigDict(frozen=True)

    executor: str  # local, docker, remote-docker
    #: host: the agent's system calls reach the kernel of the machine it runs on (the Docker host's for
    #: remote-docker); gvisor: they reach gVisor's user-space kernel (runsc); other: another OCI runtime's
    kernel: Literal["host", "gvisor", "other"]
    isolation: str = "none"  # what was asked: none (local), auto, runc or gvisor
    runtime: str | None = None  # the engine's name of the OCI runtime the container ran with
    platform: str | None = None  # gVisor's platform (ptrace by default, kvm)
    reason: str = ""  # why this runtime, e.g. what auto found

    def label(self) -> str:
        """One phrase for people: 'gVisor (runsc, ptrace)', 'host kernel (runc)'."""
        if self.kernel == "gvisor":
            return f"gVisor ({', '.join(x for x in (self.runtime, self.platform) if x)})"
        if self.kernel == "other":
            return f"runtime {self.runtime}"
        return f"host kernel ({self.runtime})" if self.runtime else "host kernel, no sandbox"


class ExecResult(BaseModel):
    """Outcome of the agent process."""

    exit_code: int | None
    killed: bool = False  # stopped by us (timeout, interrupt)
    oom_killed: bool = False
    stderr_tail: str = ""


class AgentProcess(abc.ABC):
    """A running agent process: newline-delimited JSON on stdin and stdout."""

    @abc.abstractmethod
    async def write(self, data: bytes) -> None:
        """Write to the agent's stdin. Raises ``SandboxError`` once the process has closed it."""

    @abc.abstractmethod
    async def close_stdin(self) -> None:
        """Send end of file on stdin; safe to call more than once."""

    @abc.abstractmethod
    def stdout_lines(self) -> AsyncIterator[bytes]:
        """Yield stdout one line at a time (without the trailing newline); one reader only."""

    @abc.abstractmethod
    async def wait(self) -> ExecResult:
        """Wait for the process to end; the result is kept, so it may be called again."""

    @abc.abstractmethod
    async def kill(self) -> None:
        """Stop the process now; safe to call more than once, and after it ended.

        Raises ``SandboxError`` only when the backend cannot be reached to do it.
        """


class Sandbox(abc.ABC):
    """One prepared sandbox for one run's workspace."""

    #: Path of the Claude Code CLI inside the sandbox (tests may point it at another program).
    cli_path: str

    @abc.abstractmethod
    async def start_agent(self, argv: list[str]) -> AgentProcess:
        """Start ``cli_path`` with ``argv`` in the workspace, with the contract's environment only.

        Raises ``SandboxError`` (the environment carries a credential, the backend
        failed) and ``ImageError`` (the image is missing); nothing is left running then.
        """

    async def activate(self) -> None:
        """A standby sandbox's run has started: give it the CPU weight of any running sandbox (a no-op
        where the backend has no weights)."""

    @abc.abstractmethod
    async def collect(self) -> None:
        """Bring the workspace's contents back to the host run folder (no-op for shared folders).

        May be called after the agent was killed; ``close`` collects what was not collected.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop everything this sandbox started and remove what it created. Idempotent.

        Raises ``SandboxError`` when something could not be removed (the message names it
        and the ``fsrlm gc`` command that removes it later).
        """

    async def __aenter__(self) -> Sandbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Executor(abc.ABC):
    """A backend that can run the agent: local process, Docker, remote Docker."""

    #: Set by ``check`` when the backend knows more (the docker executors: the runtime it chose).
    info: SandboxInfo | None = None

    def describe(self) -> SandboxInfo:
        """Which kernel the agent gets; call after ``check``."""
        if self.info is not None:
            return self.info
        config = getattr(self, "config", None)
        return SandboxInfo(executor=getattr(config, "type", type(self).__name__), kernel="host")

    @abc.abstractmethod
    async def check(self) -> None:
        """Raise ``ExecutorUnavailable`` or ``ImageError`` (with how to fix it) before any work starts.

        Cheap to call again once it succeeded.
        """

    @abc.abstractmethod
    async def prepare(self, spec: SandboxSpec) -> Sandbox:
        """Create the sandbox for ``spec.workspace``; nothing runs yet. Calls ``check`` first."""

    async def gc(self, older_than_seconds: float = 0.0) -> list[str]:
        """Remove leftovers of crashed runs (by label); return what was removed."""
        return []
