"""How the agent's container reaches the run's broker: one of two strategies. The container has no network.

* ``MountedSocket`` (docker): the broker's unix socket is bind-mounted read-only at
  ``/run/fsrlm/broker.sock``; the image's entrypoint starts the relay
  (``127.0.0.1:8080`` in the container → the socket) before the agent.
* ``ExecTunnel`` (remote-docker): a remote engine cannot mount this machine's
  socket. The orchestrator starts the relay as an exec in the container and carries
  its connections over the exec's stream (``tunnel.BrokerTunnel``); the entrypoint
  waits for the tunnel instead of starting a relay. If the tunnel breaks while the
  agent runs, the agent is cut off from the broker and is stopped.

``ContainerSandbox`` calls ``prepare`` (before the container exists), reads
``mount_options`` and ``plumbing`` (environment), calls ``started`` once the
container runs, and ``close`` when the sandbox closes.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import os
import stat
from typing import Any

from fsrlm.executors.base import SandboxSpec
from fsrlm.executors.docker import hardening
from fsrlm.executors.docker.engine import Engine
from fsrlm.executors.docker.process import DockerAgentProcess
from fsrlm.executors.docker.tunnel import BrokerTunnel

from fsrlm.errors import SandboxError

logger = logging.getLogger(__name__)


class BrokerChannel(abc.ABC):
    def __init__(self, engine: Engine, spec: SandboxSpec, user: tuple[int, int]) -> None:
        self.engine = engine
        self.spec = spec
        self.user = user

    async def prepare(self) -> None:
        """Before the first container is created: the broker's socket must be there."""
        try:
            st = os.lstat(self.spec.broker.unix_socket)
        except OSError as e:
            raise SandboxError(f"The broker socket {self.spec.broker.unix_socket} is missing: {e}") from e
        if not stat.S_ISSOCK(st.st_mode):
            raise SandboxError(f"{self.spec.broker.unix_socket} is not a unix socket.")

    @abc.abstractmethod
    def mount_options(self) -> dict[str, Any]:
        """Keyword arguments of ``hardening.container_options`` for this channel."""

    @abc.abstractmethod
    def plumbing(self) -> dict[str, str]:
        """Environment the image's entrypoint reads to set up its end."""

    async def started(self, container_id: str, process: DockerAgentProcess) -> None:
        """The container runs."""

    async def close(self) -> None:
        """The sandbox is closing: stop whatever ``started`` started. Idempotent."""


class MountedSocket(BrokerChannel):
    async def prepare(self) -> None:
        await super().prepare()
        if os.geteuid() == 0 and self.user != (os.getuid(), os.getgid()):
            # The socket stays in its private 0700 folder; only the container's user may connect.
            try:
                os.chown(self.spec.broker.unix_socket, *self.user, follow_symlinks=False)
            except OSError as e:
                raise SandboxError(f"Cannot hand the broker socket to uid {self.user[0]}: {e}") from e

    def mount_options(self) -> dict[str, Any]:
        return {"broker_socket": self.spec.broker.unix_socket}

    def plumbing(self) -> dict[str, str]:
        return {"FSRLM_BROKER_SOCKET": hardening.BROKER_SOCKET}


class ExecTunnel(BrokerChannel):
    def __init__(self, engine: Engine, spec: SandboxSpec, user: tuple[int, int]) -> None:
        super().__init__(engine, spec, user)
        self._tunnels: list[BrokerTunnel] = []
        self._watchers: set[asyncio.Task[None]] = set()
        self._closed = False

    def mount_options(self) -> dict[str, Any]:
        return {}

    def plumbing(self) -> dict[str, str]:
        return {"FSRLM_RELAY_MODE": "tunnel", "FSRLM_RELAY_TIMEOUT": "60"}

    async def started(self, container_id: str, process: DockerAgentProcess) -> None:
        tunnel = BrokerTunnel(self.engine.api, container_id, self.spec.broker.unix_socket,
                              user=f"{self.user[0]}:{self.user[1]}", engine=self.engine.ref,
                              on_lost=lambda reason: self._lost(process, reason))
        self._tunnels.append(tunnel)
        starting = asyncio.ensure_future(tunnel.start())
        ended = asyncio.ensure_future(process.stream_ended())
        try:
            await asyncio.wait([starting, ended], return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
        if starting.done():
            starting.result()  # raises when the tunnel failed while the agent runs
            return
        # The agent ended (killed by its timeout, or failed at once) before the tunnel was up: nothing
        # needs the broker any more; its exit status tells what happened.
        starting.cancel()
        with contextlib.suppress(BaseException):
            await starting
        logger.debug("run %s: the agent ended before its broker tunnel started", self.spec.run_id)

    def _lost(self, process: DockerAgentProcess, reason: str) -> None:
        """The tunnel ended: normal when the agent exits; otherwise the agent is cut off from the broker."""

        async def check() -> None:
            await asyncio.sleep(1.0)  # the agent's own stream ends at about the same time when it exits
            if process.running and not self._closed:
                logger.warning("run %s: %s; stopping the agent", self.spec.run_id, reason)
                process.add_note(f"{reason}; the agent could not reach the broker any more, so it was stopped")
                try:
                    await process.kill()
                except SandboxError as e:
                    logger.warning("%s", e)

        self._watchers.add(task := asyncio.ensure_future(check()))
        task.add_done_callback(self._watchers.discard)

    async def close(self) -> None:
        self._closed = True
        for task in list(self._watchers):
            task.cancel()
        for task in list(self._watchers):
            with contextlib.suppress(BaseException):
                await task
        for tunnel in self._tunnels:
            await tunnel.close()
