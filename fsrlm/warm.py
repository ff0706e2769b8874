"""Sandboxes ready before they are needed: a warm pool, each sandbox used for exactly one run.

A cold run pays, before the agent's first turn, for creating and starting the
container, the in-sandbox relay and the Claude Code CLI's own start-up. A
``WarmPool`` pays that ahead of time: each ``WarmSlot`` is an ordinary run's
sandbox — the same hardened container, the same contract — created for a run
that does not exist yet:

* its run folder is made at once (``Workspace.create``: the template is there from
  the start; the input is written when a run takes the slot);
* its broker socket is bound and listening (``BrokerSocket``) and mounted into the
  container; the run's broker adopts it when the run starts, and connections wait
  in the backlog until then (the CLI makes none before its first message);
* the CLI is already started inside, with the run's id and token, and has answered
  the SDK's ``initialize`` request, so the start-up work it holds until its host has done that
  (plugins, permissions, its idle start-up tasks) is done too, not beside the run's first turn
  (measured: J1 from a warm pool 0.66 s against 0.72 s, medians of 9 interleaved runs); it waits
  on stdin for the run's own ``initialize``, which it answers again, and the run's first message;
  its wall-clock limit starts when a run takes it;
* until a run takes it, the container has the lowest CPU weight (``SandboxSpec.standby``):
  refilling the pool while runs go on takes only the CPU they leave idle, and the
  usual weight is restored when its run starts (every limit is the same throughout);
* while a slot is still ready, the pool refills when a run ends rather than beside the
  runs: starting a sandbox takes the engine and the CPU (a second of both on 2 cores,
  several under gVisor, which has no CPU weights to change), and a run under way would
  pay for it. A pool that has run dry refills at once, one sandbox per core at a time.

A slot fits a run when its CLI was started with the arguments the run needs (the
pool's configuration, and the run's system prompt: a run with another system
prompt runs cold, and the pool refills for the new one). A slot is never reused:
after its run it is closed like any sandbox, and the pool starts another in the
background. ``close`` removes every slot not taken; a pool never outlives its
process: its containers carry the usual labels (``fsrlm gc`` reaps those of a
process that died), and an ``atexit`` hook closes what is still open.

Only the ``docker`` executor has a warm pool (``executor.warm = N``): the remote
engine copies the workspace in before the container starts, and the local
executor has no container to start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import Callable

from fsrlm.agent import InitializedAgent, initialize_ahead, run_argv
from fsrlm.broker.endpoint import BrokerEndpoint, BrokerSocket
from fsrlm.config import RLMConfig
from fsrlm.errors import FsrlmError, SandboxError
from fsrlm.executors.base import AgentProcess, Executor, Sandbox, SandboxInfo, SandboxSpec
from fsrlm.executors.contract import AgentContract
from fsrlm.executors.registry import create_executor
from fsrlm.workspace import Workspace

logger = logging.getLogger(__name__)


class WarmSlot:
    """One sandbox started ahead of time for one future run. An executor for exactly that run's spec."""

    def __init__(self, *, run_id: str, token: str, workspace: Workspace, socket: BrokerSocket, sandbox: Sandbox,
                 process: InitializedAgent, argv: list[str], system: str | None,
                 info: SandboxInfo | None = None) -> None:
        self.run_id = run_id
        self.info = info  # which kernel the pool's executor chose
        self.token = token
        self.workspace = workspace
        self.socket = socket
        self.system = system
        self._sandbox = sandbox
        self._process = process
        self._argv = argv
        self.taken = False
        self._activated: asyncio.Task[None] | None = None
        self.on_run_end: Callable[[], None] | None = None

    @property
    def alive(self) -> bool:
        return bool(getattr(self._process, "running", True))

    async def check(self) -> None:
        return None

    def describe(self) -> SandboxInfo:
        return self.info or SandboxInfo(executor="docker", kernel="host")

    def take(self, on_run_end: Callable[[], None] | None = None) -> None:
        """A run has this slot: its container gets a running sandbox's CPU weight (in the background:
        the run does not wait for the engine). ``on_run_end`` is called once, when that run's sandbox
        is closed or the slot discarded."""
        self.taken = True
        self.on_run_end = on_run_end
        self._activated = asyncio.ensure_future(self._sandbox.activate())

    async def prepare(self, spec: SandboxSpec) -> Sandbox:
        if spec.workspace != self.workspace.root or spec.broker.unix_socket != self.socket.path:
            raise SandboxError(f"warm slot {self.run_id} was prepared for another run folder or broker")
        return _WarmSandbox(self, self._process, spec.timeout_seconds)

    async def end_run(self) -> None:
        """The run this slot served is over: close its sandbox and tell the pool."""
        try:
            await self._settle()
            await self._sandbox.close()
        finally:
            self._run_over()

    async def _settle(self) -> None:
        """Wait for the CPU-weight change ``take`` started."""
        if self._activated is not None:
            try:
                await self._activated
            except SandboxError as e:  # the run went on at the standby weight: slower, never less isolated
                logger.warning("could not raise the warm sandbox's CPU weight: %s", e)
            self._activated = None

    def _run_over(self) -> None:
        """Tell the pool, once, that the run this slot served has ended (closed, or failed before it began)."""
        on_run_end, self.on_run_end = self.on_run_end, None
        if on_run_end is not None:
            on_run_end()

    async def discard(self) -> None:
        """Close a slot no run took: its container, its socket, its (template-only) run folder."""
        await self._settle()
        try:
            await self._sandbox.close()
        except SandboxError as e:
            logger.warning("closing warm slot %s: %s", self.run_id, e)
        self.socket.close()
        self.workspace.remove()
        self._run_over()


