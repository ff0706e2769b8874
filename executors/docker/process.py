"""The agent's stdin/stdout/stderr over Docker's attach stream.

The container is created with ``stdin_open`` and ``stdin_once`` and attached
*before* it starts, so no output is lost. The attach connection is a raw
(hijacked) socket — plain, or TLS for a remote engine (``stream.AsyncSocket``):
we write the agent's stdin to it, half-close it to send EOF, and read Docker's
multiplexed output (``stream.docker_frames``: stream 1 is stdout, 2 stderr).

Everything runs on the event loop; only short docker API calls (kill, wait,
inspect) go to a thread.

Stdout is buffered up to ``STDOUT_BUFFER_BYTES`` for the reader of
``stdout_lines``; past that, reading pauses (back-pressure, as with a pipe)
until the reader catches up — or, once ``wait`` or ``kill`` was called, the
excess is dropped so that waiting can never deadlock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import docker.errors
import requests.exceptions
from fsrlm.executors.base import AgentProcess, ExecResult
from fsrlm.executors.docker.errors import EngineRef, map_docker_error
from fsrlm.executors.docker.stream import STDERR, STDOUT, AsyncSocket, docker_frames

from fsrlm.errors import SandboxError

logger = logging.getLogger(__name__)

STDOUT_BUFFER_BYTES = 64 * 1024 * 1024
STDOUT_LINE_LIMIT = 64 * 1024 * 1024  # as the local executor's
STDERR_TAIL_BYTES = 16 * 1024


class DockerAgentProcess(AgentProcess):
    """One agent container's streams and lifetime. Create it with ``attach`` + ``start`` done by the sandbox."""

    def __init__(
        self,
        api,
        container_id: str,
        attached,
        *,
        timeout_seconds: float | None = None,
        lost_after: int = 10,
        kill_when_detached: bool = False,
        engine: EngineRef | None = None,
    ) -> None:
        self._api = api
        self.container_id = container_id
        self._conn = AsyncSocket(attached)  # keeps the HTTP response (and so the socket) alive
        self._loop = asyncio.get_running_loop()
        self._lost_after = lost_after  # failed attempts to reach the daemon before giving up
        # Over a network the stream can break while the agent runs: then stop it rather than wait.
        self._kill_when_detached = kill_when_detached
        self._engine = engine or EngineRef.local()  # for messages
        self._lost = False  # the engine stopped answering: nothing more can be done through it

        self._stdout: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._stdout_buffered = 0
        self._stdout_drained = asyncio.Event()
        self._discard_excess = False
        self._stderr_tail = bytearray()

        self._stdin_closed = False
        self._write_lock = asyncio.Lock()
        self._killed = False
        self.timed_out = False  # True when the spec's timeout_seconds ran out and we killed it
        self._timeout_kill: asyncio.Task[None] | None = None
        self._result: ExecResult | None = None
        self._wait_lock = asyncio.Lock()
        self._closed = False

        self._pump_task = self._loop.create_task(self._pump(), name=f"fsrlm-attach-{container_id[:12]}")
        self._deadline = (
            self._loop.call_later(timeout_seconds, self._on_timeout) if timeout_seconds and timeout_seconds > 0 else None
        )

    # -- output ---------------------------------------------------------------

    async def _pump(self) -> None:
        try:
            async for stream, payload in docker_frames(self._conn):
                if stream == STDOUT:
                    await self._put_stdout(payload)
                elif stream == STDERR:
                    self._add_stderr(payload)
        except (OSError, ValueError) as e:  # connection reset, or socket closed by close()
            logger.debug("attach stream of %s ended: %s", self.container_id[:12], e)
        finally:
            self._stdout.put_nowait(None)

    async def _put_stdout(self, payload: bytes) -> None:
        while self._stdout_buffered >= STDOUT_BUFFER_BYTES:
            if self._discard_excess:
                logger.warning("agent stdout not read; dropped %d bytes", len(payload))
                return
            self._stdout_drained.clear()
            await self._stdout_drained.wait()
        self._stdout_buffered += len(payload)
        self._stdout.put_nowait(payload)

    def add_note(self, text: str) -> None:
        """Append an fsRLM note to the stderr tail (e.g. why the broker became unreachable)."""
        self._add_stderr(f"\nfsrlm: {text}\n".encode())

    def _add_stderr(self, payload: bytes) -> None:
        self._stderr_tail += payload
        if len(self._stderr_tail) > 2 * STDERR_TAIL_BYTES:
            del self._stderr_tail[:-STDERR_TAIL_BYTES]

    def _stop_backpressure(self) -> None:
        self._discard_excess = True
        self._stdout_drained.set()

    async def stdout_lines(self) -> AsyncIterator[bytes]:
        """Yield stdout one line at a time (without the newline); one reader only.

        Anything in the container can write to the agent's stdout (``/proc/1/fd/1``),
        so a line longer than ``STDOUT_LINE_LIMIT`` is dropped, not gathered: the
        orchestrator's memory stays bounded whatever the sandbox writes.
        """
        pending = bytearray()
        dropping = False  # inside an over-long line: skip to its end
        while True:
            chunk = await self._stdout.get()
            if chunk is None:
                break
            self._stdout_buffered -= len(chunk)
            self._stdout_drained.set()
            start = 0
            while (nl := chunk.find(b"\n", start)) != -1:  # only the new bytes are searched
                if not dropping:
                    pending += chunk[start:nl]
                    yield bytes(pending)
                pending.clear()
                dropping = False
                start = nl + 1
            if not dropping:
                pending += chunk[start:]
                if len(pending) > STDOUT_LINE_LIMIT:
                    logger.warning("agent stdout: dropped a line longer than %d bytes", STDOUT_LINE_LIMIT)
                    pending.clear()
                    dropping = True
        if pending and not dropping:
            yield bytes(pending)

    @property
    def running(self) -> bool:
        """Whether the attach stream is still open (the container has not exited)."""
        return not self._pump_task.done()

    async def stream_ended(self) -> None:
        """Return once the attach stream has ended (the container exited, or was killed)."""
        await asyncio.wait({self._pump_task})

    @property
    def stderr_tail(self) -> str:
        return bytes(self._stderr_tail[-STDERR_TAIL_BYTES:]).decode("utf-8", errors="replace")

    # -- input ----------------------------------------------------------------

    async def write(self, data: bytes) -> None:
        if self._stdin_closed:
            raise SandboxError("The agent's stdin is already closed.")
        async with self._write_lock:
            try:
                await self._conn.sendall(data)
            except OSError as e:
                raise SandboxError(f"Cannot write to the agent's stdin (the container has stopped?): {e}") from e

    async def close_stdin(self) -> None:
        if self._stdin_closed:
            return
        self._stdin_closed = True
        async with self._write_lock:
            self._conn.shutdown_write()

    # -- lifetime -------------------------------------------------------------

    def arm_timeout(self, seconds: float) -> None:
        """Start the wall-clock limit now (a warm sandbox's agent started long before its run)."""
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self._loop.call_later(seconds, self._on_timeout) if seconds > 0 else None

    def _on_timeout(self) -> None:
        if self._result is None:
            # Expected, and the run's result says so: not a warning for the user's terminal.
            logger.info("container %s reached its timeout; killing it", self.container_id[:12])
            self.timed_out = True
            self._timeout_kill = self._loop.create_task(self._kill_logged())

    async def _kill_logged(self) -> None:
        try:
            await self.kill()
        except SandboxError as e:
            logger.error("%s", e)

    async def kill(self) -> None:
        """SIGKILL the container (its init, so every process in it); safe to call more than once."""
        self._stop_backpressure()
        if self._result is not None or self._lost:
            return
        # Said before the engine is asked: the container can be gone, and wait() done, before it answers.
        before, self._killed = self._killed, True
        try:
            await asyncio.to_thread(self._api.kill, self.container_id)
        except docker.errors.NotFound:
            self._killed = before  # removed from outside
        except docker.errors.APIError as e:
            self._killed = before  # 409: not running any more (it ended by itself, or an earlier kill did it)
            if e.status_code != 409:
                raise SandboxError(f"Cannot kill container {self.container_id[:12]}: {e.explanation or e}") from e
        except (requests.exceptions.RequestException, docker.errors.DockerException) as e:
            self._killed = before
            raise map_docker_error(e, f"kill container {self.container_id[:12]}", self._engine) from e

    async def wait(self) -> ExecResult:
        """Wait for the container to exit; the result is cached."""
        async with self._wait_lock:
            if self._result is not None:
                return self._result
            self._stop_backpressure()
            await asyncio.wait({self._pump_task})  # the stream ends when the container exits
            if self._kill_when_detached and not self._killed and not await asyncio.to_thread(self._exits_soon):
                self.add_note("the connection to the agent's container broke while it was running "
                              "(network or Docker host trouble); it was stopped")
                with contextlib.suppress(SandboxError):
                    await self.kill()
            state = await asyncio.to_thread(self._exit_state)
            if self._deadline is not None:
                self._deadline.cancel()
            exit_code, oom_killed, note = state
            tail = self.stderr_tail
            if note:
                tail = (tail + ("\n" if tail and not tail.endswith("\n") else "") + note)[-STDERR_TAIL_BYTES:]
            self._result = ExecResult(exit_code=exit_code, killed=self._killed, oom_killed=oom_killed, stderr_tail=tail)
            return self._result

    def _exits_soon(self, seconds: float = 2.0) -> bool:
        """Blocking: False when the container is still running ``seconds`` after its stream ended."""
        try:
            self._api.wait(self.container_id, timeout=seconds)
        except Exception as e:  # noqa: BLE001 - gone, or the daemon unreachable: _exit_state reports it
            return not _read_timeout(e)
        return True

    def _exit_state(self) -> tuple[int | None, bool, str]:
        """Blocking: wait until the container is not running, then read its state."""
        failures = 0
        while True:
            try:
                self._api.wait(self.container_id, timeout=30)
                info = self._api.inspect_container(self.container_id)
            except docker.errors.NotFound:
                return None, False, "fsrlm: the container was removed before its exit status was read"
            except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError) as e:
                if _read_timeout(e):
                    continue  # still running although the stream ended: keep waiting (the timeout kills it)
                failures += 1
                if failures >= self._lost_after:
                    self._lost = True
                    raise SandboxError(f"Lost {self._engine.label} while waiting for the agent container "
                                       f"{self.container_id[:12]}: {e}") from e
                time.sleep(1.0)
                continue
            except docker.errors.DockerException as e:
                raise map_docker_error(e, f"read the exit status of container {self.container_id[:12]}",
                                       self._engine) from e
            state = info.get("State") or {}
            if state.get("Running"):
                continue
            note = state.get("Error") or ""
            return state.get("ExitCode"), bool(state.get("OOMKilled")), note

    async def aclose(self) -> None:
        """Stop reading and close the attach connection (the sandbox kills the container first)."""
        if self._closed:
            return
        self._closed = True
        if self._deadline is not None:
            self._deadline.cancel()
        self._stop_backpressure()
        self._pump_task.cancel()
        with contextlib.suppress(BaseException):
            await self._pump_task
        self._conn.close()


def _read_timeout(e: BaseException) -> bool:
    """A read that timed out (the container is still running), not a lost connection.

    ``/containers/{id}/wait`` answers its headers at once and its body when the
    container exits, so a timeout surfaces while reading the body, where
    requests reports it as a ``ConnectionError`` wrapping urllib3's ``ReadTimeoutError``.
    """
    import urllib3.exceptions

    if isinstance(e, requests.exceptions.ReadTimeout):
        return True
    return any(isinstance(arg, urllib3.exceptions.ReadTimeoutError) for arg in getattr(e, "args", ()))
