"""Driving the Claude Code CLI inside a sandbox through the Claude Agent SDK.

The SDK speaks the CLI's stream-json control protocol; ``SandboxTransport``
gives it the stdin/stdout of a process that the executor started — a host
process, or one inside a container — so the same SDK code drives both.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from claude_agent_sdk import Transport

from fsrlm.config import RLMConfig
from fsrlm.prompts import system_append

from fsrlm.executors.base import AgentProcess, ExecResult, Sandbox

logger = logging.getLogger(__name__)

# What the agent may use: files in its workspace, a shell, and skills. No web tools.
ALLOWED_TOOLS = ("Bash", "Read", "Write", "Edit", "Glob", "Grep", "TodoWrite", "Skill")
DISALLOWED_TOOLS = ("WebFetch", "WebSearch", "NotebookEdit")


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
