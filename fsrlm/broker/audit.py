"""The broker's audit log: one JSON line per model call in ``state/subcalls.jsonl``.

The broker keeps its own copy of every record in memory; metrics come from that
copy, never from the file (which the agent could edit).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from fsrlm.safe_fs import append_beneath

logger = logging.getLogger(__name__)

AUDIT_LOG = "state/subcalls.jsonl"


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


class AuditLog:
    def __init__(self, workspace: Path, listener: Callable[[CallRecord], None] | None = None) -> None:
        self.workspace = workspace
        self.records: list[CallRecord] = []
        self.listener = listener

    def add(self, record: CallRecord) -> None:
        self.records.append(record)
        if self.listener is not None:
            self.listener(record)
        try:
            append_beneath(self.workspace, AUDIT_LOG, (record.model_dump_json() + "\n").encode())
        except OSError as e:
            # The agent may have made the file unwritable; the in-memory copy is authoritative.
            logger.warning("audit log write failed: %s", e)
