"""A hijacked Docker connection (attach or exec), driven from the event loop.

``APIClient.attach_socket`` and ``exec_start(socket=True)`` hand back the raw
connection under an upgraded HTTP request: a unix or TCP socket, or a TLS
socket for a remote engine with ``--tlsverify``. ``AsyncSocket`` reads and
writes either kind without threads: plain sockets through ``loop.sock_recv`` /
``loop.sock_sendall``; TLS sockets in non-blocking mode, waiting for the file
descriptor whenever OpenSSL wants to read or write. Everything happens on the
loop's thread, so the TLS state is never used from two threads at once.

``shutdown_write`` half-closes the connection (the container sees end of
file on stdin). For TLS it shuts down the TCP connection *beneath* the TLS
layer, as the docker command line does, so the read side keeps working.

``docker_frames`` splits Docker's multiplexed output: frames of an 8-byte
header ``[stream, 0, 0, 0, size (big endian u32)]`` then ``size`` bytes; stream
1 is stdout, 2 is stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
from collections.abc import AsyncIterator

from fsrlm.errors import SandboxError

DOCKER_HEADER = struct.Struct(">BxxxL")
STDOUT, STDERR = 1, 2
_RECV = 256 * 1024


def socket_of(hijacked) -> socket.socket:
    """The socket under what ``attach_socket`` / ``exec_start(socket=True)`` returned."""
    sock = hijacked if isinstance(hijacked, socket.socket) else getattr(hijacked, "_sock", None)
    if not isinstance(sock, socket.socket):
        raise SandboxError(
            f"Docker returned a {type(hijacked).__name__} for an attached stream, not a socket; "
            "reach the engine over unix://, tcp:// (TLS or not) or ssh://."
        )
    return sock


class AsyncSocket:
    """Non-blocking reads and writes on a plain or TLS socket, from one event loop."""

    def __init__(self, hijacked) -> None:
        self._keep = hijacked  # holds the HTTP response, and with it the connection
        self._sock = socket_of(hijacked)
        self._sock.setblocking(False)
        self._tls = isinstance(self._sock, ssl.SSLSocket)
        self._loop = asyncio.get_running_loop()
        self._fd = self._sock.fileno()
        self._waiting: dict[bool, asyncio.Future[None]] = {}
        self.closed = False

    async def recv(self, size: int = _RECV) -> bytes:
        """Up to ``size`` bytes; ``b""`` at end of stream."""
        if not self._tls:
            return await self._loop.sock_recv(self._sock, size)
        while True:
            try:
                return self._sock.recv(size)
            except ssl.SSLWantReadError:
                await self._wait(writable=False)
            except ssl.SSLWantWriteError:
                await self._wait(writable=True)
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""

    async def sendall(self, data: bytes | bytearray | memoryview) -> None:
        if not self._tls:
            await self._loop.sock_sendall(self._sock, data)
            return
        view = memoryview(data)
        while view:
            try:
                sent = self._sock.send(view)
            except ssl.SSLWantWriteError:
                await self._wait(writable=True)
                continue
            except ssl.SSLWantReadError:
                await self._wait(writable=False)
                continue
            view = view[sent:]

    def _wait(self, *, writable: bool) -> asyncio.Future[None]:
        """A future done when the descriptor is readable (or writable); shared by every waiter."""
        future = self._waiting.get(writable)
        if future is None or future.done():
            if self.closed:
                raise OSError("the connection is closed")
            future = self._loop.create_future()
            self._waiting[writable] = future
            add, remove = (
                (self._loop.add_writer, self._loop.remove_writer)
                if writable
                else (self._loop.add_reader, self._loop.remove_reader)
            )

            def ready() -> None:
                remove(self._fd)
                if not future.done():
                    future.set_result(None)

            add(self._fd, ready)
        return asyncio.shield(future)

    def shutdown_write(self) -> None:
        """Half-close: the other end reads end of file; reading here goes on."""
        with contextlib.suppress(OSError):
            socket.socket.shutdown(self._sock, socket.SHUT_WR)  # beneath TLS, never a TLS shutdown

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(OSError("the connection was closed"))
                future.exception()  # retrieved: no "never retrieved" warning
        with contextlib.suppress(OSError):
            self._sock.close()
        with contextlib.suppress(Exception):
            self._keep.close()


async def docker_frames(conn: AsyncSocket) -> AsyncIterator[tuple[int, bytes]]:
    """Yield ``(stream, payload)`` from Docker's multiplexed output until it ends."""
    buf = bytearray()
    while True:
        data = await conn.recv(_RECV)
        if not data:
            return
        buf += data
        start = 0
        while len(buf) - start >= DOCKER_HEADER.size:
            stream, size = DOCKER_HEADER.unpack_from(buf, start)
            end = start + DOCKER_HEADER.size + size
            if len(buf) < end:
                break
            yield stream, bytes(buf[start + DOCKER_HEADER.size : end])
            start = end
        del buf[:start]
