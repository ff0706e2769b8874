"""One run's locked-down container, on whichever engine, composed of two strategies.

``ContainerSandbox`` is the same for the ``docker`` and ``remote-docker``
executors. What differs is plugged in, not overridden:

* a ``WorkspaceTransfer`` (``transfer.py``): bind mount, or volume plus archives;
* a ``BrokerChannel`` (``channel.py``): mounted socket, or exec-stream tunnel;
* the ``Engine`` (``engine.py``): which client, how messages name it, whether a
  broken stream means the agent is lost.

The container's settings are ``hardening.container_options``; its environment is the
sandbox contract's (``executors/contract.py``). Every Docker call's errors are
mapped by ``errors.docker_errors``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from pathlib import Path

from fsrlm.executors.base import Sandbox, SandboxInfo, SandboxSpec
from fsrlm.executors.configs import DockerExecutorConfig, RemoteDockerExecutorConfig
from fsrlm.executors.contract import SandboxPlaces, agent_environment
from fsrlm.executors.docker import cleanup, hardening
from fsrlm.executors.docker.channel import BrokerChannel
from fsrlm.executors.docker.engine import Engine
from fsrlm.executors.docker.errors import docker_errors, is_not_found
from fsrlm.executors.docker.mountcheck import verify_workspace
from fsrlm.executors.docker.process import DockerAgentProcess
from fsrlm.executors.docker.transfer import WorkspaceTransfer

from fsrlm.errors import SandboxError

logger = logging.getLogger(__name__)

# Set by the image's design, not by a backend: see images/sandbox/.
# The shell of the agent's commands (images/sandbox/agent-shell.sh): the OOM killer's first choice, and under
# gVisor the limits of hardening.gvisor_limits. Not BASH_ENV: the CLI unsets it for its commands.
IMAGE_PLUMBING = {"CLAUDE_CODE_SHELL": hardening.AGENT_SHELL}
CREATE_SETTLE_S = 60.0  # how long a cancelled start waits for the engine's answer to its create call


def sandbox_places(channel: BrokerChannel) -> SandboxPlaces:
    """Where things are inside the image, as the agent sees them."""
    return SandboxPlaces(workspace=hardening.WORKSPACE, broker_url=hardening.RELAY_URL, home=hardening.HOME,
                         tmp="/tmp", plumbing={**IMAGE_PLUMBING, **channel.plumbing()})


class ContainerSandbox(Sandbox):
    """One run's container(s). Tests may set ``cli_path`` to run another program."""

    def __init__(
        self,
        engine: Engine,
        config: DockerExecutorConfig | RemoteDockerExecutorConfig,
        spec: SandboxSpec,
        image: str,
        *,
        user: tuple[int, int],
        workspace: WorkspaceTransfer,
        channel: BrokerChannel,
        shared_cli: Path | None = None,
        runtime: SandboxInfo | None = None,
    ) -> None:
        self.cli_path = hardening.CLI_PATH
        self._runtime = runtime  # the OCI runtime the executor chose (isolation.py)
        self.engine = engine
        self.workspace = workspace
        self.channel = channel
        self.places = sandbox_places(channel)
        self._config = config
        self._spec = spec
        self._image = image
        self._user = user
        self._shared_cli = shared_cli
        self._processes: list[DockerAgentProcess] = []
        self._container_ids: list[str] = []
        self._prepared = False
        self._closed = False
        self._close_lock = asyncio.Lock()
        # gVisor's runsc cannot change a running sandbox's weight (`docker update` fails), so its warm
        # sandboxes start at the usual weight rather than keep the lowest for their whole run.
        self._standby = spec.standby and (runtime is None or runtime.kernel != "gvisor")

    @property
    def run_id(self) -> str:
        return self._spec.run_id

    @property
    def container_ids(self) -> list[str]:
        return list(self._container_ids)

    async def start_agent(self, argv: list[str]) -> DockerAgentProcess:
        if self._closed:
            raise SandboxError("This sandbox is closed; prepare a new one.")
        environment = agent_environment(self._spec.agent, self.places)
        if not self._prepared:
            await self.workspace.prepare()
            await self.channel.prepare()
            self._prepared = True
        # After prepare (which may hand the folder to the sandbox's uid): the transfer checks what it mounts.
        environment.update(self.workspace.environment())
        options = hardening.container_options(
            self._config, image=self._image, command=[self.cli_path, *argv], environment=environment,
            run_id=self.run_id, user=self._user, cli_binary=self._shared_cli, sandbox=self._runtime,
            name=f"fsrlm-{hardening.safe_name(self.run_id)}-{secrets.token_hex(3)}", standby=self._standby,
            **self.workspace.mount_options(), **self.channel.mount_options(),
        )
        api = self.engine.api
        with docker_errors("create the agent container", self.engine.ref):
            container_id = await self._created(asyncio.ensure_future(asyncio.to_thread(self._create, api, options)))
        await self.workspace.created(container_id)
        with docker_errors("attach to the agent container", self.engine.ref):
            attached = await asyncio.to_thread(
                api.attach_socket, container_id, {"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
        process = DockerAgentProcess(api, container_id, attached, timeout_seconds=self._spec.timeout_seconds,
                                     lost_after=self.engine.lost_after, kill_when_detached=self.engine.remote,
                                     engine=self.engine.ref)
        self._processes.append(process)
        with docker_errors("start the agent container", self.engine.ref):
            await asyncio.to_thread(api.start, container_id)
        await self.channel.started(container_id, process)
        logger.debug("started %s for run %s on %s", container_id[:12], self.run_id, self.engine.ref.label)
        return process

    async def activate(self) -> None:
        if not self._standby or not self._container_ids:
            return
        with docker_errors("raise the CPU weight of the warm container", self.engine.ref):
            for container_id in self._container_ids:
                await asyncio.to_thread(self.engine.api.update_container, container_id,
                                        cpu_shares=hardening.ACTIVE_CPU_SHARES)

    async def _created(self, create: asyncio.Future[str]) -> str:
        """The new container's id, recorded for close() even when the caller is cancelled meanwhile.

        The engine call runs in a thread that a cancellation does not stop (a warm pool closed while it
        fills): the container then appears after the caller has given up, and close() would miss it. So
        a cancellation waits for the engine's answer, records what it made, and is raised after.
        """
        try:
            container_id = await asyncio.shield(create)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                self._container_ids.append(await asyncio.wait_for(create, CREATE_SETTLE_S))
            raise
        self._container_ids.append(container_id)
        return container_id

    @staticmethod
    def _create(api, options: hardening.ContainerOptions) -> str:
        host_config = api.create_host_config(**options.host_config)
        return api.create_container(**options.create, host_config=host_config)["Id"]

    async def collect(self) -> None:
        if self._container_ids:
            await self.workspace.collect(self._container_ids[-1])

    async def close(self) -> None:
        async with self._close_lock:
            if self._closed:
                return
            self._closed = True
            problems: list[str] = []
            reachable = await self.engine.reachable() if self._prepared else True
            for process in self._processes:
                if reachable:
                    with contextlib.suppress(SandboxError):
                        await process.kill()
                await process.aclose()
            await self.channel.close()
            last = self._container_ids[-1] if self._container_ids else None
            await self.workspace.before_remove(last, problems, reachable)
            if reachable:
                for container_id in self._container_ids:
                    try:
                        await asyncio.to_thread(self._remove_container, container_id)
                    except SandboxError as e:
                        problems.append(str(e))
                try:
                    await asyncio.to_thread(cleanup.remove_run, self.engine.client, self.run_id)
                except SandboxError as e:
                    problems.append(str(e))
            elif self._container_ids:
                problems.insert(0, f"{self.engine.ref.label} is unreachable, so container(s) "
                                   f"{', '.join(c[:12] for c in self._container_ids)} are left there")
            await self.workspace.after_remove(problems)
            if problems:
                raise SandboxError(f"Cleaning up run {self.run_id} left problems: {'; '.join(problems)}. "
                                   f"Run `{self.engine.gc_command}` to remove leftovers.")

    def _remove_container(self, container_id: str) -> None:
        try:
            with docker_errors(f"remove container {container_id[:12]}", self.engine.ref):
                self.engine.api.remove_container(container_id, force=True, v=True)
        except SandboxError as e:
            if not is_not_found(e):
                raise


def check_spec(spec: SandboxSpec) -> None:
    """The workspace is the folder the host created (the broker socket is checked by the channel that uses it)."""
    if not spec.workspace.is_dir():
        raise SandboxError(f"The workspace {spec.workspace} does not exist or is not a folder.")
    verify_workspace(spec)
