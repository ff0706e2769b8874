"""The broker's audit log: one JSON line per model call in ``state/subcalls.jsonl``.

The broker keeps its own copy of every record in memory; metrics come from that
copy, never from the file (which the agent could edit).

Refusals cost nothing upstream, so a sandbox can make them as fast as it likes (20,000
refused calls once wrote a 21 MB log and as many records in memory). They are counted
per limit instead: the first ``REFUSALS_LOGGED_PER_LIMIT`` refusals of each limit get a
record of their own; after that one record per (kind, limit) stands for the rest, its
``count`` growing, and it is written once, with its final count, when the log is closed.
The file is capped too: past ``MAX_LOG_BYTES`` no refusal is written any more, and one line
says so; records of calls that went upstream (bounded by the budget and the call caps)
are always written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from fsrlm.safe_fs import BeneathAppender

logger = logging.getLogger(__name__)

AUDIT_LOG = "state/subcalls.jsonl"
REFUSALS_LOGGED_PER_LIMIT = 20
MAX_LOG_BYTES = 4 * 1024 * 1024


class CallRecord(BaseModel):
    ts: float = Field(default_factory=time.time)
    kind: Literal["root", "subcall", "rlm_query"]
    script: str
    model: str
    status: Literal["ok", "cached", "refused", "error"]
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    limit: str | None = None
    error: str | None = None
    # Subcalls only, for the viewer: the response-cache key (the answer is mirrored in
    # cache/llm/<cache_key>.json) and the start of the prompt (last user message).
    cache_key: str | None = None
    prompt_preview: str | None = None
    # How many calls this record stands for: 1, or, for a refusal summary, the refusals it counts.
    count: int = 1


class AuditLog:
    def __init__(self, workspace: Path, listener: Callable[[CallRecord], None] | None = None) -> None:
        self.workspace = workspace
        self.records: list[CallRecord] = []
        self.listener = listener
        self.refusals: dict[tuple[str, str], int] = {}  # (kind, limit) -> refusals so far
        self._summaries: dict[tuple[str, str], CallRecord] = {}
        self._bytes = 0
        self._full = False
        self._closed = False
        self._file = BeneathAppender(workspace, AUDIT_LOG)  # one open per run, not one per record

    def add(self, record: CallRecord) -> None:
        if record.status == "refused" and record.cost_usd == 0:
            key = (record.kind, record.limit or "")
            seen = self.refusals.get(key, 0)
            self.refusals[key] = seen + 1
            if seen >= REFUSALS_LOGGED_PER_LIMIT:
                self._count(key, record)
                return
        self.records.append(record)
        if self.listener is not None:
            self.listener(record)
        if record.status != "refused" or not self._full:
            self._write(record)

    def _count(self, key: tuple[str, str], record: CallRecord) -> None:
        summary = self._summaries.get(key)
        if summary is None:
            summary = record.model_copy(update={
                "count": 0, "script": "(refusals counted, not logged)",
                "error": f"after {REFUSALS_LOGGED_PER_LIMIT} refusals of {record.limit}, the rest are counted in "
                         f"this record; the last: {record.error}",
                "cache_key": None, "prompt_preview": None,
            })
            self._summaries[key] = summary
            self.records.append(summary)
        summary.count += 1
        summary.ts = record.ts

    def close(self) -> None:
        """Write the refusal summaries (once; the broker calls this when it stops)."""
        if self._closed:
            return
        self._closed = True
        for summary in self._summaries.values():
            self._write(summary, always=True)
        self._file.close()

    def _write(self, record: CallRecord, *, always: bool = False) -> None:
        line = (record.model_dump_json(exclude_defaults=False) + "\n").encode()
        if not always and self._bytes + len(line) > MAX_LOG_BYTES:
            if not self._full:
                self._full = True
                note = CallRecord(kind=record.kind, script="(audit log)", model=record.model, status="refused",
                                  count=0, error=f"the audit log reached {MAX_LOG_BYTES} bytes: refusals are no "
                                                 "longer recorded here, only counted (metrics have them all)")
                self._append((note.model_dump_json() + "\n").encode())
            if record.status == "refused":
                return
        self._append(line)

    def _append(self, line: bytes) -> None:
        self._bytes += len(line)
        try:
            self._file.append(line)
        except OSError as e:
            # The agent may have made the file unwritable; the in-memory copy is authoritative.
            logger.warning("audit log write failed: %s", e)
