"""Token usage read from upstream answers, and the worst case of a call before it is made.

The root agent's traffic is passed through byte for byte; a ``UsageSniffer``
watches the bytes go by and picks out the usage figures, without buffering the
stream. It understands Anthropic SSE (``data: {...}`` lines), plain JSON answers
(Anthropic's ``usage`` and Bedrock Converse's camelCase ``usage``), and Bedrock
event streams (whose frames carry base64 Anthropic events).

A usage is *complete* only when the answer said how much it used, all of it:
a JSON answer parsed whole with a usage object, or a stream that reached its
``message_delta`` usage and ended cleanly. Anything else — a cut stream, a JSON
answer larger than ``MAX_JSON_BYTES``, a shape nobody knows — gives ``None``,
and the ledger then charges the call its full reservation (``limits.py``).
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any, Literal

from pydantic import BaseModel

_BEDROCK_FRAME = re.compile(rb'"bytes":"([A-Za-z0-9+/=]+)"')
_MAX_LINE = 1 << 20  # a longer "line" is content, not an event header worth parsing
MAX_JSON_BYTES = 8 * _MAX_LINE  # a JSON answer read for its usage; a bigger one is charged its reservation

# A call's input, in tokens, at most (the reservation's input side), from what the broker can see:
# at most one token per byte of the request (byte-level tokenizers; JSON escapes only add bytes),
# plus what the API adds that is not in the body (the tool-use system prompt, message framing), plus
# media whose tokens do not follow from their bytes: an image is resized to ~1.15 megapixels (about
# 1,600 tokens) however small its file, a PDF has up to 100 pages, each a page image and its text.
OVERHEAD_TOKENS = 1_000
IMAGE_TOKENS = 1_600
DOCUMENT_TOKENS = 100 * (IMAGE_TOKENS + 3_000)
# max_tokens when a request names none (Bedrock Converse makes it optional): the largest output
# any Claude model can give (128k with the output-128k beta).
DEFAULT_MAX_OUTPUT_TOKENS = 128_000


class Usage(BaseModel):
    input_tokens: int = 0  # uncached input (Anthropic's meaning)
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_write_1h_tokens: int = 0  # of cache_creation_input_tokens, those written to the 1-hour cache
    model: str | None = None
    stop_reason: str | None = None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def usage_from_message(message: dict[str, Any]) -> Usage:
    u = message.get("usage") or {}
    if not isinstance(u, dict):
        u = {}
    if "inputTokens" in u or "outputTokens" in u:  # Bedrock Converse
        return Usage(
            input_tokens=_int(u.get("inputTokens")), output_tokens=_int(u.get("outputTokens")),
            cache_creation_input_tokens=_int(u.get("cacheWriteInputTokens")),
            cache_read_input_tokens=_int(u.get("cacheReadInputTokens")),
            model=None, stop_reason=message.get("stopReason") if isinstance(message.get("stopReason"), str) else None,
        )
    creation = u.get("cache_creation") if isinstance(u.get("cache_creation"), dict) else {}
    model = message.get("model")
    stop = message.get("stop_reason")
    return Usage(
        input_tokens=_int(u.get("input_tokens")),
        output_tokens=_int(u.get("output_tokens")),
        cache_creation_input_tokens=_int(u.get("cache_creation_input_tokens")),
        cache_read_input_tokens=_int(u.get("cache_read_input_tokens")),
        cache_write_1h_tokens=_int(creation.get("ephemeral_1h_input_tokens")),
        model=model if isinstance(model, str) else None,
        stop_reason=stop if isinstance(stop, str) else None,
    )


def read_usage(message: Any) -> Usage | None:
    """The usage of a whole answer (Anthropic Messages or Bedrock Converse), or ``None`` when it has none."""
    if not isinstance(message, dict):
        return None
    u = message.get("usage")
    if not isinstance(u, dict):
        return None
    anthropic = isinstance(u.get("input_tokens"), int) and isinstance(u.get("output_tokens"), int)
    converse = isinstance(u.get("inputTokens"), int) and isinstance(u.get("outputTokens"), int)
    return usage_from_message(message) if anthropic or converse else None


# -- the request's worst case -------------------------------------------------------------------


class RequestTerms(BaseModel):
    """What a request commits to, as far as money goes (the policy's parsed request will give these)."""

    model: str | None = None
    max_tokens: int | None = None
    images: int = 0
    documents: int = 0
    cache: Literal["none", "5m", "1h"] = "none"  # the dearest prompt-cache write a cache_control asks for


def request_terms(data: bytes) -> RequestTerms:
    """Model, ``max_tokens`` and media blocks of a Messages (or Converse) request body; blanks when unparsable."""
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
        return RequestTerms()
    return terms_of(body)


def terms_of(body: Any) -> RequestTerms:
    """``request_terms`` of a body already parsed (a subcall's, which the broker built itself)."""
    if not isinstance(body, dict):
        return RequestTerms()
    model = body.get("model") if isinstance(body.get("model"), str) else None
    max_tokens = body.get("max_tokens")
    config = body.get("inferenceConfig")
    if max_tokens is None and isinstance(config, dict):
        max_tokens = config.get("maxTokens")
    images = documents = 0
    cache = "none"
    stack: list[Any] = [body]
    while stack:  # no recursion: the body came from the sandbox
        item = stack.pop()
        if isinstance(item, dict):
            kind = item.get("type")
            if kind == "image" or "image" in item:  # Anthropic {"type": "image"}; Converse {"image": {...}}
                images += 1
            if kind == "document" or "document" in item:
                documents += 1
            control = item.get("cache_control", item.get("cachePoint"))
            if control is not None:  # cache writes happen only at these breakpoints
                ttl = control.get("ttl") if isinstance(control, dict) else None
                cache = "5m" if ttl in (None, "5m") and cache != "1h" else "1h"
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return RequestTerms(model=model, max_tokens=_int(max_tokens) or None, images=images, documents=documents,
                        cache=cache)


def input_ceiling(body_bytes: int, terms: RequestTerms | None = None, context_tokens: int | None = None) -> int:
    """At most how many input tokens a request of ``body_bytes`` can be billed for (see the constants);
    ``context_tokens``: the most the model accepts (a longer prompt is refused, unbilled), when known."""
    terms = terms or RequestTerms()
    ceiling = body_bytes + OVERHEAD_TOKENS + terms.images * IMAGE_TOKENS + terms.documents * DOCUMENT_TOKENS
    return min(ceiling, context_tokens) if context_tokens else ceiling


# -- streaming answers ----------------------------------------------------------------------------


class UsageSniffer:
    def __init__(self, content_type: str) -> None:
        self.usage = Usage()
        self._sse = "event-stream" in content_type
        self._eventstream = "amazon.eventstream" in content_type
        self._buffer = b""
        self._json_parts: list[bytes] = []
        self._json_size = 0
        self._started = False  # message_start seen (stream) …
        self._ended = False  # … and message_delta's final usage

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
        else:
            self._json_size += len(chunk)
            if self._json_size <= MAX_JSON_BYTES:
                self._json_parts.append(chunk)
            else:
                self._json_parts = []  # too big to read for its usage: it will be charged its reservation

    def finish(self) -> Usage | None:
        """The answer's complete usage, or ``None`` (see the module docstring)."""
        if self._sse or self._eventstream:
            return self.usage if self._started and self._ended else None
        if not self._json_parts or self._json_size > MAX_JSON_BYTES:
            return None
        try:
            found = read_usage(json.loads(b"".join(self._json_parts)))
        except (ValueError, RecursionError):
            return None
        if found is not None:
            self.usage = found
        return found

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
                except (ValueError, RecursionError):
                    continue

    @staticmethod
    def _decode_b64(raw: bytes) -> Any:
        try:
            return json.loads(base64.b64decode(raw))
        except (ValueError, TypeError, RecursionError):
            return None

    def _event(self, event: Any) -> None:
        if not isinstance(event, dict):
            return
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") if isinstance(event.get("message"), dict) else {}
            start = usage_from_message(message)
            self.usage = start.model_copy(update={"output_tokens": max(start.output_tokens, self.usage.output_tokens)})
            self._started = True
        elif kind == "message_delta":
            u = event.get("usage") if isinstance(event.get("usage"), dict) else {}
            if isinstance(u.get("output_tokens"), int):
                self.usage.output_tokens = _int(u["output_tokens"])
                self._ended = True
            for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"):
                if _int(u.get(key)):
                    setattr(self.usage, key, _int(u[key]))
            delta = event.get("delta") if isinstance(event.get("delta"), dict) else {}
            stop = delta.get("stop_reason")
            if isinstance(stop, str):
                self.usage.stop_reason = stop
