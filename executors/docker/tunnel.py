"""The broker tunnel of the ``remote-docker`` executor: no network, no mounted socket.

A remote Docker host cannot mount the broker's unix socket, and the container
keeps ``network_mode=none``. Instead ``BrokerTunnel`` starts
``python3 -I /opt/fsrlm/relay.py --tunnel-stdio`` as an exec in the agent's
container and holds that exec's raw stream (``exec_start(socket=True)``; plain
or TLS, see ``stream.py``). Inside, the relay listens on ``127.0.0.1:8080`` and
carries each connection as a channel of the framed protocol described in
``tools/mux.py`` (the same ``Mux`` class runs on both ends). Here, every
channel the relay opens becomes a fresh connection to ``spec.broker.unix_socket``.

Bytes to the relay go raw to the exec's stdin; what it writes comes back in
Docker's 8-byte stream headers (stdout: tunnel frames; stderr: its log).

The image's entrypoint, with ``FSRLM_RELAY_MODE=tunnel``, waits for the relay's
ready file before it starts the agent, so the agent never sees a closed port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

from fsrlm.executors.docker import hardening
from fsrlm.executors.docker.errors import EngineRef, docker_errors
from fsrlm.executors.docker.stream import STDERR, STDOUT, AsyncSocket, docker_frames
from fsrlm.tools.mux import HELLO, VERSION, FrameReader, Mux, TunnelError

from fsrlm.errors import SandboxError

logger = logging.getLogger(__name__)

RELAY_PATH = "/opt/fsrlm/relay.py"
READY_FILE = "/tmp/.fsrlm-tunnel-ready"
_STDERR_TAIL = 4096


def tunnel_command() -> list[str]:
    listen = hardening.RELAY_URL.removeprefix("http://")
    return ["python3", "-I", "-u", RELAY_PATH, "--tunnel-stdio", "--listen", listen, "--ready-file", READY_FILE]


class BrokerTunnel:
    """One container's tunnel to the broker. ``start`` it after the container started; ``close`` is idempotent."""

    def __init__(self, api, container_id: str, broker_socket: Path, *, user: str, engine: EngineRef,
                 on_lost: Callable[[str], None] | None = None) -> None:
        self._api = api
        self._engine = engine
        self._container_id = container_id
        self._broker_socket = broker_socket
        self._user = user
        self._on_lost = on_lost
        self._conn: AsyncSocket | None = None
        self._mux: Mux | None = None
        self._pump: asyncio.Task[None] | None = None
        self._stderr = bytearray()
        self._closing = False
        self.ended = asyncio.Event()

    @property
    def stderr_tail(self) -> str:
        return bytes(self._stderr[-_STDERR_TAIL:]).decode("utf-8", errors="replace").strip()

    async def start(self, timeout: float = 30.0) -> None:
        """Start the relay in the container and wait until it listens."""
        with docker_errors(f"start the broker tunnel in container {self._container_id[:12]}", self._engine):
            hijacked = await asyncio.to_thread(self._exec)
        self._conn = AsyncSocket(hijacked)
        self._mux = Mux(self._send, self._connect)
        self._pump = asyncio.ensure_future(self._read())
        await self._mux.send_frame(0, HELLO, VERSION)
        hello = asyncio.ensure_future(self._mux.hello.wait())
        ended = asyncio.ensure_future(self.ended.wait())
        try:
            await asyncio.wait([hello, ended], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            hello.cancel()
            ended.cancel()
        if not self._mux.hello.is_set():
            detail = self.stderr_tail or "no output"
            await self.close()
            raise SandboxError(f"The broker tunnel in container {self._container_id[:12]} did not start "
                               f"within {timeout:g} s ({detail}).")

    def _exec(self):
        exec_id = self._api.exec_create(self._container_id, tunnel_command(), stdin=True, stdout=True,
                                        stderr=True, tty=False, user=self._user)["Id"]
        return self._api.exec_start(exec_id, socket=True, tty=False)

    async def _send(self, data: bytes) -> None:
        assert self._conn is not None
        await self._conn.sendall(data)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_unix_connection(str(self._broker_socket), limit=256 * 1024)

    async def _read(self) -> None:
        assert self._conn is not None and self._mux is not None
        frames = FrameReader()
        reason = "the tunnel's stream ended"
        try:
            async for stream, payload in docker_frames(self._conn):
                if stream == STDOUT:
                    for channel, kind, body in frames.feed(payload):
                        await self._mux.dispatch(channel, kind, body)
                elif stream == STDERR:
                    self._stderr += payload
                    del self._stderr[:-2 * _STDERR_TAIL]
        except (OSError, ValueError) as e:
            reason = f"the tunnel's stream broke ({e})"
        except TunnelError as e:
            reason = f"the relay broke the tunnel protocol ({e})"
        finally:
            self.ended.set()
            await self._mux.close()
        if not self._closing:
            logger.debug("broker tunnel of %s closed: %s %s", self._container_id[:12], reason, self.stderr_tail)
            if self._on_lost is not None:
                self._on_lost(f"lost the broker tunnel: {reason}")

    async def close(self) -> None:
        """End the relay (end of file on its stdin) and drop every channel."""
        if self._closing:
            return
        self._closing = True
        if self._conn is not None:
            self._conn.shutdown_write()
        if self._pump is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._pump), 2.0)
            self._pump.cancel()
            with contextlib.suppress(BaseException):
                await self._pump
        if self._mux is not None:
            await self._mux.close()
        if self._conn is not None:
            self._conn.close()
