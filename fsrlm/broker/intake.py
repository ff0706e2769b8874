"""Bounded intake: how many request-body bytes the broker holds at once, and for how long it waits.

Without a bound, 40 concurrent 32 MB root requests from the sandbox grew the
orchestrator from 81 MB to 1.37 GB: each connection's body was read in full
before anything looked at it. Here a request first *reserves* its body's size
(its ``Content-Length``, or the per-request cap when it is chunked) against one
budget shared by every connection, before a byte of the body is read; the
reservation is held until its call is answered (the body, its parsed form and
the rebuilt request live that long) and released after. A request that cannot
be served yet waits without reading, so the kernel's socket buffers, not the
broker, hold what the sandbox pushes. Once granted, the body must arrive within
``read_timeout`` seconds (a body trickled one byte a minute does not keep its
reservation).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web


class IntakeLimiter:
    def __init__(self, max_bytes_in_flight: int, max_request_bytes: int, read_timeout: float) -> None:
        if max_bytes_in_flight < max_request_bytes:
            raise ValueError("max_bytes_in_flight must hold at least one request of max_request_bytes")
        self.capacity = max_bytes_in_flight
        self.max_request_bytes = max_request_bytes
        self.read_timeout = read_timeout
        self.in_flight = 0
        self._freed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def body(self, request: web.Request) -> AsyncIterator[None]:
        """Hold a reservation for ``request``'s body while the block runs; the body is read inside it.

        Requests without a body (GET, ``Content-Length: 0``) reserve nothing. A declared size over
        the per-request cap is refused at once (413), before anything is read or waited for.
        """
        if not request.body_exists:
            yield
            return
        declared = request.content_length
        if declared is not None and declared > self.max_request_bytes:
            raise web.HTTPRequestEntityTooLarge(max_size=self.max_request_bytes, actual_size=declared)
        size = self.max_request_bytes if declared is None else declared
        async with self._freed:
            await self._freed.wait_for(lambda: self.in_flight + size <= self.capacity)
            self.in_flight += size
        try:
            try:
                async with asyncio.timeout(self.read_timeout):
                    await request.read()  # aiohttp keeps it: the handler's read() returns this copy
            except TimeoutError:
                raise web.HTTPRequestTimeout(reason=f"request body not received within {self.read_timeout:g} s") from None
            yield
        finally:
            async with self._freed:
                self.in_flight -= size
                self._freed.notify_all()
