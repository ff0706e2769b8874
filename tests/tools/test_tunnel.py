"""The broker tunnel's protocol (tools/mux.py ``Mux``), without Docker.

Two ``Mux`` ends joined by an in-memory pipe play the relay in the container
(``accept``) and the orchestrator (``connect`` to a unix socket); the last test
runs ``relay.py --tunnel-stdio`` as a real process and speaks to it over its
stdin/stdout, as ``executors/docker/tunnel.py`` does over Docker's exec stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from fsrlm.tools import mux
from fsrlm.tools.mux import (
    DATA,
    HELLO,
    OPEN,
    VERSION,
    WINDOW,
    FrameReader,
    Mux,
    TunnelError,
    frame,
)
from support import TOOLS_DIR


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    """A unix-socket HTTP server playing the broker: /echo, /big?n=bytes."""
    folder = tempfile.mkdtemp(prefix="fsrlm-tun-", dir="/tmp")

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(body=body, headers={"x-sha": hashlib.sha256(body).hexdigest()})

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"b" * int(request.query["n"]))

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/echo", echo)
    app.router.add_get("/big", big)
    runner = web.AppRunner(app)
    await runner.setup()
    path = os.path.join(folder, "broker.sock")
    await web.UnixSite(runner, path).start()
    yield path
    await runner.cleanup()
    shutil.rmtree(folder, ignore_errors=True)


class _Pipe:
    """One direction of an in-memory byte pipe, cut into odd-sized pieces."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    async def send(self, data: bytes) -> None:
        for i in range(0, len(data), 5000):
            self.queue.put_nowait(data[i:i + 5000])


async def _feed(pipe: _Pipe, mux: Mux) -> None:
    frames = FrameReader()
    while True:
        data = await pipe.queue.get()
        for channel, kind, payload in frames.feed(data):
            await mux.dispatch(channel, kind, payload)


@contextlib.asynccontextmanager
async def _tunnel(unix_path: str) -> AsyncIterator[tuple[int, Mux, Mux]]:
    """A listening Mux (the container's relay) and a connecting Mux (the host), joined; yields the port."""
    to_host, to_box = _Pipe(), _Pipe()
    box = Mux(to_host.send)
    host = Mux(to_box.send, lambda: asyncio.open_unix_connection(unix_path))
    feeders = [asyncio.create_task(_feed(to_box, box)), asyncio.create_task(_feed(to_host, host))]
    server = await asyncio.start_server(box.accept, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], box, host
    finally:
        server.close()
        await box.close()
        await host.close()
        for task in feeders:
            task.cancel()
        await asyncio.gather(*feeders, return_exceptions=True)


async def test_requests_both_ways_and_many_at_once(upstream: str) -> None:
    async with _tunnel(upstream) as (port, box, host), aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=True)) as s:
        async def one(i: int) -> bytes:
            async with s.post(f"http://127.0.0.1:{port}/echo", data=f"request {i}".encode()) as r:
                return await r.read()
        assert await asyncio.gather(*(one(i) for i in range(100))) == [f"request {i}".encode() for i in range(100)]
        body = os.urandom(5 * WINDOW + 123)  # several windows: flow control must keep it moving
        async with s.post(f"http://127.0.0.1:{port}/echo", data=body) as r:
            assert r.headers["x-sha"] == hashlib.sha256(body).hexdigest() and await r.read() == body
        await asyncio.sleep(0.1)
        assert box.open_channels == host.open_channels == 0  # every channel finished on both ends


async def test_half_close_crosses_the_tunnel(tmp_path) -> None:
    async def reply_after_eof(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        data = await r.read()
        w.write(b"got %d bytes" % len(data))
        await w.drain()
        w.close()

    path = tempfile.mktemp(prefix="fsrlm-tun-", dir="/tmp")
    server = await asyncio.start_unix_server(reply_after_eof, path)
    try:
        async with _tunnel(path) as (port, _, _):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"x" * 300_000)
            w.write_eof()
            assert await asyncio.wait_for(r.read(), 10) == b"got 300000 bytes"
            w.close()
    finally:
        server.close()
        os.unlink(path)