class _WarmSandbox(Sandbox):
    """The slot's sandbox, handed to its one run: ``start_agent`` returns the CLI already running."""

    def __init__(self, slot: WarmSlot, process: InitializedAgent, timeout_seconds: float) -> None:
        self._slot = slot
        self._inner = slot._sandbox
        self._process: InitializedAgent | None = process
        self._argv = slot._argv
        self._timeout = timeout_seconds
        self.cli_path = self._inner.cli_path

    async def start_agent(self, argv: list[str]) -> AgentProcess:
        process, self._process = self._process, None
        if process is None:
            raise SandboxError("a warm sandbox serves exactly one agent process")
        if argv != self._argv:
            raise SandboxError("this warm sandbox's CLI was started with other arguments than the run needs")
        process.arm_timeout(self._timeout)  # the wall-clock limit counts from the run's start, not the slot's
        return process

    async def collect(self) -> None:
        await self._inner.collect()

    async def close(self) -> None:
        await self._slot.end_run()


class WarmPool:
    """Keeps up to ``size`` sandboxes started for runs of ``config``; lives on the loop that starts it."""

    def __init__(self, config: RLMConfig, size: int) -> None:
        if config.executor.type != "docker":
            raise FsrlmError(f"a warm pool needs the docker executor (this configuration uses "
                             f"{config.executor.type!r}); set executor.warm only with executor.type = \"docker\"")
        self.config = config
        self.size = size
        self.system: str | None = None  # the system prompt the slots are started for (the last run's)
        self._executor: Executor = create_executor(config.executor)
        self._slots: list[WarmSlot] = []
        self._filling: set[asyncio.Task[None]] = set()
        self._closed = False
        self.made = 0  # slots started, for benchmarks and tests
        self.taken = 0
        self.running = 0  # runs on slots of this pool that have not ended
        # Sandboxes started at once: one per core. A pool that ran dry in a burst of runs refills a
        # few at a time instead of starting all of them beside those runs.
        self.max_filling = max(1, os.cpu_count() or 1)
        self._waiting = 0  # runs in take() waiting for a slot being started

    @property
    def ready(self) -> int:
        return len(self._slots)

    @property
    def filling(self) -> int:
        """Slots being started now."""
        return len(self._filling)

    async def start(self) -> None:
        """Check what a run would check first (credentials, the upstream, the executor), then fill the pool."""
        from fsrlm.run import preflight

        self._executor = await preflight(self.config)
        self._refill()

    def _refill(self) -> None:
        if self._closed or (self.running and self._slots):
            return  # a slot is still ready: refill when a run ends, not beside it
        missing = self.size - len(self._slots) - len(self._filling)
        room = self.max_filling - len(self._filling)
        for _ in range(max(0, min(missing, room))):
            task = asyncio.ensure_future(self._fill_one(self.system))
            self._filling.add(task)
            task.add_done_callback(self._filled)

    def _filled(self, task: asyncio.Task[None]) -> None:
        self._filling.discard(task)
        self._refill()  # the next ones, a few at a time

    async def _fill_one(self, system: str | None) -> None:
        try:
            slot = await self._make_slot(system)
        except Exception as e:  # noqa: BLE001 - a slot that cannot start is a cold run later, not a crash now
            logger.warning("could not start a warm sandbox: %s", e)
            return
        if self._closed or system != self.system:
            await slot.discard()
            return
        self._slots.append(slot)

    async def _make_slot(self, system: str | None) -> WarmSlot:
        from fsrlm.run import limits_of, new_run_id  # the orchestrator imports this module: not at the top

        config = self.config
        run_id, token = new_run_id(), secrets.token_urlsafe(32)
        workspace = Workspace.create(run_id, config.workspace_dir)
        socket = BrokerSocket.create()
        sandbox = None
        try:
            agent = AgentContract(run_id=run_id, token=token, subcall_concurrency=config.subcall_concurrency,
                                  api="bedrock" if config.upstream.type == "bedrock" else "anthropic")
            spec = SandboxSpec(workspace=workspace.root, workspace_id=workspace.identity, broker=BrokerEndpoint(unix_socket=socket.path,
                                                                             open_tcp=_no_tcp),
                               agent=agent, timeout_seconds=0,  # armed when a run takes the slot
                               standby=True)
            sandbox = await self._executor.prepare(spec)
            argv = run_argv(config, limits_of(config).model_dump(), system)
            process = await initialize_ahead(await sandbox.start_agent(argv))
        except BaseException:
            if sandbox is not None:
                with contextlib.suppress(SandboxError):
                    await sandbox.close()
            socket.close()
            workspace.remove()
            raise
        self.made += 1
        return WarmSlot(run_id=run_id, token=token, workspace=workspace, socket=socket, sandbox=sandbox,
                        process=process, argv=argv, system=system, info=self._executor.describe())

    async def take(self, system: str | None) -> WarmSlot | None:
        """A slot started for ``system``, or None (the run goes cold); the pool refills meanwhile.

        When no slot is ready but some are being started, waits for one: a slot already
        starting is never later than a cold start begun now. Only as many runs wait as slots
        are starting; the others start cold at once rather than queue behind them.
        """
        if self._closed:
            return None
        if system != self.system:  # the workload changed: start slots for the new system prompt
            self.system = system
            stale, self._slots = self._slots, []
            for slot in stale:
                asyncio.ensure_future(slot.discard())
        self._refill()
        while True:
            while self._slots:
                slot = self._slots.pop(0)
                if slot.alive:
                    slot.take(on_run_end=self._run_ended)
                    self.taken += 1
                    self.running += 1
                    self._refill()
                    return slot
                asyncio.ensure_future(slot.discard())  # its CLI died while it waited (e.g. memory): never used
            if self._closed or self._waiting >= len(self._filling):
                return None  # every slot being started is spoken for by a run that asked earlier
            self._waiting += 1
            try:
                await asyncio.wait(set(self._filling), return_when=asyncio.FIRST_COMPLETED)
            finally:
                self._waiting -= 1

    def _run_ended(self) -> None:
        self.running -= 1
        self._refill()

    async def close(self) -> None:
        """Remove every slot no run took (and stop filling). Idempotent."""
        self._closed = True
        for task in list(self._filling):
            task.cancel()
        await asyncio.gather(*self._filling, return_exceptions=True)
        slots, self._slots = self._slots, []
        await asyncio.gather(*(slot.discard() for slot in slots), return_exceptions=True)


