"""The ``docker`` executor: the agent in a locked-down container on the local Docker engine.

``DockerExecutor.check`` makes sure the engine answers and the sandbox image
is current; ``prepare`` returns a ``DockerSandbox`` for one run's workspace,
which is bind-mounted at ``/workspace`` (the only writable mount). The broker's
unix socket is bind-mounted read-only at ``/run/fsrlm/broker.sock``; the
image's entrypoint starts a relay from ``127.0.0.1:8080`` (container loopback;
there is no other network) to it.

User: the orchestrator's uid:gid when it is not root; when it is root, uid
1000 (the image's ``sandbox`` user) — then the workspace tree and the socket
are handed to 1000 before the run and back afterwards, never following a
symlink.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import stat
from pathlib import Path

from fsrlm.executors.base import Executor, Sandbox, SandboxSpec
from fsrlm.executors.configs import DockerExecutorConfig
from fsrlm.executors.docker import cleanup, hardening
from fsrlm.executors.docker.image import cli_binary, ensure_image
from fsrlm.executors.docker.process import DockerAgentProcess

from fsrlm.errors import ExecutorUnavailable, ImageError, SandboxError

logger = logging.getLogger(__name__)

_FIX = "start it with `sudo systemctl start docker` or `scripts/ensure-docker.sh`"
# Variables that must never reach the sandbox: a real key or cloud credentials.
_KEY_VARS = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN")
_FORBIDDEN_PREFIXES = ("AWS_",)
_FORBIDDEN_VARS = ("CLAUDE_CODE_OAUTH_TOKEN",)


def _connect(timeout: float = 120.0, environment: dict[str, str] | None = None):
    """A docker client of the local engine that answered a ping, or ExecutorUnavailable saying how to fix it."""
    try:
        import docker
    except ImportError as e:  # pragma: no cover - docker is a dependency
        raise ExecutorUnavailable("The docker Python package is missing; `pip install docker`.") from e
    try:
        client = docker.from_env(timeout=timeout, environment=environment)
        client.ping()
        return client
    except Exception as e:  # noqa: BLE001 - from_env/ping raise DockerException, OSError, requests errors
        installed = shutil.which("docker") or shutil.which("dockerd") or os.path.exists("/var/run/docker.sock")
        what = "the Docker daemon is not running or not reachable" if installed else "Docker is not installed"
        detail = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ExecutorUnavailable(f"Cannot use the docker executor: {what} ({detail}); {_FIX}.") from None


def sandbox_user() -> tuple[int, int]:
    """The uid:gid the agent runs as."""
    if os.geteuid() == 0:
        return hardening.SANDBOX_UID, hardening.SANDBOX_GID
    return os.getuid(), os.getgid()


def chown_tree(root: Path, uid: int, gid: int, *, drop_setid: bool = False) -> None:
    """``chown -R --no-dereference`` that cannot be tricked into leaving ``root``.

    Walks with directory descriptors (``O_NOFOLLOW`` at every step), changes
    symlinks themselves, and skips files with more than one hard link (they
    may be shared with a file outside the workspace). With ``drop_setid``
    (handing a workspace back), regular files not owned by root also lose their
    setuid/setgid bits, hard-linked ones included: the sandbox must not leave a
    setuid executable of its uid on the host.
    """
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    top = os.open(root, flags)
    try:
        os.chown(top, uid, gid)
        stack = [top]
        while stack:
            fd = stack.pop()
            try:
                with os.scandir(fd) as entries:
                    for entry in entries:
                        try:
                            st = entry.stat(follow_symlinks=False)
                            if stat.S_ISDIR(st.st_mode):
                                stack.append(os.open(entry.name, flags, dir_fd=fd))
                                os.chown(stack[-1], uid, gid)
                                continue
                            if drop_setid and stat.S_ISREG(st.st_mode) and st.st_mode & _SETID and st.st_uid != 0:
                                _drop_setid(fd, entry.name)
                            if st.st_nlink > 1 and not stat.S_ISLNK(st.st_mode):
                                logger.debug("not changing the owner of %s: it has hard links", entry.name)
                            else:
                                os.chown(entry.name, uid, gid, dir_fd=fd, follow_symlinks=False)
                        except FileNotFoundError:
                            continue
            finally:
                if fd != top:
                    os.close(fd)
    finally:
        os.close(top)


_SETID = stat.S_ISUID | stat.S_ISGID


def _drop_setid(dir_fd: int, name: str) -> None:
    """Clear the setuid/setgid bits of the regular file ``name``, never through a link."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as e:
        logger.warning("could not clear the setuid bits of %s: %s", name, e)
        return
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_uid != 0:
            os.fchmod(fd, stat.S_IMODE(st.st_mode) & ~_SETID)
    finally:
        os.close(fd)


