"""Token usage read from upstream answers as they stream through the broker.

The root agent's traffic is passed through byte for byte; a ``UsageSniffer``
watches the bytes go by and picks out the usage figures, without buffering the
stream. It understands Anthropic SSE (``data: {...}`` lines), plain JSON
answers, and Bedrock event streams (whose frames carry base64 Anthropic events).
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from pydantic import BaseModel

_BEDROCK_FRAME = re.compile(rb'"bytes":"([A-Za-z0-9+/=]+)"')
_MAX_LINE = 1 << 20  # a longer "line" is content, not an event header worth parsing


class Usage(BaseModel):
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    model: str | None = None
    stop_reason: str | None = None


def usage_from_message(message: dict[str, Any]) -> Usage:
    u = message.get("usage") or {}
    return Usage(
        input_tokens=int(u.get("input_tokens") or 0),
        output_tokens=int(u.get("output_tokens") or 0),
        cache_creation_input_tokens=int(u.get("cache_creation_input_tokens") or 0),
        cache_read_input_tokens=int(u.get("cache_read_input_tokens") or 0),
        model=message.get("model"),
        stop_reason=message.get("stop_reason"),
    )


class UsageSniffer:
    def __init__(self, content_type: str) -> None:
        self.usage = Usage()
        self._sse = "event-stream" in content_type
        self._eventstream = "amazon.eventstream" in content_type
        self._buffer = b""
        self._json_parts: list[bytes] = []
        self._json_size = 0

    def feed(self, chunk: bytes) -> None:
        if self._sse:
            self._feed_lines(chunk)
        elif self._eventstream:
            self._buffer = (self._buffer + chunk)[-_MAX_LINE:]
            end = 0
            for match in _BEDROCK_FRAME.finditer(self._buffer):
                self._event(self._decode_b64(match.group(1)))
                end = match.end()
            # keep only an unterminated tail: a started frame, or what may be half a '"bytes":"' marker
            tail = self._buffer[end:]
            last = tail.rfind(b'"bytes":"')
            self._buffer = tail[last:] if last >= 0 else tail[-8:]
        elif self._json_size < _MAX_LINE * 8:
            self._json_parts.append(chunk)
            self._json_size += len(chunk)

    def finish(self) -> Usage:
        if self._json_parts:
            try:
                self.usage = usage_from_message(json.loads(b"".join(self._json_parts)))
            except (ValueError, AttributeError):
                pass
        return self.usage

    def _feed_lines(self, chunk: bytes) -> None:
        data = self._buffer + chunk
        lines = data.split(b"\n")
        self._buffer = lines.pop()
        if len(self._buffer) > _MAX_LINE:
            self._buffer = b""
        for line in lines:
            if line.startswith(b"data:"):
                try:
                    self._event(json.loads(line[5:]))
                except ValueError:
                    continue

    @staticmethod
    def _decode_b64(raw: bytes) -> Any:
        try:
            return json.loads(base64.b64decode(raw))
        except (ValueError, TypeError):
            return None

    def _event(self, event: Any) -> None:
        if not isinstance(event, dict):
            return
        kind = event.get("type")
        if kind == "message_start":
            start = usage_from_message(event.get("message") or {})
            self.usage = start.model_copy(update={"output_tokens": max(start.output_tokens, self.usage.output_tokens)})
        elif kind == "message_delta":
            u = event.get("usage") or {}
            if u.get("output_tokens") is not None:
                self.usage.output_tokens = int(u["output_tokens"])
            if u.get("input_tokens"):
                self.usage.input_tokens = int(u["input_tokens"])
            stop = (event.get("delta") or {}).get("stop_reason")
            if stop:
                self.usage.stop_reason = stop
