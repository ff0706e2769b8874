"""TCP-to-unix-socket relay that runs inside the network-less sandbox.

The sandbox has no network, only loopback, and the broker is reachable through a
unix socket mounted into it. This relay listens on loopback TCP (where
``ANTHROPIC_BASE_URL`` / ``FSRLM_BROKER_URL`` point) and pipes every connection,
bytes both ways, to a fresh connection to that socket::

    python3 relay.py --listen 127.0.0.1:8080 --unix /run/fsrlm/broker.sock

It prints ``relay ready`` to stderr once listening. It understands nothing of
HTTP: half-closes are passed on, each direction honours backpressure, and any
number of connections run at once. Standard library only.

On a remote Docker host there is no socket to mount. There the relay runs as
``relay.py --tunnel-stdio`` in an exec of the agent's container and carries
every accepted connection over its own stdin/stdout, which the orchestrator
holds through Docker's exec stream (``executors/docker/tunnel.py`` is the other
end; the container keeps ``network_mode=none``). ``Mux`` speaks the protocol,
the same code on both ends. Every frame::

    channel u32 | type u8 | length u32 | payload (length bytes)     big endian

    HELLO 0  channel 0; payload "fsrlm-tunnel/1". The host sends it first; the
             relay answers once it listens (so nothing is written to stdout
             before the host holds the stream)
    OPEN  1  relay -> host: a connection was accepted; a new channel id
    DATA  2  bytes of the channel, at most 64 KiB a frame
    EOF   3  the sender's side reached end of file (a half-close)
    CLOSE 4  the channel is gone (reset, refused); drop it
    ACK   5  payload u32: that many bytes were delivered; the sender may send
             as many more

Flow control is per channel: a sender keeps at most ``WINDOW`` bytes
unacknowledged, so one connection whose reader stalls never blocks the others,
and a receiver that is sent more than that drops the channel. A channel whose
two sides both sent EOF is finished. Frames of unknown channels are ignored.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import struct
import sys
from collections.abc import Awaitable, Callable

__all__ = ["serve", "main", "Mux", "FrameReader", "frame", "TunnelError"]

logger = logging.getLogger("fsrlm.relay")
_READ = 256 * 1024  # bytes per read


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                abort: asyncio.Event) -> None:
    """Copy ``reader`` to ``writer`` until EOF, then half-close ``writer``."""
    try:
        while data := await reader.read(_READ):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof() and not writer.is_closing():
            writer.write_eof()
    except (OSError, RuntimeError):  # reset / broken pipe / writing after close
        abort.set()


async def _relay(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter,
                 unix_path: str) -> None:
    """Serve one TCP connection: connect to the unix socket and pipe both ways."""
    try:
        up_r, up_w = await asyncio.open_unix_connection(unix_path, limit=_READ)
    except OSError as exc:
        logger.warning("relay: cannot connect to %s: %s", unix_path, exc)
        client_w.transport.abort()
        return
    abort = asyncio.Event()
    pipes = asyncio.gather(_pipe(client_r, up_w, abort), _pipe(up_r, client_w, abort))
    aborted = asyncio.ensure_future(abort.wait())
    try:
        await asyncio.wait([pipes, aborted], return_when=asyncio.FIRST_COMPLETED)
    finally:
        if abort.is_set() or not pipes.done():  # one side failed: drop both at once
            client_w.transport.abort()
            up_w.transport.abort()
        aborted.cancel()
        with contextlib.suppress(BaseException):
            await pipes
        client_w.close()
        up_w.close()


async def serve(listen_host: str, listen_port: int, unix_path: str,
                ready: asyncio.Event | None = None) -> None:
    """Relay ``listen_host:listen_port`` (TCP) to ``unix_path`` until cancelled.

    ``ready`` is set once the TCP socket is listening. Cancelling the task stops
    listening and drops every open connection.
    """
    handlers: set[asyncio.Task[None]] = set()

    async def on_connect(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await _relay(r, w, unix_path)
        finally:
            handlers.discard(task)

    server = await asyncio.start_server(on_connect, listen_host, listen_port,
                                        limit=_READ, reuse_address=True, backlog=1024)
    try:
        if ready is not None:
            ready.set()
        await asyncio.Future()  # run until cancelled
    finally:
        server.close()
        for task in list(handlers):
            task.cancel()
        if handlers:
            await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


# -- the stdio tunnel -------------------------------------------------------------

FRAME = struct.Struct(">IBI")
HELLO, OPEN, DATA, EOF, CLOSE, ACK = range(6)
VERSION = b"fsrlm-tunnel/1"
MAX_PAYLOAD = 64 * 1024
WINDOW = 1024 * 1024
MAX_CHANNELS = 1024
_ACK = struct.Struct(">I")

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class TunnelError(Exception):
    """The other end broke the tunnel protocol."""


def frame(channel: int, kind: int, payload: bytes | memoryview = b"") -> bytes:
    return FRAME.pack(channel, kind, len(payload)) + bytes(payload)


class FrameReader:
    """Cut a byte stream into ``(channel, type, payload)`` frames."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        self._buf += data
        frames, start = [], 0
        while len(self._buf) - start >= FRAME.size:
            channel, kind, size = FRAME.unpack_from(self._buf, start)
            if kind > ACK or size > MAX_PAYLOAD:
                raise TunnelError(f"bad frame (type {kind}, {size} bytes)")
            end = start + FRAME.size + size
            if len(self._buf) < end:
                break
            frames.append((channel, kind, bytes(self._buf[start + FRAME.size:end])))
            start = end
        del self._buf[:start]
        return frames


