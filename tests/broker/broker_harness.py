"""Helpers for the broker tests: a client for a running broker and the constants it uses.

The ``start_broker`` fixture that builds them lives in ``tests/broker/conftest.py``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from fsrlm.broker.endpoint import BrokerEndpoint
from fsrlm.broker.server import Broker

TOKEN = "fsrlm-run-token-0123456789abcdef"
SUBMODEL = "claude-haiku-4-5-scripted"
ROOT_MODEL = "claude-sonnet-4-5"  # the run's root model: the policy forwards root calls for it
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
