"""Where many runs go: this machine, or a Ray cluster made ready for fsRLM runs.

Every command that fans runs out (``fsrlm batch``; ``fsrlm bench oolong``, ``compare``
and ``--paper``) takes the same ``FleetOptions`` and opens the same ``Fleet``:

- without ``ray``: a ``LocalBackend`` of ``concurrency`` slots, and the configuration as it is;
- with ``ray``: a ``RayBackend`` whose runtime environment carries the credentials (never a
  task's arguments), the configuration each task gets with ``upstream.api_key`` removed, the
  driver's sandbox image offered to nodes that lack it, and, when the fleet closes, every live
  node swept for leftovers of runs whose worker died.

``max_total_usd`` becomes the fan-out's gate (``budget.TotalBudget``). Connecting is where an
unreachable address, a missing Ray or a cluster with no node advertising sandboxes is refused,
before any run starts, with the same messages for every command.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field

from fsrlm.batch.budget import TotalBudget
from fsrlm.batch.local import LocalBackend
from fsrlm.batch.node import ImageOffer
from fsrlm.batch.runner import Backend, FanOut, FanOutEvent
from fsrlm.config import RLMConfig

logger = logging.getLogger(__name__)

# Variables holding upstream credentials: forwarded to Ray workers (runtime_env env_vars) when set here.
CREDENTIAL_VARS = ("ANTHROPIC_API_KEY", "FSRLM_UPSTREAM_API_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                   "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION")


class FleetOptions(BaseModel):
    """Where the runs go and what bounds them: the options every fan-out command shares."""

    concurrency: int = Field(default=4, ge=1)  # on this machine (without ray)
    ray: str | None = None  # None: this machine; "auto" or an address: a Ray cluster
    max_total_usd: float | None = Field(default=None, gt=0)
    max_attempts: int = Field(default=3, ge=1, le=20)  # per item, when its node dies
    forward_env: list[str] = Field(default_factory=list)  # more variables for the workers' runtime_env
    forward_credentials: bool = True

    @property
    def where(self) -> str:
        """``local`` or the Ray address, as summaries name the backend."""
        return self.ray or "local"


def credentials_env(config: RLMConfig, options: FleetOptions, environ: dict[str, str]) -> dict[str, str]:
    """The runtime_env ``env_vars`` of the Ray job: credentials and chosen variables, never in task arguments."""
    names = list(CREDENTIAL_VARS) if options.forward_credentials else []
    env = {name: environ[name] for name in [*names, *options.forward_env] if environ.get(name)}
    if options.forward_credentials and config.upstream.api_key is not None:
        env["FSRLM_UPSTREAM_API_KEY"] = config.upstream.api_key.get_secret_value()
    return env


def without_secrets(config: RLMConfig) -> RLMConfig:
    return config.model_copy(update={"upstream": config.upstream.model_copy(update={"api_key": None})})


def make_backend(options: FleetOptions, config: RLMConfig, environ: dict[str, str]) -> Backend:
    if options.ray is None:
        return LocalBackend(options.concurrency)
    from fsrlm.batch.ray_backend import RayBackend

    return RayBackend(options.ray, env_vars=credentials_env(config, options, environ))


def total_budget(options: FleetOptions, cost_of: Callable[[Any], float | None] | None = None) -> TotalBudget | None:
    """The gate of ``--max-total-usd`` (None without it)."""
    if options.max_total_usd is None:
        return None
    return TotalBudget(options.max_total_usd, cost_of=cost_of)


def image_offer(config: RLMConfig, backend: Backend) -> ImageOffer | None:
    """The driver's sandbox image, offered to nodes that lack it (docker executor on Ray only)."""
    if config.executor.type != "docker" or config.executor.image is not None:
        return None
    from fsrlm.batch.cluster import offer_image

    return offer_image(backend)


async def sweep_fleet(backend: Backend, config: RLMConfig) -> None:
    """Remove leftovers of dead runs on every live node; a failure is logged, never raised."""
    from fsrlm.batch.cluster import sweep_nodes

    try:
        await sweep_nodes(backend, config)
    except Exception as e:  # noqa: BLE001 - clean-up must not hide the outcome of the runs
        logger.warning("sweeping the nodes for leftovers failed: %s", e)


@dataclass
class Fleet:
    """An open backend, and what each attempt sent to it needs."""

    options: FleetOptions
    backend: Backend
    config: RLMConfig  # the configuration to send with each attempt: on Ray without upstream.api_key
    batch_id: str  # names this fan-out on the nodes (their per-batch preparation)
    image: ImageOffer | None = None  # the driver's sandbox image, for nodes that lack it

    @property
    def on_ray(self) -> bool:
        return self.options.ray is not None

    def fan_out(self, *, gate: TotalBudget | None = None,
                on_event: Callable[[FanOutEvent], None] | None = None) -> FanOut:
        return FanOut(self.backend, gate=gate, max_attempts=self.options.max_attempts, on_event=on_event)


@contextlib.asynccontextmanager
async def open_fleet(options: FleetOptions, config: RLMConfig, environ: dict[str, str], *,
                     sandboxes: bool = True, batch_id: str | None = None) -> AsyncIterator[Fleet]:
    """Connect (refusing, before any run, what cannot work); on Ray sweep the nodes at the end.

    ``sandboxes``: the runs use the executor's sandbox (False for calls that need none, such as
    the OOLONG baseline's single model call), so only then is the sandbox image offered.
    """
    backend = make_backend(options, config, environ)
    async with backend:
        on_ray = options.ray is not None
        sent = without_secrets(config) if on_ray else config
        offer = image_offer(config, backend) if on_ray and sandboxes else None
        fleet = Fleet(options=options, backend=backend, config=sent, batch_id=batch_id or secrets.token_hex(6),
                      image=offer)
        try:
            yield fleet
        finally:
            if on_ray:
                await sweep_fleet(backend, sent)
