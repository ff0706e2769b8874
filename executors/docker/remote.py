"""The ``remote-docker`` executor: the same locked-down container, on another Docker engine.

It is ``ContainerSandbox`` with the two strategies a remote engine needs: the run
folder travels as archives into a per-run volume (``transfer.VolumeArchive``; no
bind mounts), and the broker is reached through a tunnel over the container's exec
stream (``channel.ExecTunnel``; the container keeps ``network_mode=none`` and sees
only the per-run token). The broker and every credential stay on this machine.

What crosses the wire: the Docker API (``endpoint.py``: ``tcp://`` with TLS,
``ssh://``, or a context); the sandbox image, once, when the remote lacks the
current one (``ship.py``); the run folder, in and back; the agent's stdin/stdout;
the broker's traffic, framed (``tools/mux.py``).
"""

from __future__ import annotations

import asyncio
import os

from fsrlm.executors.base import Executor, SandboxSpec
from fsrlm.executors.configs import RemoteDockerExecutorConfig
from fsrlm.executors.docker import cleanup, hardening, isolation
from fsrlm.executors.docker.channel import ExecTunnel
from fsrlm.executors.docker.endpoint import (
    Endpoint,
    connect,
    docker_client,
    resolve_endpoint,
)
from fsrlm.executors.docker.engine import Engine, connect_local
from fsrlm.executors.docker.errors import EngineRef
from fsrlm.executors.docker.sandbox import ContainerSandbox, check_spec
from fsrlm.executors.docker.ship import remote_image
from fsrlm.executors.docker.transfer import VolumeArchive

from fsrlm.errors import SandboxError

SANDBOX_USER = (hardening.SANDBOX_UID, hardening.SANDBOX_GID)


def remote_engine(endpoint: Endpoint, client, ping_timeout: float) -> Engine:
    """An ``Engine`` for a remote host: a broken stream means the agent is lost; pings time out quickly."""

    def probe() -> None:
        docker_client(endpoint, timeout=ping_timeout).close()  # asks the engine for its version

    return Engine(
        client=client,
        ref=EngineRef(label=f"the Docker host {endpoint.label}",
                      fix="check that the host is up and reachable, and executor.host / DOCKER_HOST"),
        remote=True, lost_after=3, gc_command=f"fsrlm gc --host {endpoint.host}", probe=probe,
    )


class RemoteDockerExecutor(Executor):
    """Run the agent in a hardened container on a remote Docker engine."""

    def __init__(self, config: RemoteDockerExecutorConfig) -> None:
        self.config = config
        self._engine: Engine | None = None
        self._endpoint: Endpoint | None = None
        self._image: str | None = None
        self._lock = asyncio.Lock()

    @property
    def endpoint(self) -> Endpoint:
        if self._endpoint is None:
            self._endpoint = resolve_endpoint(self.config)
        return self._endpoint

    @property
    def image(self) -> str | None:
        return self._image

    async def _connect(self) -> Engine:
        if self._engine is None:
            timeout = self.config.connect_timeout
            client = await asyncio.to_thread(connect, self.endpoint, ping_timeout=timeout,
                                             api_timeout=(timeout, 300.0))
            self._engine = remote_engine(self.endpoint, client, timeout)
        return self._engine

    def _local_client(self):
        """This machine's engine, to build and ship the image from (DOCKER_HOST may name the remote one)."""
        env = dict(os.environ)
        if self.endpoint.source == "DOCKER_HOST":
            for name in ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"):
                env.pop(name, None)
        return connect_local(environment=env).client

    async def check(self) -> None:
        async with self._lock:
            engine = await self._connect()
            if self.info is None:  # executor.isolation -> the remote engine's runtime; no socket is mounted there
                self.info = await asyncio.to_thread(isolation.resolve, engine.client, self.config, bind_socket=False,
                                                    engine=f"the Docker host {self.endpoint.label}")
            if self._image is None:
                self._image = await asyncio.to_thread(
                    remote_image, engine.client, self._local_client, image=self.config.image,
                    host=self.endpoint.host)

    async def prepare(self, spec: SandboxSpec) -> ContainerSandbox:
        await self.check()
        check_spec(spec)
        assert self._engine is not None and self._image is not None
        return ContainerSandbox(
            self._engine, self.config, spec, self._image, user=SANDBOX_USER, runtime=self.info,
            workspace=VolumeArchive(self._engine, spec, SANDBOX_USER, self.config),
            channel=ExecTunnel(self._engine, spec, SANDBOX_USER),
        )

    async def gc(self, older_than_seconds: float = 0.0) -> list[str]:
        engine = await self._connect()
        try:
            return await asyncio.to_thread(cleanup.gc, engine.client, older_than_seconds)
        except SandboxError as e:
            raise SandboxError(f"{e} (Docker host {self.endpoint.label})") from e


__all__ = ["RemoteDockerExecutor"]
