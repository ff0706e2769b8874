"""Fixtures of the docker executor tests: a fake broker on a unix socket, a workspace, a spec.

The fake broker is a tiny aiohttp app on a unix socket in a private 0700
folder (as the real broker's): ``GET /fsrlm/v1/health`` answers ``{"ok": true}``
to the run token, and ``POST /v1/messages`` answers any request with one fixed
text, as a stream of server-sent events, so the real CLI can finish a turn.
Every request is recorded.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from fsrlm.executors.base import SandboxSpec
from fsrlm.executors.contract import AgentContract

from fsrlm.broker.endpoint import BrokerEndpoint

FAKE_ANSWER = "pong from the fake broker"


@dataclass
class FakeBroker:
    socket: Path
    token: str
    requests: list[dict] = field(default_factory=list)
    answer: str = FAKE_ANSWER
    port: int = 0  # also on loopback TCP, for backends whose agent runs on the host (local)
    tcp_opened: bool = False


def _authorized(request: web.Request, token: str) -> bool:
    return request.headers.get("x-api-key") == token or request.headers.get("authorization") == f"Bearer {token}"


def _make_app(broker: FakeBroker) -> web.Application:
    async def record(request: web.Request) -> dict:
        body = await request.read()
        entry = {
            "method": request.method,
            "path": request.path,
            "headers": dict(request.headers),
            "json": json.loads(body) if body.strip().startswith(b"{") else None,
        }
        broker.requests.append(entry)
        return entry

    async def health(request: web.Request) -> web.Response:
        await record(request)
        if not _authorized(request, broker.token):
            return web.json_response({"type": "error", "error": {"type": "authentication_error",
                                                                 "message": "bad token", "limit": None}}, status=401)
        return web.json_response({"ok": True})

    async def messages(request: web.Request) -> web.StreamResponse:
        entry = await record(request)
        model = (entry["json"] or {}).get("model", "fake-model")
        resp = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
        await resp.prepare(request)

        async def send(event: str, data: dict) -> None:
            await resp.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())

        usage = {"input_tokens": 10, "output_tokens": 5, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
        await send("message_start", {"type": "message_start", "message": {
            "id": f"msg_{uuid.uuid4().hex[:20]}", "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": None, "stop_sequence": None, "usage": usage}})
        await send("content_block_start", {"type": "content_block_start", "index": 0,
                                           "content_block": {"type": "text", "text": ""}})
        await send("content_block_delta", {"type": "content_block_delta", "index": 0,
                                           "delta": {"type": "text_delta", "text": broker.answer}})
        await send("content_block_stop", {"type": "content_block_stop", "index": 0})
        await send("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn",
                                                                        "stop_sequence": None},
                                     "usage": {"output_tokens": 5}})
        await send("message_stop", {"type": "message_stop"})
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/fsrlm/v1/health", health)
    app.router.add_post("/v1/messages", messages)
    return app


@pytest.fixture
async def fake_broker() -> AsyncIterator[FakeBroker]:
    folder = Path(tempfile.mkdtemp(prefix="fsrlm-b-"))  # short: unix socket paths max out at 107 bytes
    os.chmod(folder, 0o700)
    broker = FakeBroker(socket=folder / "broker.sock", token=secrets.token_urlsafe(24))
    runner = web.AppRunner(_make_app(broker), access_log=None)
    await runner.setup()
    site = web.UnixSite(runner, str(broker.socket))
    await site.start()
    os.chmod(broker.socket, 0o600)
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    broker.port = next(a[1] for a in runner.addresses if isinstance(a, tuple))
    try:
        yield broker
    finally:
        await runner.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A run folder shaped like the orchestrator's (see docs/internals.md)."""
    ws = tmp_path / "run"
    for sub in ("input", "state", "cache/llm", "scratch/scripts", "output", "tools", ".claude", ".agent"):
        (ws / sub).mkdir(parents=True)
    (ws / "input" / "prompt.md").write_text("the input\n")
    (ws / "tools" / "README.md").write_text("tools\n")
    return ws


@pytest.fixture
def make_spec(workspace: Path, fake_broker: FakeBroker) -> Callable[..., SandboxSpec]:
    """``make_spec(timeout_seconds=120, run_id=None, api="anthropic")``: a spec for the fake broker."""

    async def open_tcp() -> int:
        fake_broker.tcp_opened = True
        return fake_broker.port

    def build(timeout_seconds: float = 120.0, run_id: str | None = None, api: str = "anthropic") -> SandboxSpec:
        agent = AgentContract(run_id=run_id or f"test-{uuid.uuid4().hex[:10]}", token=fake_broker.token,
                              subcall_concurrency=4, api=api)
        return SandboxSpec(workspace=workspace, broker=BrokerEndpoint(unix_socket=fake_broker.socket,
                                                                      open_tcp=open_tcp),
                           agent=agent, timeout_seconds=timeout_seconds)

    return build


async def _run_to_end(process, stdin: bytes | None = None) -> tuple[list[bytes], object]:
    if stdin is not None:
        await process.write(stdin)
    await process.close_stdin()
    lines = [line async for line in process.stdout_lines()]
    result = await asyncio.wait_for(process.wait(), 60)
    return lines, result


@pytest.fixture
def run_to_end() -> Callable:
    """``await run_to_end(process, stdin=None)``: feed stdin then EOF, collect stdout lines, wait."""
    return _run_to_end


def _craft_tar(entries: list[tuple[str, object]]) -> bytes:
    """A tar with exactly these entries, however hostile; see ``make_tar``."""
    import io
    import tarfile

    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, spec in entries:
            info = tarfile.TarInfo(name)
            info.mode = 0o644
            data = None
            if isinstance(spec, tuple) and spec[0] in ("symlink", "hardlink"):
                info.type = tarfile.SYMTYPE if spec[0] == "symlink" else tarfile.LNKTYPE
                info.linkname = spec[1]
            elif isinstance(spec, tuple):
                data, info.mode = spec
            elif isinstance(spec, bytes):
                data = spec
            else:
                info.type = {"dir": tarfile.DIRTYPE, "chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE,
                             "fifo": tarfile.FIFOTYPE}[spec]
                info.mode = 0o755 if spec == "dir" else 0o666
                info.devmajor, info.devminor = (1, 3) if spec in ("chr", "blk") else (0, 0)
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return out.getvalue()


@pytest.fixture
def make_tar() -> Callable[[list[tuple[str, object]]], bytes]:
    """Craft an archive: ``make_tar([(name, spec), ...])``; names are used as given (absolute, ``..``).

    spec: ``bytes`` (a file), ``(bytes, mode)``, ``"dir"``, ``("symlink", target)``,
    ``("hardlink", target)``, ``"chr"``, ``"blk"`` or ``"fifo"``.
    """
    return _craft_tar


@pytest.fixture(scope="session")
def remote_tls_host() -> Iterator[object]:
    """A second Docker daemon on 127.0.0.1 behind --tlsverify (certificates made for the session)."""
    from dockerd import SecondDockerd
    from support import gvisor_runtimes

    if os.geteuid() != 0:
        (pytest.fail if os.environ.get("CI") else pytest.skip)("starting a second Docker daemon needs root")
    with SecondDockerd(tls=True, runtimes=gvisor_runtimes()) as daemon:
        yield daemon
