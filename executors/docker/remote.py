"""The ``remote-docker`` executor: the same locked-down container, on another Docker engine.

The broker and every credential stay on this machine. What crosses the wire:

* the Docker API (``endpoint.py``: ``tcp://`` with TLS, ``ssh://``, or a context);
* the sandbox image, once, when the remote lacks the current one (``ship.py``);
* the run folder, as a tar into a per-run named volume before the agent starts
  (``archive.WorkspacePacker``; no bind mounts), and back as a tar extracted
  safely into the run folder (``archive.extract_archive``) by ``collect`` — or by
  ``close`` when the run ended before ``collect``;
* the agent's stdin/stdout (Docker's attach stream, as for ``docker``) and the
  broker's traffic, framed over an exec stream (``tunnel.py``): the container
  keeps ``network_mode=none`` and sees only the per-run token.

Files the host changed during the run (the broker's audit log, the cache
mirror, the event log) keep the host's version when the workspace comes back;
the agent does not see those host-side writes while it runs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import stat
import time

from fsrlm.executors.base import Executor, SandboxSpec
from fsrlm.executors.configs import RemoteDockerExecutorConfig
from fsrlm.executors.docker import cleanup, hardening
from fsrlm.executors.docker.archive import WorkspacePacker, extract_archive
from fsrlm.executors.docker.endpoint import Endpoint, connect, resolve_endpoint
from fsrlm.executors.docker.executor import (
    DockerSandbox,
    _connect,
    _safe_name,
    check_spec,
)
from fsrlm.executors.docker.process import DockerAgentProcess
from fsrlm.executors.docker.ship import remote_image
from fsrlm.executors.docker.tunnel import BrokerTunnel

from fsrlm.errors import SandboxError
from fsrlm.safe_fs import open_beneath

logger = logging.getLogger(__name__)

SANDBOX_USER = (hardening.SANDBOX_UID, hardening.SANDBOX_GID)
ARCHIVE_CHUNK = 1024 * 1024


class RemoteDockerSandbox(DockerSandbox):
    """One run on a remote engine: a volume, the agent container, its broker tunnel."""

    _lost_after = 3
    _remote = True

    def __init__(self, client, config: RemoteDockerExecutorConfig, spec: SandboxSpec, image: str, *,
                 endpoint: Endpoint) -> None:
        super().__init__(client, config, spec, image, user=SANDBOX_USER, chowned=False)
        self._endpoint = endpoint
        self.volume = f"fsrlm-{_safe_name(spec.run_id)}-{secrets.token_hex(3)}"
        self._volume_made = False
        self._packer: WorkspacePacker | None = None
        self._tunnels: list[BrokerTunnel] = []
        self._watchers: set[asyncio.Task[None]] = set()
        self._collected = False
        #: what moved over the wire: bytes and seconds each way (for benchmarks and logs)
        self.transfer: dict[str, float] = {}

    def _fix(self) -> str:
        return f"is the Docker host {self._endpoint.label} reachable?"

    def _engine_name(self) -> str:
        return f"the Docker host {self._endpoint.host}"

    def _gc_command(self) -> str:
        return f"fsrlm gc --host {self._endpoint.host}"

    def _container_options(self, command: list[str], environment: dict[str, str], name: str):
        environment = {**environment, "FSRLM_RELAY_MODE": "tunnel", "FSRLM_RELAY_TIMEOUT": "60"}
        return hardening.container_options(
            self._config, image=self._image, command=command, environment=environment, run_id=self.run_id,
            user=self._user, volume=self.volume, name=name,
        )

    async def _before_create(self) -> None:
        if not self._volume_made:
            labels = hardening.run_labels(self.run_id)
            await asyncio.to_thread(self._client.volumes.create, name=self.volume, labels=labels)
            self._volume_made = True

    async def _created(self, container_id: str) -> None:
        if self._packer is None:  # the volume outlives a second agent container: copy once
            await self._copy_in(container_id)

    async def _started(self, container_id: str, process: DockerAgentProcess) -> None:
        tunnel = BrokerTunnel(self._client.api, container_id, self._spec.broker.unix_socket,
                              user=f"{self._user[0]}:{self._user[1]}",
                              on_lost=lambda reason: self._tunnel_lost(process, reason))
        self._tunnels.append(tunnel)
        await tunnel.start()

    def _tunnel_lost(self, process: DockerAgentProcess, reason: str) -> None:
        """The tunnel ended: normal when the agent exits; otherwise the agent is cut off from the broker."""

        async def check() -> None:
            await asyncio.sleep(1.0)  # the agent's own stream ends at about the same time when it exits
            if process.running and not self._closed:
                logger.warning("run %s: %s; stopping the agent", self.run_id, reason)
                process.add_note(f"{reason}; the agent could not reach the broker any more, so it was stopped")
                try:
                    await process.kill()
                except SandboxError as e:
                    logger.warning("%s", e)

        self._watchers.add(task := asyncio.ensure_future(check()))
        task.add_done_callback(self._watchers.discard)

    # -- the workspace over the wire -------------------------------------------------

    async def _copy_in(self, container_id: str) -> None:
        packer = WorkspacePacker(self._spec.workspace, uid=self._user[0], gid=self._user[1])
        start = time.monotonic()
        try:
            ok = await asyncio.to_thread(self._client.api.put_archive, container_id, hardening.WORKSPACE,
                                         packer.chunks())
        except Exception as e:
            raise self._error("copy the workspace to the Docker host", e) from e
        if not ok:
            raise SandboxError(f"The Docker host {self._endpoint.label} refused the workspace archive.")
        self._packer = packer
        self.transfer.update(bytes_in=packer.bytes, seconds_in=round(time.monotonic() - start, 3))
        if packer.skipped:
            logger.warning("not copied to the sandbox (links pointing out, hard links, special files): %s",
                           ", ".join(packer.skipped[:20]))

    def _host_changed(self, rel: str) -> bool:
        """Whether the host wrote the file ``rel`` during the run (then its version is kept)."""
        try:
            fd = open_beneath(self._spec.workspace, rel, os.O_PATH)
        except OSError:
            return False  # absent (or behind a link): nothing of the host's to keep
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if not stat.S_ISREG(st.st_mode):
            return False  # a link is replaced (never followed); a folder in the way is refused
        sent = self._packer.sent.get(rel) if self._packer else None
        return sent != (st.st_size, st.st_mtime_ns)

    def _copy_back(self, container_id: str) -> None:
        start = time.monotonic()
        chunks, _ = self._client.api.get_archive(container_id, hardening.WORKSPACE, chunk_size=ARCHIVE_CHUNK)
        report = extract_archive(
            chunks, self._spec.workspace, strip=os.path.basename(hardening.WORKSPACE),
            max_bytes=self._config.max_collect_bytes, max_files=self._config.max_collect_files,
            keep=self._host_changed,
        )
        if self._packer is not None:  # what came back is ours now, not a host-side change
            for rel in report.written:
                try:
                    st = os.lstat(self._spec.workspace / rel)
                    self._packer.sent[rel] = (st.st_size, st.st_mtime_ns)
                except OSError:
                    pass
        self.transfer.update(bytes_out=report.bytes, seconds_out=round(time.monotonic() - start, 3))
        if report.rejected:
            logger.warning("run %s: %d item(s) not copied back: %s", self.run_id, len(report.rejected),
                           "; ".join(report.rejected[:10]))

    async def collect(self) -> None:
        """Copy the workspace back into the host run folder (safely; see ``archive.py``)."""
        if not self._container_ids:
            return
        try:
            await asyncio.to_thread(self._copy_back, self._container_ids[-1])
        except SandboxError:
            raise
        except Exception as e:
            raise self._error("copy the workspace back from the Docker host", e) from e
        self._collected = True

    # -- closing ---------------------------------------------------------------------

    async def _reachable(self) -> bool:
        if not self._container_ids and not self._volume_made:
            return True  # nothing was made there
        try:
            await asyncio.to_thread(self._ping)
            return True
        except Exception as e:  # noqa: BLE001 - any failure means "not reachable now"
            logger.warning("the Docker host %s is unreachable: %s", self._endpoint.label, e)
            return False

    def _ping(self) -> None:
        api = self._client.api
        api._get(api._url("/_ping"), timeout=self._config.connect_timeout).raise_for_status()

    async def _before_remove(self, problems: list[str], reachable: bool) -> None:
        for task in list(self._watchers):
            task.cancel()
        for tunnel in self._tunnels:
            await tunnel.close()
        if not reachable:
            problems.append(
                f"the Docker host {self._endpoint.label} is unreachable, so the workspace could not be copied "
                f"back and container(s) {', '.join(c[:12] for c in self._container_ids)} and volume "
                f"{self.volume} are left there"
            )
        elif self._container_ids and not self._collected:
            try:
                await self.collect()
            except SandboxError as e:
                problems.append(f"copying the workspace back: {e}")


class RemoteDockerExecutor(Executor):
    """Run the agent in a hardened container on a remote Docker engine."""

    name = "remote-docker"
    isolates = True

    def __init__(self, config: RemoteDockerExecutorConfig) -> None:
        self.config = config
        self._client = None
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

    async def _connect(self) -> None:
        if self._client is None:
            timeout = self.config.connect_timeout
            self._client = await asyncio.to_thread(
                connect, self.endpoint, ping_timeout=timeout, api_timeout=(timeout, 300.0))

    def _local_engine(self):
        """The engine on this machine, to build and ship the image from (DOCKER_HOST may name the remote one)."""
        env = dict(os.environ)
        if self.endpoint.source == "DOCKER_HOST":
            for name in ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"):
                env.pop(name, None)
        return _connect(environment=env)

    async def check(self) -> None:
        async with self._lock:
            await self._connect()
            if self._image is None:
                self._image = await asyncio.to_thread(
                    remote_image, self._client, self._local_engine, image=self.config.image,
                    host=self.endpoint.host)

    async def prepare(self, spec: SandboxSpec) -> RemoteDockerSandbox:
        await self.check()
        check_spec(spec)
        assert self._client is not None and self._image is not None
        return RemoteDockerSandbox(self._client, self.config, spec, self._image, endpoint=self.endpoint)

    async def gc(self, older_than_seconds: float = 0.0) -> list[str]:
        await self._connect()
        try:
            return await asyncio.to_thread(cleanup.gc, self._client, older_than_seconds)
        except SandboxError as e:
            raise SandboxError(f"{e} (Docker host {self.endpoint.label})") from e


__all__ = ["RemoteDockerExecutor", "RemoteDockerSandbox"]
