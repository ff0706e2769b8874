"""Initializing a CLI ahead of its run (a warm slot's): the handshake, on a process that speaks the protocol.

The process here is an in-memory pipe pair, so each way the CLI can answer (or not) is exact; the
real CLI answering it, and then the run's own ``initialize``, is covered by every run in test_warm.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from fsrlm.errors import SandboxError
from fsrlm.executors.base import AgentProcess, ExecResult
from fsrlm.agent import INITIALIZE_REQUEST, WARM_INITIALIZE_ID, initialize_ahead


class PipeProcess(AgentProcess):
    """stdin collected in ``written``; stdout fed line by line with ``say`` (``None``: the process ended)."""

    def __init__(self) -> None:
        self.written: list[dict] = []
        self.out: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.timeout: float | None = None

    def say(self, *lines: dict | bytes | None) -> None:
        for line in lines:
            self.out.put_nowait(json.dumps(line).encode() if isinstance(line, dict) else line)

    async def write(self, data: bytes) -> None:
        self.written.extend(json.loads(line) for line in data.splitlines())

    async def close_stdin(self) -> None:
        return None

    async def stdout_lines(self) -> AsyncIterator[bytes]:
        while (line := await self.out.get()) is not None:
            yield line

    async def wait(self) -> ExecResult:
        return ExecResult(exit_code=0)

    async def kill(self) -> None:
        return None

    def arm_timeout(self, seconds: float) -> None:
        self.timeout = seconds


def _answer(subtype: str = "success", request_id: str = WARM_INITIALIZE_ID, **extra) -> dict:
    return {"type": "control_response", "response": {"subtype": subtype, "request_id": request_id, **extra}}


async def _lines(process: AgentProcess, n: int) -> list[bytes]:
    got = []
    async for line in process.stdout_lines():
        got.append(line)
        if len(got) == n:
            break
    return got


def test_the_answer_is_the_slots_and_every_other_line_reaches_the_run() -> None:
    async def main() -> None:
        cli = PipeProcess()
        early = {"type": "system", "subtype": "background_tasks_changed"}
        cli.say(early, b"not json", _answer(request_id="someone-else"), _answer(response={"commands": []}))
        agent = await initialize_ahead(cli)
        assert cli.written == [{"type": "control_request", "request_id": WARM_INITIALIZE_ID,
                                "request": INITIALIZE_REQUEST}]
        cli.say(_answer(request_id="req_1_sdk"))  # the run's own initialize, answered by the CLI
        got = await _lines(agent, 4)
        assert [json.loads(line) if line != b"not json" else line for line in got] == [
            early, b"not json", _answer(request_id="someone-else"), _answer(request_id="req_1_sdk")]
        await agent.write(b'{"type": "user"}\n')  # the run's messages go to the same CLI
        assert cli.written[-1] == {"type": "user"}
        agent.arm_timeout(30)
        assert cli.timeout == 30

    asyncio.run(main())


def test_the_sdk_sends_what_the_slot_sent() -> None:
    """The slot's request is the one the SDK opens a run with: ``query`` with the runs' options."""
    from claude_agent_sdk import Transport, query

    from fsrlm.agent import agent_options

    sent: list[dict] = []

    class CLI(Transport):  # the CLI's side of the SDK's public transport interface
        def __init__(self) -> None:
            self.out: asyncio.Queue[dict | None] = asyncio.Queue()

        async def connect(self) -> None:
            return None

        async def write(self, data: str) -> None:
            message = json.loads(data)
            sent.append(message)
            if message["type"] == "control_request":
                self.out.put_nowait(_answer(request_id=message["request_id"], response={}))
            elif message["type"] == "user":
                self.out.put_nowait({"type": "result", "subtype": "success", "duration_ms": 1, "duration_api_ms": 1,
                                     "is_error": False, "num_turns": 1, "session_id": "s", "result": "ok"})

        async def read_messages(self) -> AsyncIterator[dict]:
            while (message := await self.out.get()) is not None:
                yield message

        async def end_input(self) -> None:
            self.out.put_nowait(None)

        def is_ready(self) -> bool:
            return True

        async def close(self) -> None:
            self.out.put_nowait(None)

    async def main() -> None:
        async for _ in query(prompt="q", options=agent_options(), transport=CLI()):
            pass

    asyncio.run(main())
    assert sent[0]["type"] == "control_request"
    assert sent[0]["request"] == INITIALIZE_REQUEST


@pytest.mark.parametrize("answer, message", [
    ([_answer("error", error="no such option")], "refused to initialize: no such option"),
    ([{"type": "system"}, None], "ended before it answered"),
], ids=["refused", "ended"])
def test_a_cli_that_does_not_initialize_is_never_a_slot(answer, message) -> None:
    async def main() -> None:
        cli = PipeProcess()
        cli.say(*answer)
        with pytest.raises(SandboxError, match=message):
            await initialize_ahead(cli)

    asyncio.run(main())


def test_a_cli_that_does_not_answer_in_time_is_never_a_slot() -> None:
    async def main() -> None:
        with pytest.raises(SandboxError, match="did not answer its initialize request within 0.05 s"):
            await initialize_ahead(PipeProcess(), timeout=0.05)

    asyncio.run(main())
