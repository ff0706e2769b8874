"""One interface for every model API the broker can call.

An upstream turns a request into an HTTP exchange (where to send it, which
credentials to add) and nothing else: limits, caching and accounting live in
the broker, retries in ``retry.py``. Request bodies pass through unchanged, so
new API fields work without changes here.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import aiohttp
from yarl import URL

# Headers from the agent that must never reach the upstream: its "key" is the
# run token, and hop-by-hop headers belong to the sandbox's connection.
_DROP_HEADERS = frozenset(
    {"x-api-key", "authorization", "host", "content-length", "connection", "transfer-encoding",
     "x-fsrlm-script", "accept-encoding", "keep-alive", "proxy-authorization"}
)


def forwardable_headers(headers: dict[str, str] | Any) -> dict[str, str]:
    # Lower-cased, so an upstream's setdefault("content-type", …) cannot add a second copy (which breaks SigV4).
    return {k.lower(): v for k, v in headers.items()
            if k.lower() not in _DROP_HEADERS and not k.lower().startswith("x-amz-")}


class Upstream(abc.ABC):
    name: ClassVar[str]

    def __init__(self, session: aiohttp.ClientSession, base_url: str, timeout_seconds: float) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.answered = False  # some response came back in this run: connection failures may be transient
        self.timeout = aiohttp.ClientTimeout(total=timeout_seconds, sock_connect=30)

    @abc.abstractmethod
    def subcall_target(self, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Path and JSON body for a non-streaming Messages call with ``body``."""

    @abc.abstractmethod
    def sign(self, method: str, url: str, headers: dict[str, str], data: bytes) -> dict[str, str]:
        """Return ``headers`` plus this upstream's credentials."""

    async def request(
        self, method: str, path_qs: str, headers: dict[str, str], data: bytes
    ) -> aiohttp.ClientResponse:
        """One attempt; the caller releases the response."""
        url = self.base_url + path_qs
        signed = self.sign(method, url, forwardable_headers(headers), data)
        # encoded=True: send the path exactly as signed (yarl would turn %3A back into ":").
        response = await self.session.request(
            method, URL(url, encoded=True), data=data, headers=signed, timeout=self.timeout, auto_decompress=True
        )
        self.answered = True
        return response
