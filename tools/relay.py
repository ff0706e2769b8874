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
end; the container keeps ``network_mode=none``). The framing is ``mux.py``'s,
the same module on both ends; it sits next to this file (``/opt/fsrlm`` in the image).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys

# Run as `python3 -I relay.py`: -I leaves the script's folder off sys.path; mux.py lives beside it.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mux import HELLO, VERSION, FrameReader, Mux  # noqa: E402

__all__ = ["serve", "main", "tunnel_stdio"]

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


def _stop(pid: int | None) -> None:
    """The agent started beside the relay cannot reach the broker: stop it rather than let it retry for minutes."""
    if pid:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


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
    parser.add_argument("--stop-on-failure", type=int, metavar="PID",
                        help="if the relay cannot listen, kill PID (the agent started beside it) after saying why")
    # The pid to stop is read first, on its own: it must be stopped even when the other arguments are bad.
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--stop-on-failure", type=int)
    known, _ = pre.parse_known_args(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit:
        _stop(known.stop_on_failure)
        raise
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    host, port = args.listen
    try:
        if args.tunnel_stdio:
            asyncio.run(tunnel_stdio(host, port, args.ready_file))
        else:
            asyncio.run(_main_async(host, port, args.unix))
    except OSError as exc:
        print(f"relay: cannot listen on {host}:{port}: {exc}; the agent cannot reach the broker", file=sys.stderr,
              flush=True)
        _stop(args.stop_on_failure)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
