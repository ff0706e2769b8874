"""How a run folder reaches the agent's container, and how it comes back: one of two strategies.

* ``BindMount`` (docker): the run folder itself is bind-mounted at ``/workspace``;
  nothing is copied. When the orchestrator is root, the folder is handed to the
  sandbox's uid before the run and back afterwards (``handback.py``).
* ``VolumeArchive`` (remote-docker): a remote engine cannot mount this machine's
  folders. A per-run named volume is mounted at ``/workspace``; the run folder goes
  in as an archive after the container is created (``archive.WorkspacePacker``) and
  comes back as an archive extracted safely into the run folder
  (``archive.extract_archive``) by ``collect`` — or by ``close`` when the run ended
  before ``collect``. Files the host changed meanwhile (the audit log, the cache
  mirror, the event log) keep the host's version.

``ContainerSandbox`` (``sandbox.py``) calls, in order: ``prepare`` (before the
container exists), ``mount_options`` (for ``hardening.container_options``),
``created`` (the container exists, not started), ``collect``, ``before_remove`` (the
agent is stopped, its containers still exist), ``after_remove``.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import os
import secrets
import stat
import time
from typing import Any

from fsrlm.executors.base import SandboxSpec
from fsrlm.executors.configs import RemoteDockerExecutorConfig
from fsrlm.executors.docker import hardening
from fsrlm.executors.docker.archive import WorkspacePacker, extract_archive
from fsrlm.executors.docker.engine import Engine
from fsrlm.executors.docker.errors import docker_errors
from fsrlm.executors.docker.handback import chown_tree, give_back
from fsrlm.executors.docker.mountcheck import mount_check_env

from fsrlm.errors import SandboxError
from fsrlm.safe_fs import open_beneath

logger = logging.getLogger(__name__)

ARCHIVE_CHUNK = 1024 * 1024


class WorkspaceTransfer(abc.ABC):
    """One strategy for getting the run folder into the sandbox and back."""

    def __init__(self, engine: Engine, spec: SandboxSpec, user: tuple[int, int]) -> None:
        self.engine = engine
        self.spec = spec
        self.user = user

    async def prepare(self) -> None:
        """Before the first container is created."""

    @abc.abstractmethod
    def mount_options(self) -> dict[str, Any]:
        """Keyword arguments of ``hardening.container_options`` that mount the workspace."""

    def environment(self) -> dict[str, str]:
        """Variables the container gets for this transfer (called right before each container is created)."""
        return {}

    async def created(self, container_id: str) -> None:
        """The container exists and has not started."""

    async def collect(self, container_id: str) -> None:
        """Bring the workspace back into the run folder."""

    async def before_remove(self, container_id: str | None, problems: list[str], reachable: bool) -> None:
        """The agent is stopped; its container (``container_id``, the last one) still exists."""

    async def after_remove(self, problems: list[str]) -> None:
        """Everything the run made on the engine is gone (or ``problems`` says why not)."""


class BindMount(WorkspaceTransfer):
    """The run folder is the sandbox's workspace (bind mount); handed to the sandbox uid when we are root."""

    def __init__(self, engine: Engine, spec: SandboxSpec, user: tuple[int, int], *, host_inodes: bool = True) -> None:
        super().__init__(engine, spec, user)
        self.chowned = os.geteuid() == 0 and user != (os.getuid(), os.getgid())
        # Does the container see the host's device and inode numbers? runc: yes; gVisor numbers its own.
        self.host_inodes = host_inodes

    async def prepare(self) -> None:
        if not self.chowned:
            return
        try:
            await asyncio.to_thread(chown_tree, self.spec.workspace, *self.user)
        except OSError as e:
            raise SandboxError(f"Cannot hand the workspace {self.spec.workspace} to uid {self.user[0]}: {e}") from e

    def mount_options(self) -> dict[str, Any]:
        return {"workspace": self.spec.workspace}

    def environment(self) -> dict[str, str]:
        # A bind mount is made by path (Docker follows links in it): the folder is checked here, and the
        # entrypoint checks that /workspace is it (mountcheck.py).
        return mount_check_env(self.spec, in_container=self.host_inodes)

    async def after_remove(self, problems: list[str]) -> None:
        if self.chowned and not problems:
            uid, gid = os.getuid(), os.getgid()
            try:
                await asyncio.to_thread(give_back, self.spec.workspace, uid, gid)
            except OSError as e:
                problems.append(f"giving the workspace back to uid {uid}: {e}")