def check_agent_env(env: dict[str, str]) -> None:
    """Refuse an environment that carries a real key or cloud credentials."""
    token = env.get("FSRLM_BROKER_TOKEN")
    for name in _KEY_VARS:
        if name in env and env[name] != token:
            raise SandboxError(
                f"Refusing to start the sandbox: {name} holds something other than the run token; "
                "real keys stay in the broker."
            )
    bad = sorted(k for k in env if k.startswith(_FORBIDDEN_PREFIXES) or k in _FORBIDDEN_VARS)
    if bad:
        raise SandboxError(f"Refusing to start the sandbox: credentials in its environment ({', '.join(bad)}).")


def plumbing_env() -> dict[str, str]:
    """Variables the sandbox itself sets; they win over the caller's."""
    return {
        "FSRLM_BROKER_URL": hardening.RELAY_URL,
        "ANTHROPIC_BASE_URL": hardening.RELAY_URL,
        "FSRLM_WORKSPACE": hardening.WORKSPACE,
        "FSRLM_BROKER_SOCKET": hardening.BROKER_SOCKET,
        "PYTHONPATH": f"{hardening.WORKSPACE}/tools",
        "HOME": hardening.HOME,
        "CLAUDE_CONFIG_DIR": f"{hardening.WORKSPACE}/.agent",
        "CLAUDE_CODE_TMPDIR": "/tmp",
        "BASH_ENV": "/opt/fsrlm/agent-shell.sh",  # the agent's commands are the OOM killer's first choice
        "TMPDIR": "/tmp",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }


def _docker_message(e: Exception) -> str:
    return getattr(e, "explanation", None) or str(e)


