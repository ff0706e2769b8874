"""Driving the Claude Code CLI inside a sandbox through the Claude Agent SDK.

The SDK speaks the CLI's stream-json control protocol; ``SandboxTransport``
gives it the stdin/stdout of a process that the executor started — a host
process, or one inside a container — so the same SDK code drives both.
``initialize_ahead`` opens that protocol before the run does (a warm slot's CLI).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from claude_agent_sdk import ClaudeAgentOptions, Transport

from fsrlm.config import RLMConfig
from fsrlm.errors import SandboxError
from fsrlm.prompts import system_append

from fsrlm.executors.base import AgentProcess, ExecResult, Sandbox

logger = logging.getLogger(__name__)

# What the agent may use: files in its workspace, a shell, and skills. No web tools.
ALLOWED_TOOLS = ("Bash", "Read", "Write", "Edit", "Glob", "Grep", "TodoWrite", "Skill")
DISALLOWED_TOOLS = ("WebFetch", "WebSearch", "NotebookEdit")


def agent_options() -> ClaudeAgentOptions:
    """The SDK options of every run: none beyond the defaults (the CLI's arguments carry the run's settings).
    A warm slot's ``initialize`` request is the one the SDK sends for these (``INITIALIZE_REQUEST``)."""
    return ClaudeAgentOptions()


def run_argv(config: RLMConfig, limits: dict[str, Any], system: str | None, resume: str | None = None) -> list[str]:
    """The CLI's arguments for a run of ``config`` (a warm sandbox and the run it serves must agree)."""
    return cli_argv(model=config.effective_root_model, max_turns=config.max_turns,
                    system_append=system_append(limits, system), resume=resume)


def cli_argv(*, model: str, max_turns: int, system_append: str, resume: str | None = None) -> list[str]:
    """Arguments for the CLI (without its path)."""
    argv = [
        "--output-format", "stream-json", "--input-format", "stream-json", "--verbose",
        f"--model={model}",
        "--max-turns", str(max_turns),
        "--append-system-prompt", system_append,
        # Allow rules rather than bypassPermissions: the CLI refuses the latter as
        # root, and allow rules say exactly what the agent may use.
        "--permission-mode", "default",
        "--allowedTools", ",".join(ALLOWED_TOOLS),
        "--disallowedTools", ",".join(DISALLOWED_TOOLS),
        "--setting-sources", "project",
    ]
    if resume:
        argv.append(f"--resume={resume}")
    return argv


class SandboxTransport(Transport):
    """An SDK transport over an executor's ``AgentProcess``."""

    def __init__(self, sandbox: Sandbox, argv: list[str]) -> None:
        self._sandbox = sandbox
        self._argv = argv
        self.process: AgentProcess | None = None
        self.exit: ExecResult | None = None

    async def connect(self) -> None:
        if self.process is None:
            self.process = await self._sandbox.start_agent(self._argv)

    async def write(self, data: str) -> None:
        assert self.process is not None
        await self.process.write(data.encode())

    async def end_input(self) -> None:
        if self.process is not None:
            await self.process.close_stdin()

    def read_messages(self) -> AsyncIterator[dict[str, Any]]:
        return self._read()

    async def _read(self) -> AsyncIterator[dict[str, Any]]:
        assert self.process is not None
        async for line in self.process.stdout_lines():
            line = line.strip()
            if not line:
                continue
            try:
                message = json.loads(line)
            except ValueError:
                logger.debug("non-JSON line from the CLI: %.200r", line)
                continue
            if isinstance(message, dict):
                yield message
        self.exit = await self.process.wait()

    def is_ready(self) -> bool:
        return self.process is not None

    async def close(self) -> None:
        if self.process is not None:
            await self.process.kill()


# -- initializing a CLI ahead of its run (a warm slot) ----------------------------------
#
# The control request the SDK opens every session with, as it sends it for ``agent_options()`` (no hooks,
# no agents, no MCP servers). A warm slot sends it first
# under its own id; the run's SDK sends its own later, and the CLI answers that one too.
INITIALIZE_REQUEST = {"subtype": "initialize", "hooks": None}
WARM_INITIALIZE_ID = "fsrlm_warm_initialize"
INITIALIZE_TIMEOUT_S = 60.0  # the SDK's own default wait for the answer


class InitializedAgent(AgentProcess):
    """A CLI after its ``initialize`` answer: the same process, its stdout read on from there."""

    def __init__(self, process: AgentProcess, lines: AsyncIterator[bytes], held: deque[bytes]) -> None:
        self._process = process
        self._lines = lines  # the one reader of the process's stdout, already started
        self._held = held  # lines the CLI wrote before its answer: the run's SDK reads them first

    @property
    def running(self) -> bool:
        return bool(getattr(self._process, "running", True))

    def arm_timeout(self, seconds: float) -> None:
        arm = getattr(self._process, "arm_timeout", None)
        if arm is not None:
            arm(seconds)

    async def write(self, data: bytes) -> None:
        await self._process.write(data)

    async def close_stdin(self) -> None:
        await self._process.close_stdin()

    async def stdout_lines(self) -> AsyncIterator[bytes]:
        while self._held:
            yield self._held.popleft()
        async for line in self._lines:
            yield line

    async def wait(self) -> ExecResult:
        return await self._process.wait()

    async def kill(self) -> None:
        await self._process.kill()


async def initialize_ahead(process: AgentProcess, timeout: float = INITIALIZE_TIMEOUT_S) -> InitializedAgent:
    """Send the SDK's ``initialize`` request to a freshly started CLI and wait for its answer.

    The CLI holds part of its start-up until its host has initialized it; a warm slot does this ahead
    of its run, so that work is not done beside the run's first turn. Raises ``SandboxError`` when the
    CLI refuses, ends or does not answer within ``timeout``: the slot is then never used.
    """
    lines = process.stdout_lines()
    held: deque[bytes] = deque()
    request = {"type": "control_request", "request_id": WARM_INITIALIZE_ID, "request": INITIALIZE_REQUEST}
    await process.write(json.dumps(request).encode() + b"\n")
    try:
        async with asyncio.timeout(timeout):
            async for line in lines:
                response = _initialize_response(line)
                if response is None:
                    held.append(line)
                    continue
                if response.get("subtype") != "success":
                    raise SandboxError(f"the warm sandbox's CLI refused to initialize: {response.get('error')}")
                return InitializedAgent(process, lines, held)
    except TimeoutError:
        raise SandboxError(f"the warm sandbox's CLI did not answer its initialize request within {timeout:g} s")
    raise SandboxError("the warm sandbox's CLI ended before it answered its initialize request")


def _initialize_response(line: bytes) -> dict | None:
    """The ``response`` of the slot's own initialize answer, or None for any other line."""
    try:
        message = json.loads(line)
    except ValueError:
        return None
    if not isinstance(message, dict) or message.get("type") != "control_response":
        return None
    response = message.get("response")
    return response if isinstance(response, dict) and response.get("request_id") == WARM_INITIALIZE_ID else None
