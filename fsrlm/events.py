"""Run events: what happens during a run, as typed objects, live.

Every event goes to ``state/events.jsonl`` (one JSON line each, written by the
host, never through a link) and to any subscriber (``RLM.astream``, the
progress display, the web viewer).
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from fsrlm.broker.audit import CallRecord
from fsrlm.safe_fs import append_beneath, open_beneath, read_text_beneath

logger = logging.getLogger(__name__)

EVENTS_LOG = "state/events.jsonl"

EventKind = Literal[
    "run_started",  # the workspace exists and the agent is starting
    "agent_text",  # text the root agent wrote
    "tool_use",  # the agent used a tool (Bash command or file path in `detail`)
    "script_started",  # a Bash command runs a script in the workspace
    "script_finished",  # ... and its result came back
    "subcall",  # one broker record (root call, subcall, rlm_query), with running totals
    "artifact",  # a line appended to state/artifacts.jsonl
    "upstream_retry",  # a model call failed transiently and is retried (`detail`: why; `data`: attempt, wait)
    "result",  # the run ended (the RLMResult summary in `data`)
]

_SCRIPT = re.compile(r"python3?\s+(?:-u\s+)?(\S+\.py)")


class RLMEvent(BaseModel):
    kind: EventKind
    run_id: str
    ts: float = Field(default_factory=time.time)
    text: str | None = None  # agent_text
    tool: str | None = None  # tool_use
    detail: str | None = None  # tool_use: Bash command / file path; script_*: the script path
    tool_use_id: str | None = None
    is_error: bool | None = None  # script_finished
    record: CallRecord | None = None  # subcall
    totals: dict[str, Any] | None = None  # subcall: running totals (the budget so far)
    data: dict[str, Any] | None = None  # artifact line, result summary, run_started details


def script_of(command: str) -> str | None:
    """The script a Bash command runs, if it runs one (``python3 scratch/scripts/x.py``)."""
    m = _SCRIPT.search(command)
    return m.group(1) if m else None


Subscriber = Callable[[RLMEvent], None]


class EventLog:
    """Writes events to the workspace and hands them to subscribers."""

    def __init__(self, workspace: Path, run_id: str, subscribers: list[Subscriber] | None = None) -> None:
        self.workspace = workspace
        self.run_id = run_id
        self.subscribers = list(subscribers or [])
        self._pending_scripts: dict[str, str] = {}  # tool_use_id -> script
        self._artifact_offset = 0

    def emit(self, kind: EventKind, **fields: Any) -> RLMEvent:
        event = RLMEvent(kind=kind, run_id=self.run_id, **fields)
        try:
            append_beneath(self.workspace, EVENTS_LOG, (event.model_dump_json(exclude_none=True) + "\n").encode())
        except OSError as e:
            logger.debug("events log write failed: %s", e)
        for subscriber in self.subscribers:
            try:
                subscriber(event)
            except Exception:  # a broken subscriber must not break the run
                logger.exception("event subscriber failed")
        return event

    # -- translating the agent's messages ----------------------------------

    def agent_message(self, message: Any) -> None:
        """Turn an SDK message (assistant or user) into events."""
        from claude_agent_sdk import (
            AssistantMessage,
            TextBlock,
            ToolResultBlock,
            ToolUseBlock,
            UserMessage,
        )

        if isinstance(message, AssistantMessage):
            for block in message.content:
                if isinstance(block, TextBlock) and block.text.strip():
                    self.emit("agent_text", text=block.text)
                elif isinstance(block, ToolUseBlock):
                    detail = _tool_detail(block.name, block.input)
                    self.emit("tool_use", tool=block.name, detail=detail, tool_use_id=block.id)
                    if block.name == "Bash" and (script := script_of(detail or "")):
                        self._pending_scripts[block.id] = script
                        self.emit("script_started", detail=script, tool_use_id=block.id)
        elif isinstance(message, UserMessage) and isinstance(message.content, list):
            for block in message.content:
                if isinstance(block, ToolResultBlock) and block.tool_use_id in self._pending_scripts:
                    script = self._pending_scripts.pop(block.tool_use_id)
                    self.emit("script_finished", detail=script, tool_use_id=block.tool_use_id,
                              is_error=bool(block.is_error), text=_clip(block.content))

    def call_record(self, record: CallRecord, totals: dict[str, Any]) -> None:
        self.emit("subcall", record=record, totals=totals)

    def upstream_retry(self, reason: str, attempt: int, wait_seconds: float) -> None:
        self.emit("upstream_retry", detail=_clip(reason, 300),
                  data={"attempt": attempt, "wait_seconds": round(wait_seconds, 2)})

    def poll_artifacts(self, max_bytes: int = 1 << 20) -> None:
        """Emit an event for each complete line appended to state/artifacts.jsonl since the last poll."""
        try:
            fd = open_beneath(self.workspace, "state/artifacts.jsonl", os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            return
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return  # a FIFO or directory planted by the agent is never read
            os.lseek(fd, self._artifact_offset, os.SEEK_SET)
            chunk = os.read(fd, max_bytes)
        except OSError:
            return
        finally:
            os.close(fd)
        end = chunk.rfind(b"\n")
        if end < 0:
            return
        self._artifact_offset += end + 1
        for line in chunk[: end + 1].splitlines():
            try:
                value = json.loads(line)
            except ValueError:
                continue
            self.emit("artifact", data=value if isinstance(value, dict) else {"value": value})


def _tool_detail(name: str, tool_input: dict[str, Any]) -> str | None:
    for key in ("command", "file_path", "path", "pattern", "skill"):
        if isinstance(tool_input.get(key), str):
            return _clip(tool_input[key], 2000)
    return None


def _clip(value: Any, limit: int = 4000) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit] + " …"


def read_events(workspace: Path, max_bytes: int = 64 * 1024 * 1024) -> list[RLMEvent]:
    text = read_text_beneath(workspace, EVENTS_LOG, max_bytes) or ""
    events = []
    for line in text.splitlines():
        try:
            events.append(RLMEvent.model_validate_json(line))
        except ValueError:
            continue
    return events
