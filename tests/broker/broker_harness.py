"""Broker-only fixtures: a real ``Broker`` in the test's loop, reached over its unix socket.

Test modules import the fixtures from here (``from broker_harness import start_broker``)
rather than from a ``tests/broker/conftest.py``: conftest files outside packages all
share the module name ``conftest``, and a second one would shadow the root conftest
that other test folders import constants from.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from executors.base import BrokerEndpoint
from fsrlm.broker.limits import RunLimits, SharedLedger
from fsrlm.broker.server import Broker, BrokerSettings
from fsrlm.config import UpstreamConfig
from fsrlm.testing.scripted_model import ScriptedModelServer
from support import FAKE_UPSTREAM_KEY  # the root tests/conftest.py

TOKEN = "fsrlm-run-token-0123456789abcdef"
SUBMODEL = "claude-haiku-4-5-scripted"
SCRIPT = "scratch/scripts/map.py"
LIMITS: dict[str, Any] = {
    "max_scripts": 5,
    "max_subcalls_per_script": 20,
    "max_total_subcalls": 50,
    "max_tokens_per_subcall": 300,
    "max_budget_usd": None,
    "max_depth": 1,
}


def ask(text: str, **extra: Any) -> dict[str, Any]:
    """A subcall body with one user message."""
    return {"messages": [{"role": "user", "content": text}], **extra}


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    raw: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.raw)

    @property
    def error(self) -> dict[str, Any]:
        body = self.json
        assert body["type"] == "error", body
        return body["error"]


@dataclass
class BrokerHandle:
    broker: Broker
    endpoint: BrokerEndpoint
    session: aiohttp.ClientSession
    workspace: Path
    token: str = TOKEN

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        token: str | None = TOKEN,
    ) -> Reply:
        sent = {"content-type": "application/json"}
        if token is not None:
            sent["x-api-key"] = token
        sent.update(headers or {})
        if body is not None:
            data = json.dumps(body).encode()
        async with self.session.request(method, "http://broker" + path, data=data, headers=sent) as r:
            return Reply(r.status, {k.lower(): v for k, v in r.headers.items()}, await r.read())

    async def subcall(self, body: dict[str, Any] | str, script: str = SCRIPT, **kw: Any) -> Reply:
        if isinstance(body, str):
            body = ask(body)
        headers = {"x-fsrlm-script": script, **kw.pop("headers", {})}
        return await self.request("POST", "/fsrlm/v1/subcall", body=body, headers=headers, **kw)

    async def budget(self, script: str | None = None) -> dict[str, Any]:
        reply = await self.request("GET", "/fsrlm/v1/budget", headers={"x-fsrlm-script": script} if script else {})
        assert reply.status == 200, reply.raw
        return reply.json

    def audit_lines(self) -> list[dict[str, Any]]:
        path = self.workspace / "state" / "subcalls.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]


StartBroker = Callable[..., Awaitable[BrokerHandle]]


@pytest.fixture
async def start_broker(
    scripted: ScriptedModelServer, tmp_path: Path
) -> AsyncIterator[StartBroker]:
    """Factory: ``await start_broker(max_scripts=1, ...)`` → a running broker and a client for it.

    Keyword arguments: any ``RunLimits`` field, ``upstream`` (an ``UpstreamConfig``),
    ``max_retries``, ``request_timeout``, ``cache`` (False: no cache), ``depth``,
    ``shared``, ``nested_runner``, ``workspace``, ``submodel``. Every broker started is stopped at teardown.
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
