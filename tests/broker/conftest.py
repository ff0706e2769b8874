"""Broker-only fixtures: a real ``Broker`` in the test's loop, reached over its unix socket."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from broker_harness import LIMITS, ROOT_MODEL, SUBMODEL, TOKEN, BrokerHandle
from support import FAKE_UPSTREAM_KEY

from fsrlm.broker.limits import RunLimits, SharedLedger
from fsrlm.broker.server import Broker, BrokerSettings
from fsrlm.config import PolicyConfig, UpstreamConfig
from fsrlm.testing.scripted_model import ScriptedModelServer

StartBroker = Callable[..., Awaitable[BrokerHandle]]


@pytest.fixture
async def start_broker(
    scripted: ScriptedModelServer, tmp_path: Path
) -> AsyncIterator[StartBroker]:
    """Factory: ``await start_broker(max_scripts=1, ...)`` → a running broker and a client for it.

    Keyword arguments: any ``RunLimits`` field, ``upstream`` (an ``UpstreamConfig``),
    ``max_retries``, ``request_timeout``, ``cache`` (False: no cache), ``depth``,
    ``shared``, ``nested_runner``, ``workspace``, ``submodel``, ``root_model``, ``policy``
    (a ``PolicyConfig``). Every broker started is stopped at teardown.
    """
    handles: list[BrokerHandle] = []

    async def start(
        *,
        upstream: UpstreamConfig | None = None,
        max_retries: int = 2,
        request_timeout: float = 30.0,
        cache: bool = True,
        depth: int = 0,
        shared: SharedLedger | None = None,
        nested_runner: Any = None,
        workspace: Path | None = None,
        submodel: str = SUBMODEL,
        root_model: str = ROOT_MODEL,
        policy: PolicyConfig | None = None,
        **limits: Any,
    ) -> BrokerHandle:
        n = len(handles)
        ws = workspace or tmp_path / f"run{n}"
        ws.mkdir(parents=True, exist_ok=True)
        settings = BrokerSettings(
            run_id=f"test-run-{n}",
            token=TOKEN,
            workspace=ws,
            submodel=submodel,
            root_model=root_model,
            policy=policy or PolicyConfig(),
            limits=RunLimits(**{**LIMITS, **limits}),
            upstream=upstream or UpstreamConfig(
                type="compatible", base_url=scripted.url, api_key=FAKE_UPSTREAM_KEY,
                max_retries=max_retries, request_timeout_seconds=request_timeout,
            ),
            cache_dir=tmp_path / f"cache{n}" if cache else None,
            subcall_concurrency=4,
            retry_base_wait=0.01,
        )
        broker = Broker(settings, depth=depth, shared=shared, nested_runner=nested_runner)
        endpoint = await broker.start()
        session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(endpoint.unix_socket)))
        handle = BrokerHandle(broker, endpoint, session, ws)
        handles.append(handle)
        return handle

    try:
        yield start
    finally:
        for h in handles:
            await h.session.close()
            await h.broker.stop()