async def test_a_stalled_reader_does_not_block_other_channels(upstream: str) -> None:
    async with _tunnel(upstream) as (port, _, _):
        # A client that asks for 20 MB and never reads: its channel fills its window and waits.
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET /big?n=20000000 HTTP/1.1\r\nHost: x\r\n\r\n")
        await w.drain()
        await asyncio.sleep(0.5)
        async with aiohttp.ClientSession() as s, s.post(f"http://127.0.0.1:{port}/echo", data=b"still here") as resp:
            assert await asyncio.wait_for(resp.read(), 5) == b"still here"
        w.close()


async def test_a_peer_ignoring_the_window_loses_the_channel() -> None:
    sent: list[bytes] = []

    async def send(data: bytes) -> None:
        sent.append(data)

    async def connect():
        return await asyncio.open_connection("127.0.0.1", port)

    sink = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)  # accepts, never reads
    port = sink.sockets[0].getsockname()[1]
    host = Mux(send, connect)
    await host.dispatch(7, OPEN, b"")
    await asyncio.sleep(0.1)
    chunk = b"z" * mux.MAX_PAYLOAD
    for _ in range(WINDOW // len(chunk) + 2):  # more than a window, no ACK waited for
        await host.dispatch(7, DATA, chunk)
    assert host.open_channels == 0
    assert frame(7, mux.CLOSE) in sent
    sink.close()


async def test_bad_frames_and_versions_are_refused() -> None:
    with pytest.raises(TunnelError):
        FrameReader().feed(frame(1, 99))
    with pytest.raises(TunnelError):
        FrameReader().feed(mux.FRAME.pack(1, DATA, mux.MAX_PAYLOAD + 1))
    with pytest.raises(TunnelError, match="speaks"):
        await Mux(lambda data: asyncio.sleep(0)).dispatch(0, HELLO, b"fsrlm-tunnel/0")


async def test_refused_local_connection_closes_the_channel() -> None:
    sent: list[bytes] = []

    async def send(data: bytes) -> None:
        sent.append(data)

    async def connect():
        raise ConnectionRefusedError("no broker")

    host = Mux(send, connect)
    await host.dispatch(3, OPEN, b"")
    await asyncio.sleep(0.05)
    assert sent == [frame(3, mux.CLOSE)] and host.open_channels == 0


async def test_tunnel_stdio_process(upstream: str) -> None:
    """The command line the container runs: it waits for HELLO, listens, and carries connections."""
    from dockerd import free_port

    port = free_port()
    ready = tempfile.mktemp(prefix="fsrlm-tun-ready-", dir="/tmp")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-I", str(TOOLS_DIR / "relay.py"), "--tunnel-stdio", "--listen", f"127.0.0.1:{port}",
        "--ready-file", ready, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    assert proc.stdin and proc.stdout and proc.stderr

    async def send(data: bytes) -> None:
        proc.stdin.write(data)
        await proc.stdin.drain()

    host = Mux(send, lambda: asyncio.open_unix_connection(upstream))

    async def pump() -> None:
        frames = FrameReader()
        while data := await proc.stdout.read(65536):
            for channel, kind, payload in frames.feed(data):
                await host.dispatch(channel, kind, payload)

    reader = asyncio.create_task(pump())
    try:
        await asyncio.sleep(0.3)
        assert not os.path.exists(ready)  # nothing happens before the host's HELLO
        await host.send_frame(0, HELLO, VERSION)
        await asyncio.wait_for(host.hello.wait(), 10)
        assert os.path.exists(ready)
        assert b"relay ready" in await asyncio.wait_for(proc.stderr.readline(), 5)
        async with aiohttp.ClientSession() as s:
            body = os.urandom(3 * 1024 * 1024)
            async with s.post(f"http://127.0.0.1:{port}/echo", data=body) as r:
                assert await r.read() == body
        proc.stdin.close()  # end of file: the relay stops
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await host.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(ready)
