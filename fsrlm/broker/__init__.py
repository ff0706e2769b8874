"""The host-side broker: credentials, limits, cache and audit for one run."""

from fsrlm.broker.audit import CallRecord
from fsrlm.broker.limits import RunLimits, SharedLedger
from fsrlm.broker.server import Broker, BrokerSettings

__all__ = ["Broker", "BrokerSettings", "CallRecord", "RunLimits", "SharedLedger"]
