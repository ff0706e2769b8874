"""How a sandbox reaches its run's broker: the broker's own type, handed to every executor."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict


class BrokerEndpoint(BaseModel):
    """How a sandbox can reach the run's broker on the host.

    ``unix_socket`` always exists (mode 0600, in a private 0700 folder).
    ``open_tcp`` asks the broker to also listen on a loopback port, for
    backends whose agent runs on the host itself.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    unix_socket: Path
    open_tcp: Callable[[], Awaitable[int]]
