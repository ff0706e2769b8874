"""tools/relay.py: loopback TCP piped to a unix-socket HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import io
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import ModuleType

import aiohttp
import pytest
from aiohttp import web

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"fsrlm_tools_{name}", TOOLS / f"{name}.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


relay = _load("relay")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def sock_dir() -> AsyncIterator[str]:
    path = tempfile.mkdtemp(prefix="fsrlm-relay-", dir="/tmp")  # short: unix paths max ~107 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def _ping(request: web.Request) -> web.Response:
    return web.Response(text="pong")


async def _echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.Response(body=body, headers={"x-sha": hashlib.sha256(body).hexdigest()})


def _together_handler() -> Callable[[web.Request], Awaitable[web.Response]]:
    """A handler that answers only once ``n`` requests are waiting in it at the same time."""
    waiting = 0
    all_in = asyncio.Event()

    async def together(request: web.Request) -> web.Response:
        nonlocal waiting
        waiting += 1
        if waiting >= int(request.query["n"]):
            all_in.set()
        try:
            await asyncio.wait_for(all_in.wait(), 10)
        except TimeoutError:
            return web.Response(status=504, text="not concurrent")
        return web.Response(text=request.query["i"])

    return together


@pytest.fixture
async def upstream(sock_dir: str) -> AsyncIterator[str]:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/ping", _ping)
    app.router.add_post("/echo", _echo)
    app.router.add_get("/together", _together_handler())
    runner = web.AppRunner(app)
    await runner.setup()
    path = os.path.join(sock_dir, "broker.sock")
    await web.UnixSite(runner, path).start()
    yield path
    await runner.cleanup()


@contextlib.asynccontextmanager
async def _relay(unix_path: str) -> AsyncIterator[str]:
    port = _free_port()
    ready = asyncio.Event()
    task = asyncio.create_task(relay.serve("127.0.0.1", port, unix_path, ready))
    await asyncio.wait_for(ready.wait(), 5)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_round_trip(upstream: str) -> None:
    async with _relay(upstream) as url, aiohttp.ClientSession() as s:
        async with s.get(f"{url}/ping") as r:
            assert r.status == 200 and await r.text() == "pong"
        async with s.post(f"{url}/echo", data=b"hello") as r:  # same kept-alive connection
            assert await r.read() == b"hello"


async def test_concurrent_requests(upstream: str) -> None:
    async with _relay(upstream) as url, aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=True)) as s:
        async def one(i: int) -> str:
            async with s.get(f"{url}/together", params={"i": str(i), "n": "100"}) as r:
                return await r.text()
        out = await asyncio.gather(*(one(i) for i in range(100)))
        assert out == [str(i) for i in range(100)]  # all 100 were open through the relay at once


async def test_large_body_both_ways(upstream: str) -> None:
    body = os.urandom(10 * 1024 * 1024)
    async with _relay(upstream) as url, aiohttp.ClientSession() as s:
        async with s.post(f"{url}/echo", data=io.BytesIO(body)) as r:
            assert r.headers["x-sha"] == hashlib.sha256(body).hexdigest()
            assert await r.read() == body


async def test_half_close_is_passed_on(sock_dir: str) -> None:
    async def reply_after_eof(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        data = await r.read()  # until the client's half-close arrives
        w.write(b"got %d bytes" % len(data))
        await w.drain()
        w.close()

    path = os.path.join(sock_dir, "raw.sock")
    server = await asyncio.start_unix_server(reply_after_eof, path)
    try:
        async with _relay(path) as url:
            r, w = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))
            w.write(b"x" * 300_000)
            w.write_eof()
            assert await asyncio.wait_for(r.read(), 5) == b"got 300000 bytes"
            w.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_missing_socket_drops_connection_and_keeps_serving(sock_dir: str, upstream: str) -> None:
    async with _relay(os.path.join(sock_dir, "absent.sock")) as url:
        r, w = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))
        w.write(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        with contextlib.suppress(ConnectionResetError):
            assert await asyncio.wait_for(r.read(), 5) == b""
        w.close()
    async with _relay(upstream) as url, aiohttp.ClientSession() as s:
        async with s.get(f"{url}/ping") as resp:
            assert await resp.text() == "pong"


async def test_cancel_drops_open_connections(upstream: str) -> None:
    async with _relay(upstream) as url:
        r, w = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))
        w.write(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"pong" in await asyncio.wait_for(r.read(1000), 5)
    with contextlib.suppress(ConnectionResetError):  # relay stopped: the idle connection is gone
        assert await asyncio.wait_for(r.read(), 5) == b""
    w.close()


async def test_command_line(upstream: str) -> None:
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(TOOLS / "relay.py"), "--listen", f"127.0.0.1:{port}", "--unix", upstream,
        stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stderr is not None
        line = await asyncio.wait_for(proc.stderr.readline(), 10)
        assert line.decode().strip() == "relay ready"
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/ping") as r:
            assert await r.text() == "pong"
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0  # SIGTERM is a clean stop


async def test_bad_listen_argument() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(TOOLS / "relay.py"), "--listen", "nonsense", "--unix", "/x",
        stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 2 and b"HOST:PORT" in err


async def test_a_fresh_connection_per_request_round_trips(upstream: str) -> None:
    """A fresh connection per request (as llm_client makes), 200 times: every answer arrives whole.

    What the relay costs per request is measured by ``make bench`` (the runs section), not here.
    """
    async def once(session: aiohttp.ClientSession, url: str) -> bytes:
        async with session.get(url) as r:
            assert r.status == 200
            return await r.read()

    async with _relay(upstream) as url, \
            aiohttp.ClientSession(connector=aiohttp.UnixConnector(upstream, force_close=True)) as direct_s, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as relay_s:
        for _ in range(200):
            assert await once(relay_s, f"{url}/ping") == await once(direct_s, "http://broker/ping")
