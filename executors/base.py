"""The one interface every executor backend implements.

Two layers, kept apart:

* ``Executor`` — *where* the agent runs: check the backend is usable, prepare a
  ``Sandbox`` for one workspace, reap leftovers by label.
* ``Sandbox`` — *what* runs in it: start the agent process (stdin/stdout
  streams), copy results back, close. ``close`` is idempotent and always safe.

The orchestrator only ever talks to these two classes; it never branches on the
backend type.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from fsrlm.broker.endpoint import BrokerEndpoint

# Label put on every container, volume and socket a run creates, so that
# ``fsrlm gc`` can find leftovers of a crashed orchestrator.
LABEL_RUN_ID = "fsrlm.run-id"
LABEL_CREATED = "fsrlm.created"
LABEL_APP = "fsrlm"
LABEL_ORCHESTRATOR = "fsrlm.orchestrator"  # executors/liveness.py: is the run still going?


class SandboxSpec(BaseModel):
    """Everything an executor needs to prepare a sandbox for one run."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    run_id: str
    workspace: Path  # the run folder on the host
    broker: BrokerEndpoint
    env: dict[str, str]  # non-secret variables for the agent (run token, limits shown to it)
    timeout_seconds: float


class ExecResult(BaseModel):
    """Outcome of the agent process."""

    exit_code: int | None
    killed: bool = False  # stopped by us (timeout, interrupt)
    oom_killed: bool = False
    stderr_tail: str = ""


class AgentProcess(abc.ABC):
    """A running agent process: newline-delimited JSON on stdin and stdout."""

    @abc.abstractmethod
    async def write(self, data: bytes) -> None: ...

    @abc.abstractmethod
    async def close_stdin(self) -> None: ...

    @abc.abstractmethod
    def stdout_lines(self) -> AsyncIterator[bytes]:
        """Yield stdout one line at a time (without the trailing newline)."""

    @abc.abstractmethod
    async def wait(self) -> ExecResult: ...

    @abc.abstractmethod
    async def kill(self) -> None:
        """Stop the process now; safe to call more than once."""


class Sandbox(abc.ABC):
    """One prepared sandbox for one run's workspace."""

    #: Absolute path of the workspace as the agent sees it.
    workspace_path: str
    #: Path of the Claude Code CLI inside the sandbox.
    cli_path: str

    @abc.abstractmethod
    async def start_agent(self, argv: list[str], env: dict[str, str]) -> AgentProcess:
        """Start ``cli_path`` with ``argv`` in the workspace, with only ``env`` (+ sandbox plumbing)."""

    @abc.abstractmethod
    async def collect(self) -> None:
        """Bring the workspace's contents back to the host run folder (no-op for shared folders)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop everything this sandbox started and remove what it created. Idempotent."""

    async def __aenter__(self) -> Sandbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Executor(abc.ABC):
    """A backend that can run the agent: local process, Docker, remote Docker."""

    name: ClassVar[str]
    #: True when the agent cannot touch the host beyond its workspace.
    isolates: ClassVar[bool]

    @abc.abstractmethod
    async def check(self) -> None:
        """Raise ``ExecutorUnavailable`` (with how to fix it) before any work starts."""

    @abc.abstractmethod
    async def prepare(self, spec: SandboxSpec) -> Sandbox:
        """Create the sandbox for ``spec.workspace``; nothing runs yet."""

    async def gc(self, older_than_seconds: float = 0.0) -> list[str]:
        """Remove leftovers of crashed runs (by label); return what was removed."""
        return []