class DockerSandbox(Sandbox):
    """One run's container(s). Tests may set ``cli_path`` to run another program."""

    def __init__(
        self,
        client,
        config: DockerExecutorConfig,
        spec: SandboxSpec,
        image: str,
        *,
        user: tuple[int, int],
        chowned: bool,
        shared_cli: Path | None = None,
    ) -> None:
        self.workspace_path = hardening.WORKSPACE
        self._shared_cli = shared_cli
        self.cli_path = hardening.CLI_PATH
        self._client = client
        self._config = config
        self._spec = spec
        self._image = image
        self._user = user
        self._chowned = chowned
        self._processes: list[DockerAgentProcess] = []
        self._container_ids: list[str] = []
        self._closed = False
        self._close_lock = asyncio.Lock()

    @property
    def run_id(self) -> str:
        return self._spec.run_id

    @property
    def container_ids(self) -> list[str]:
        return list(self._container_ids)

    async def start_agent(self, argv: list[str], env: dict[str, str]) -> DockerAgentProcess:
        if self._closed:
            raise SandboxError("This sandbox is closed; prepare a new one.")
        check_agent_env(env)
        environment = {**env, **plumbing_env()}
        name = f"fsrlm-{_safe_name(self.run_id)}-{secrets.token_hex(3)}"
        options = self._container_options([self.cli_path, *argv], environment, name)
        api = self._client.api
        try:
            await self._before_create()
            container_id = await asyncio.to_thread(self._create, api, options)
        except Exception as e:
            raise self._error("create the agent container", e) from e
        self._container_ids.append(container_id)
        try:
            await self._created(container_id)
            attached = await asyncio.to_thread(
                api.attach_socket, container_id, {"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
            )
        except Exception as e:
            raise self._error("attach to the agent container", e) from e
        process = DockerAgentProcess(api, container_id, attached, timeout_seconds=self._spec.timeout_seconds,
                                     lost_after=self._lost_after, kill_when_detached=self._remote,
                                     engine=self._engine_name())
        self._processes.append(process)
        try:
            await asyncio.to_thread(api.start, container_id)
            await self._started(container_id, process)
        except Exception as e:
            raise self._error("start the agent container", e) from e
        logger.debug("started %s (%s) for run %s", name, container_id[:12], self.run_id)
        return process

    # -- hooks of the remote sandbox (executors/docker/remote.py) ---------------------

    _lost_after = 10  # failed attempts to reach the daemon before a running agent counts as lost
    _remote = False  # streams cross a network: a broken stream means the agent is lost

    def _container_options(self, command: list[str], environment: dict[str, str], name: str):
        return hardening.container_options(
            self._config,
            image=self._image,
            command=command,
            environment=environment,
            run_id=self.run_id,
            user=self._user,
            workspace=self._spec.workspace,
            broker_socket=self._spec.broker.unix_socket,
            cli_binary=self._shared_cli,
            name=name,
        )

    async def _before_create(self) -> None:
        """Before the container is created."""

    async def _created(self, container_id: str) -> None:
        """The container exists and has not started."""

    async def _started(self, container_id: str, process: DockerAgentProcess) -> None:
        """The container started."""

    async def _reachable(self) -> bool:
        return True

    async def _before_remove(self, problems: list[str], reachable: bool) -> None:
        """The agent processes are stopped; the containers are still there."""

    async def _after_remove(self, problems: list[str]) -> None:
        """Everything the run made on the engine is removed (or ``problems`` says why not)."""
        if self._chowned and not problems:
            uid, gid = os.getuid(), os.getgid()
            try:
                await asyncio.to_thread(_give_back, self._spec, uid, gid)
            except OSError as e:
                problems.append(f"giving the workspace back to uid {uid}: {e}")

    def _fix(self) -> str:
        return f"is the Docker daemon up? ({_FIX})"

    def _engine_name(self) -> str:
        return "the Docker daemon"

    @staticmethod
    def _create(api, options: hardening.ContainerOptions) -> str:
        host_config = api.create_host_config(**options.host_config)
        return api.create_container(**options.create, host_config=host_config)["Id"]

    def _error(self, what: str, e: Exception) -> SandboxError:
        import docker.errors

        if isinstance(e, SandboxError):
            return e
        if isinstance(e, docker.errors.ImageNotFound):
            return ImageError(f"Cannot {what}: image {self._image} is missing; `fsrlm image build`.")
        if isinstance(e, docker.errors.APIError):
            return SandboxError(f"Cannot {what} for run {self.run_id}: {_docker_message(e)}")
        return SandboxError(f"Cannot {what} for run {self.run_id}: {e}; {self._fix()}")

    async def collect(self) -> None:
        """Nothing to copy: the workspace is a bind mount."""

    async def close(self) -> None:
        async with self._close_lock:
            if self._closed:
                return
            self._closed = True
            problems: list[str] = []
            reachable = await self._reachable()
            for process in self._processes:
                if reachable:
                    with contextlib.suppress(SandboxError):
                        await process.kill()
                await process.aclose()
            await self._before_remove(problems, reachable)
            if reachable:
                for container_id in self._container_ids:
                    try:
                        await asyncio.to_thread(self._remove_container, container_id)
                    except Exception as e:  # noqa: BLE001 - report, then go on cleaning
                        problems.append(f"container {container_id[:12]}: {_docker_message(e)}")
                try:
                    await asyncio.to_thread(cleanup.remove_run, self._client, self.run_id)
                except SandboxError as e:
                    problems.append(str(e))
            await self._after_remove(problems)
            if problems:
                raise SandboxError(
                    f"Cleaning up run {self.run_id} left problems: {'; '.join(problems)}. "
                    f"Run `{self._gc_command()}` to remove leftovers."
                )

    def _gc_command(self) -> str:
        return "fsrlm gc"

    def _remove_container(self, container_id: str) -> None:
        import docker.errors

        try:
            self._client.api.remove_container(container_id, force=True, v=True)
        except docker.errors.NotFound:
            pass


def check_spec(spec: SandboxSpec) -> None:
    """The workspace is a folder and the broker's socket is a unix socket."""
    if not spec.workspace.is_dir():
        raise SandboxError(f"The workspace {spec.workspace} does not exist or is not a folder.")
    try:
        st = os.lstat(spec.broker.unix_socket)
    except OSError as e:
        raise SandboxError(f"The broker socket {spec.broker.unix_socket} is missing: {e}") from e
    if not stat.S_ISSOCK(st.st_mode):
        raise SandboxError(f"{spec.broker.unix_socket} is not a unix socket.")


def _safe_name(run_id: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "_.-" else "-" for c in run_id).strip("-.")
    return cleaned[:40] or "run"


def _give_back(spec: SandboxSpec, uid: int, gid: int) -> None:
    if spec.workspace.is_dir():
        chown_tree(spec.workspace, uid, gid, drop_setid=True)
    with contextlib.suppress(FileNotFoundError):
        os.chown(spec.broker.unix_socket, uid, gid, follow_symlinks=False)


class DockerExecutor(Executor):
    """Run the agent in a hardened container on the local Docker engine."""

    name = "docker"
    isolates = True

    def __init__(self, config: DockerExecutorConfig) -> None:
        self.config = config
        self._client = None
        self._image: str | None = None
        self._lock = asyncio.Lock()

    async def check(self) -> None:
        async with self._lock:
            if self._client is None:
                self._client = await asyncio.to_thread(_connect)
            if self._image is None:
                self._image = await asyncio.to_thread(self._ensure_image)

    def _ensure_image(self) -> str:
        import docker.errors

        if self.config.image is None:
            return ensure_image(self._client)
        try:
            self._client.images.get(self.config.image)
        except docker.errors.ImageNotFound:
            raise ImageError(
                f"Image {self.config.image} (executor.image) is not on this Docker host; "
                "`docker pull`/`docker load` it, or unset executor.image to build the default one."
            ) from None
        except docker.errors.DockerException as e:
            raise ExecutorUnavailable(f"Cannot query Docker for {self.config.image}: {e}; {_FIX}.") from e
        return self.config.image

    @property
    def image(self) -> str | None:
        return self._image

    async def prepare(self, spec: SandboxSpec) -> DockerSandbox:
        await self.check()
        check_spec(spec)
        workspace = spec.workspace
        user = sandbox_user()
        chowned = os.geteuid() == 0 and user != (os.getuid(), os.getgid())
        if chowned:
            try:
                await asyncio.to_thread(chown_tree, workspace, *user)
                os.chown(spec.broker.unix_socket, *user, follow_symlinks=False)
            except OSError as e:
                raise SandboxError(f"Cannot hand the workspace {workspace} to uid {user[0]}: {e}") from e
        assert self._client is not None and self._image is not None
        # Only the default image is known (by its fingerprint) to hold this very binary.
        shared_cli = cli_binary() if self.config.share_cli and self.config.image is None else None
        return DockerSandbox(self._client, self.config, spec, self._image, user=user, chowned=chowned,
                             shared_cli=shared_cli)

    async def gc(self, older_than_seconds: float = 0.0) -> list[str]:
        if self._client is None:
            self._client = await asyncio.to_thread(_connect)
        return await asyncio.to_thread(cleanup.gc, self._client, older_than_seconds)


__all__ = ["DockerExecutor", "DockerSandbox", "check_agent_env", "check_spec", "chown_tree", "plumbing_env",
           "sandbox_user"]
