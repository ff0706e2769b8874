"""The host-side broker: credentials, limits, cache and audit for one run."""

from typing import TYPE_CHECKING, Any

from fsrlm.broker.audit import CallRecord
from fsrlm.broker.limits import RunLimits, SharedLedger

if TYPE_CHECKING:
    from fsrlm.broker.server import Broker, BrokerSettings

__all__ = ["Broker", "BrokerSettings", "CallRecord", "RunLimits", "SharedLedger"]


def __getattr__(name: str) -> Any:
    # The server pulls in aiohttp's web stack: load it when a broker is made, not for a CallRecord.
    if name in ("Broker", "BrokerSettings"):
        from fsrlm.broker import server

        return getattr(server, name)
    raise AttributeError(f"module 'fsrlm.broker' has no attribute {name!r}")
