"""A cap on the broker's open connections.

The sandbox can open connections to the broker's socket at will, through the
relay or straight to the mounted socket, and hold them half-open (slowloris).
Each one is a file descriptor of the orchestrator, which also needs descriptors
for the upstream, the cache, the workspace and Docker; left unbounded, a flood
makes it fail with ``EMFILE`` — this run and any other run in the same process.

Past ``max_connections`` the broker closes the oldest connection that is not
handling a request (idle keep-alive, or still waiting for a request head);
when every connection is busy, it closes the new one. Legitimate clients open a
connection per request (``llm_client``) or keep one or two alive (the CLI), far
below the cap.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

logger = logging.getLogger(__name__)


def _busy(handler: RequestHandler) -> bool:
    # aiohttp marks a handler while it runs a request; without the flag every connection counts as idle.
    return bool(getattr(handler, "_request_in_progress", False))


def _open(handler: RequestHandler) -> bool:
    return handler.transport is not None  # force_close() drops it at once; the handler lingers a little


def limit_connections(server: web.Server, max_connections: int) -> None:
    """Make ``server`` (an ``AppRunner``'s) keep at most ``max_connections`` connections open."""
    made = server.connection_made
    warned = False

    def connection_made(handler: RequestHandler, transport) -> None:
        nonlocal warned
        made(handler, transport)
        open_now = [h for h in server.connections if _open(h)]  # oldest first
        if len(open_now) <= max_connections:
            return
        victim = next((h for h in open_now if h is not handler and not _busy(h)), handler)
        victim.force_close()
        if not warned:
            warned = True
            logger.warning("broker: more than %d connections from the sandbox; closing idle ones", max_connections)

    server.connection_made = connection_made  # type: ignore[method-assign]
