"""The ``docker`` executor: the agent in a locked-down container on this machine's Docker engine.

``check`` makes sure the engine answers and the sandbox image is current;
``prepare`` returns a ``ContainerSandbox`` whose workspace is the run folder
itself, bind-mounted at ``/workspace`` (the only writable mount), and whose broker
channel is the broker's unix socket, bind-mounted read-only at
``/run/fsrlm/broker.sock`` (the image's entrypoint relays ``127.0.0.1:8080`` to it).

User: the orchestrator's uid:gid when it is not root; when it is root, uid 1000
(the image's ``sandbox`` user): then the workspace and the socket are handed to
1000 before the run and back afterwards, never following a link (``handback.py``).
"""

from __future__ import annotations

import asyncio

from fsrlm.executors.base import Executor, SandboxSpec
from fsrlm.executors.configs import DockerExecutorConfig
from fsrlm.executors.docker import cleanup, isolation
from fsrlm.executors.docker.channel import MountedSocket
from fsrlm.executors.docker.engine import Engine, connect_local
from fsrlm.executors.docker.errors import docker_errors, is_not_found
from fsrlm.executors.docker.handback import sandbox_user
from fsrlm.executors.docker.image import cli_binary, ensure_image
from fsrlm.executors.docker.sandbox import ContainerSandbox, check_spec
from fsrlm.executors.docker.sharedcli import neutral_cli
from fsrlm.executors.docker.transfer import BindMount

from fsrlm.errors import ImageError


class DockerExecutor(Executor):
    """Run the agent in a hardened container on the local Docker engine."""

    def __init__(self, config: DockerExecutorConfig) -> None:
        self.config = config
        self._engine: Engine | None = None
        self._image: str | None = None
        self._lock = asyncio.Lock()

    @property
    def image(self) -> str | None:
        return self._image

    async def _connect(self) -> Engine:
        if self._engine is None:
            self._engine = await asyncio.to_thread(connect_local)
        return self._engine

    async def check(self) -> None:
        async with self._lock:
            engine = await self._connect()
            if self.info is None:  # executor.isolation -> the engine's runtime (gVisor or runc)
                self.info = await asyncio.to_thread(isolation.resolve, engine.client, self.config, bind_socket=True)
            if self._image is None:
                self._image = await asyncio.to_thread(self._ensure_image, engine)

    def _ensure_image(self, engine: Engine) -> str:
        if self.config.image is None:
            return ensure_image(engine.client)
        try:
            with docker_errors(f"find image {self.config.image} (executor.image)", engine.ref):
                engine.client.images.get(self.config.image)  # type: ignore[attr-defined]
        except ImageError as e:
            if not is_not_found(e):
                raise
            raise ImageError(
                f"Image {self.config.image} (executor.image) is not on {engine.ref.label}; "
                "`docker pull`/`docker load` it, or unset executor.image to build the default one."
            ) from None
        return self.config.image

    async def prepare(self, spec: SandboxSpec) -> ContainerSandbox:
        await self.check()
        check_spec(spec)
        assert self._engine is not None and self._image is not None
        user = sandbox_user()
        # Only the default image is known (by its fingerprint) to hold this very binary.
        # From a neutral path: the container sees a bind mount's source in its mount table (sharedcli.py).
        shared_cli = (await asyncio.to_thread(neutral_cli, cli_binary())
                      if self.config.share_cli and self.config.image is None else None)
        return ContainerSandbox(
            self._engine, self.config, spec, self._image, user=user, shared_cli=shared_cli, runtime=self.info,
            workspace=BindMount(self._engine, spec, user, host_inodes=self.info.kernel == "host"),
            channel=MountedSocket(self._engine, spec, user),
        )

    async def gc(self, older_than_seconds: float = 0.0) -> list[str]:
        engine = await self._connect()
        return await asyncio.to_thread(cleanup.gc, engine.client, older_than_seconds)


__all__ = ["DockerExecutor"]