class VolumeArchive(WorkspaceTransfer):
    """A per-run volume, filled from an archive of the run folder and copied back as one."""

    def __init__(self, engine: Engine, spec: SandboxSpec, user: tuple[int, int],
                 config: RemoteDockerExecutorConfig) -> None:
        super().__init__(engine, spec, user)
        self.config = config
        self.volume = f"fsrlm-{hardening.safe_name(spec.run_id)}-{secrets.token_hex(3)}"
        self.volume_made = False
        self.collected = False
        self._packer: WorkspacePacker | None = None
        #: what moved over the wire: bytes and seconds each way (for benchmarks and logs)
        self.transfer: dict[str, float] = {}

    async def prepare(self) -> None:
        if self.volume_made:
            return
        with docker_errors("create the run's volume", self.engine.ref):
            await asyncio.to_thread(self.engine.client.volumes.create,  # type: ignore[attr-defined]
                                    name=self.volume, labels=hardening.run_labels(self.spec.run_id))
        self.volume_made = True

    def mount_options(self) -> dict[str, Any]:
        return {"volume": self.volume}

    async def created(self, container_id: str) -> None:
        if self._packer is not None:  # the volume outlives a second agent container: copy once
            return
        packer = WorkspacePacker(self.spec.workspace, uid=self.user[0], gid=self.user[1],
                                 expect=self.spec.workspace_id)
        start = time.monotonic()
        with docker_errors("copy the workspace to the sandbox", self.engine.ref):
            ok = await asyncio.to_thread(self.engine.api.put_archive, container_id, hardening.WORKSPACE,
                                         packer.chunks())
        if not ok:
            raise SandboxError(f"{self.engine.ref.label} refused the workspace archive.")
        self._packer = packer
        self.transfer.update(bytes_in=packer.bytes, seconds_in=round(time.monotonic() - start, 3))
        if packer.skipped:
            logger.warning("not copied to the sandbox (links pointing out, hard links, special files): %s",
                           ", ".join(packer.skipped[:20]))

    def _host_changed(self, rel: str) -> bool:
        """Whether the host wrote the file ``rel`` during the run (then its version is kept)."""
        try:
            fd = open_beneath(self.spec.workspace, rel, os.O_PATH)
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
        chunks, _ = self.engine.api.get_archive(container_id, hardening.WORKSPACE, chunk_size=ARCHIVE_CHUNK)
        report = extract_archive(
            chunks, self.spec.workspace, strip=os.path.basename(hardening.WORKSPACE),
            max_bytes=self.config.max_collect_bytes, max_files=self.config.max_collect_files,
            keep=self._host_changed,
        )
        if self._packer is not None:  # what came back is ours now, not a host-side change
            for rel in report.written:
                try:
                    st = os.lstat(self.spec.workspace / rel)
                    self._packer.sent[rel] = (st.st_size, st.st_mtime_ns)
                except OSError:
                    pass
        self.transfer.update(bytes_out=report.bytes, seconds_out=round(time.monotonic() - start, 3))
        if report.rejected:
            logger.warning("run %s: %d item(s) not copied back: %s", self.spec.run_id, len(report.rejected),
                           "; ".join(report.rejected[:10]))

    async def collect(self, container_id: str) -> None:
        with docker_errors("copy the workspace back from the sandbox", self.engine.ref):
            await asyncio.to_thread(self._copy_back, container_id)
        self.collected = True

    async def before_remove(self, container_id: str | None, problems: list[str], reachable: bool) -> None:
        if not reachable:
            problems.append(f"the workspace could not be copied back and volume {self.volume} is left there")
        elif container_id is not None and not self.collected:
            try:
                await self.collect(container_id)
            except SandboxError as e:
                problems.append(f"copying the workspace back: {e}")