class _Channel:
    def __init__(self, cid: int) -> None:
        self.cid = cid
        self.inbound: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.buffered = 0  # received, not yet delivered
        self.credit = WINDOW  # may still send before an ACK
        self.credit_changed = asyncio.Event()
        self.writer: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None


class Mux:
    """Many connections over one ordered byte pipe (see the module docstring).

    ``send`` writes bytes to the pipe. Feed what the pipe delivers to
    ``dispatch``. The listening end calls ``accept`` for each connection; the
    other end passes ``connect``, called for each OPEN to make the local
    connection (it may raise ``OSError``: the channel is then refused).
    """

    def __init__(self, send: Callable[[bytes], Awaitable[None]],
                 connect: Callable[[], Awaitable[Connection]] | None = None) -> None:
        self._send = send
        self._connect = connect
        self._lock = asyncio.Lock()
        self._channels: dict[int, _Channel] = {}
        self._next_id = 1
        self.hello = asyncio.Event()
        self.closed = False

    async def send_frame(self, channel: int, kind: int, payload: bytes | memoryview = b"") -> None:
        async with self._lock:
            await self._send(frame(channel, kind, payload))

    @property
    def open_channels(self) -> int:
        return len(self._channels)

    async def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Carry one accepted connection over the pipe until both sides are done."""
        if self.closed or len(self._channels) >= MAX_CHANNELS:
            writer.transport.abort()
            return
        ch = _Channel(self._next_id)
        self._next_id = (self._next_id + 1) % (1 << 32) or 1
        self._channels[ch.cid] = ch
        ch.task = asyncio.current_task()
        try:
            await self.send_frame(ch.cid, OPEN)
            await self._serve(ch, reader, writer)
        except (OSError, asyncio.CancelledError):
            writer.transport.abort()
            self._channels.pop(ch.cid, None)
            raise

    async def _open(self, ch: _Channel) -> None:
        assert self._connect is not None
        try:
            reader, writer = await self._connect()
        except OSError as exc:
            logger.warning("tunnel: cannot open channel %d: %s", ch.cid, exc)
            self._channels.pop(ch.cid, None)
            with contextlib.suppress(OSError):
                await self.send_frame(ch.cid, CLOSE)
            return
        await self._serve(ch, reader, writer)

    async def _serve(self, ch: _Channel, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ch.writer = writer
        outbound = asyncio.ensure_future(self._outbound(ch, reader))
        inbound = asyncio.ensure_future(self._inbound(ch, writer))
        try:
            done, _ = await asyncio.wait([outbound, inbound], return_when=asyncio.FIRST_EXCEPTION)
            failed = any(t.exception() is not None for t in done if not t.cancelled())
            if failed and not self.closed:
                with contextlib.suppress(OSError):
                    await self.send_frame(ch.cid, CLOSE)
        finally:
            for task in (outbound, inbound):
                task.cancel()
            await asyncio.gather(outbound, inbound, return_exceptions=True)
            if self._channels.get(ch.cid) is ch:
                del self._channels[ch.cid]
            writer.close()

    async def _outbound(self, ch: _Channel, reader: asyncio.StreamReader) -> None:
        """Local connection -> pipe, within the channel's window."""
        while data := await reader.read(MAX_PAYLOAD):
            view = memoryview(data)
            while view:
                while ch.credit <= 0:
                    ch.credit_changed.clear()
                    await ch.credit_changed.wait()
                n = min(len(view), ch.credit)
                ch.credit -= n
                await self.send_frame(ch.cid, DATA, view[:n])
                view = view[n:]
        await self.send_frame(ch.cid, EOF)

    async def _inbound(self, ch: _Channel, writer: asyncio.StreamWriter) -> None:
        """Pipe -> local connection; acknowledge what was delivered."""
        while (data := await ch.inbound.get()) is not None:
            writer.write(data)
            await writer.drain()
            ch.buffered -= len(data)
            await self.send_frame(ch.cid, ACK, _ACK.pack(len(data)))
        if writer.can_write_eof():
            writer.write_eof()

    async def dispatch(self, channel: int, kind: int, payload: bytes) -> None:
        """Act on one frame from the pipe. Never blocks on a channel."""
        if kind == HELLO:
            if payload != VERSION:
                raise TunnelError(f"the other end speaks {payload[:40]!r}, not {VERSION!r}")
            self.hello.set()
            return
        ch = self._channels.get(channel)
        if kind == OPEN:
            if self._connect is None or ch is not None or len(self._channels) >= MAX_CHANNELS:
                await self.send_frame(channel, CLOSE)
                return
            ch = self._channels[channel] = _Channel(channel)
            ch.task = asyncio.ensure_future(self._open(ch))
        elif ch is None:
            return  # a late frame of a finished channel
        elif kind == DATA:
            ch.buffered += len(payload)
            if ch.buffered > WINDOW:  # the sender ignored the window: drop the channel
                self._abort(ch)
                await self.send_frame(channel, CLOSE)
                return
            ch.inbound.put_nowait(payload)
        elif kind == EOF:
            ch.inbound.put_nowait(None)
        elif kind == ACK:
            ch.credit += _ACK.unpack(payload)[0] if len(payload) == _ACK.size else 0
            ch.credit_changed.set()
        elif kind == CLOSE:
            self._abort(ch)

    def _abort(self, ch: _Channel) -> None:
        self._channels.pop(ch.cid, None)
        if ch.writer is not None:
            ch.writer.transport.abort()
        if ch.task is not None and ch.task is not asyncio.current_task():
            ch.task.cancel()

    async def close(self) -> None:
        """Drop every channel (the pipe is gone)."""
        self.closed = True
        channels = list(self._channels.values())
        for ch in channels:
            self._abort(ch)
        tasks = [ch.task for ch in channels if ch.task is not None and ch.task is not asyncio.current_task()]
        await asyncio.gather(*tasks, return_exceptions=True)