async def _no_tcp() -> int:
    raise SandboxError("a warm docker sandbox reaches its broker through the mounted socket only")


class WarmRunner:
    """A warm pool on a loop of its own, so one RLM object's runs share it whatever loop calls them.

    ``RLM.invoke`` runs each call in a fresh event loop, and a sandbox's streams belong
    to the loop that started them: an RLM object with ``executor.warm`` therefore runs
    all its runs here, on one private loop thread (events reach ``on_event`` from it).
    """

    def __init__(self, config: RLMConfig, size: int) -> None:
        import atexit
        import threading

        self.pool = WarmPool(config, size)
        self._started: asyncio.Future[None] | None = None
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fsrlm-warm", daemon=True)
        self._thread.start()
        self._closed = False
        atexit.register(self.close)  # a pool never outlives its process

    async def run(self, start):
        """Await ``start(pool)`` (a coroutine factory) on the pool's loop, from any loop."""
        if self._closed:
            raise FsrlmError("this RLM object is closed; make a new one")
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._call(start), self.loop))

    async def _call(self, start):
        if self._started is None:
            self._started = asyncio.ensure_future(self.pool.start())
        await asyncio.shield(self._started)
        return await start(self.pool)

    def close(self) -> None:
        """Remove the slots no run took and stop the loop. Idempotent; safe at interpreter exit."""
        if self._closed:
            return
        self._closed = True
        try:
            asyncio.run_coroutine_threadsafe(self.pool.close(), self.loop).result(timeout=120)
        except Exception as e:  # noqa: BLE001 - at exit: say it, `fsrlm gc` reaps what is left
            logger.warning("closing the warm pool: %s", e)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
