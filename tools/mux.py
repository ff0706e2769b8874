"""The framing protocol of the broker tunnel: many connections over one ordered byte pipe.

Both ends of the ``remote-docker`` broker tunnel import this module: the relay
inside the sandbox (``tools/relay.py --tunnel-stdio``, copied into the image at
``/opt/fsrlm/mux.py``) and the host's end (``executors/docker/tunnel.py``).
Standard library only; it imports nothing from fsRLM. Every frame::

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

import asyncio
import contextlib
import logging
import struct
from collections.abc import Awaitable, Callable

__all__ = ["ACK", "CLOSE", "DATA", "EOF", "HELLO", "OPEN", "VERSION", "WINDOW", "FrameReader", "Mux",
           "TunnelError", "frame"]

logger = logging.getLogger("fsrlm.tunnel")

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