async def tunnel_stdio(host: str, port: int, ready_file: str | None = None) -> None:
    """Listen on ``host:port`` and carry every connection over stdin/stdout until stdin ends."""
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader(limit=_READ)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin.buffer)
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, sys.stdout.buffer)
    stdout = asyncio.StreamWriter(transport, protocol, None, loop)

    async def send(data: bytes) -> None:
        stdout.write(data)
        await stdout.drain()

    mux = Mux(send)
    frames = FrameReader()
    # Wait for the host's HELLO: it holds the stream by then, so no output is lost.
    while not mux.hello.is_set():
        data = await stdin.read(_READ)
        if not data:
            return
        for channel, kind, payload in frames.feed(data):
            await mux.dispatch(channel, kind, payload)
    server = await asyncio.start_server(mux.accept, host, port, limit=_READ, reuse_address=True, backlog=1024)
    try:
        if ready_file:
            fd = os.open(ready_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
            os.close(fd)
        await mux.send_frame(0, HELLO, VERSION)
        print("relay ready (tunnel)", file=sys.stderr, flush=True)
        while data := await stdin.read(_READ):
            for channel, kind, payload in frames.feed(data):
                await mux.dispatch(channel, kind, payload)
    finally:
        server.close()
        await mux.close()
        with contextlib.suppress(Exception):
            transport.close()


def _parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"--listen needs HOST:PORT, e.g. 127.0.0.1:8080 (got {value!r})")
    return host or "127.0.0.1", int(port)


async def _main_async(host: str, port: int, unix_path: str) -> None:
    ready = asyncio.Event()
    task = asyncio.ensure_future(serve(host, port, unix_path, ready))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, task.cancel)
    waiter = asyncio.ensure_future(ready.wait())
    await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    if ready.is_set():
        print("relay ready", file=sys.stderr, flush=True)
    waiter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def main(argv: list[str] | None = None) -> int:
    """Command line: ``relay.py --listen HOST:PORT (--unix PATH | --tunnel-stdio [--ready-file PATH])``."""
    parser = argparse.ArgumentParser(description="Pipe loopback TCP connections to a unix socket.")
    parser.add_argument("--listen", type=_parse_listen, default=("127.0.0.1", 8080),
                        help="HOST:PORT to listen on (default 127.0.0.1:8080)")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--unix", help="path of the broker's unix socket")
    target.add_argument("--tunnel-stdio", action="store_true",
                        help="carry the connections over stdin/stdout instead (framed; see the docstring)")
    parser.add_argument("--ready-file", help="with --tunnel-stdio: create this file once listening")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    host, port = args.listen
    try:
        if args.tunnel_stdio:
            asyncio.run(tunnel_stdio(host, port, args.ready_file))
        else:
            asyncio.run(_main_async(host, port, args.unix))
    except OSError as exc:
        print(f"relay: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
