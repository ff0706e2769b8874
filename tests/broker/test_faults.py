"""Upstream failures: what is retried, what is reported, and that nothing hangs."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from broker_harness import SCRIPT
from support import FAKE_UPSTREAM_KEY

from fsrlm.config import UpstreamConfig
from fsrlm.testing.scripted_model import Fault

pytestmark = pytest.mark.timeout(30)

TOOLS = [{"name": "Bash", "description": "run", "input_schema": {"type": "object"}}]
ROOT = {"model": "claude-sonnet-4-5", "max_tokens": 100, "stream": True, "tools": TOOLS,
        "messages": [{"role": "user", "content": "hi"}]}


async def test_429_with_retry_after_is_honoured(start_broker, scripted) -> None:
    b = await start_broker(max_retries=2)
    scripted.inject(Fault(status=429, retry_after=1), kind="subcall")
    started = time.monotonic()
    reply = await b.subcall("ECHO: patient")
    elapsed = time.monotonic() - started
    assert reply.status == 200, reply.raw
    assert reply.json["text"] == "patient"
    assert len(scripted.requests) == 2
    assert elapsed >= 0.9  # waited as told, not the 0.01 s base backoff
    assert [r.status for r in b.broker.records] == ["ok"]


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504, 529, 408])
async def test_transient_statuses_are_retried(start_broker, scripted, status) -> None:
    b = await start_broker(max_retries=3)
    scripted.inject(Fault(status=status), Fault(status=status), kind="subcall")
    reply = await b.subcall("ECHO: eventually")
    assert reply.status == 200, reply.raw
    assert reply.json["text"] == "eventually"
    assert len(scripted.requests) == 3
    assert (await b.budget(SCRIPT))["script_subcalls_used"] == 1


async def test_a_dropped_connection_is_retried(start_broker, scripted) -> None:
    b = await start_broker(max_retries=2)
    scripted.inject(Fault(drop_mid_stream=True), kind="subcall")
    reply = await b.subcall("ECHO: again")
    assert reply.status == 200, reply.raw
    assert reply.json["text"] == "again"
    assert len(scripted.requests) == 2


async def test_persistent_overload_gives_502_and_releases_the_slot(start_broker, scripted) -> None:
    b = await start_broker(max_retries=2, max_subcalls_per_script=1, max_total_subcalls=1)
    scripted.inject(*[Fault(status=529)] * 3, kind="subcall")
    reply = await b.subcall("ECHO: overloaded")
    assert reply.status == 502
    assert reply.error["type"] == "upstream_error"
    assert "529" in reply.error["message"]
    assert len(scripted.requests) == 3  # one try plus max_retries
    budget = await b.budget(SCRIPT)
    assert (budget["subcalls_used"], budget["script_subcalls_used"], budget["spent_usd"]) == (0, 0, 0.0)
    assert b.broker.records[-1].status == "error"
    assert b.broker.fatal_errors == []  # transient trouble is not fatal
    # The released slot is usable: with caps of one, the next call still goes through.
    again = await b.subcall("ECHO: overloaded")
    assert again.status == 200, again.raw
    assert again.json["cached"] is False  # the failure was not cached


@pytest.mark.parametrize("status", [400, 404, 413])
async def test_client_errors_are_not_retried(start_broker, scripted, status) -> None:
    b = await start_broker(max_retries=3)
    scripted.inject(Fault(status=status), kind="subcall")
    reply = await b.subcall("ECHO: x")
    assert reply.status == 502
    assert reply.error["type"] == "upstream_error"
    assert len(scripted.requests) == 1
    assert b.broker.fatal_errors == []


@pytest.mark.parametrize("status", [401, 403])
async def test_rejected_credentials_are_fatal_and_not_retried(start_broker, scripted, status) -> None:
    b = await start_broker(max_retries=3)
    scripted.inject(Fault(status=status), kind="subcall")
    reply = await b.subcall("ECHO: x")
    assert len(scripted.requests) == 1
    assert reply.status == 502
    assert reply.error["type"] == "upstream_error"
    assert str(status) in reply.error["message"]
    assert b.broker.fatal_errors and "credentials" in b.broker.fatal_errors[0]
    assert (await b.budget(SCRIPT))["script_subcalls_used"] == 0
    assert FAKE_UPSTREAM_KEY not in reply.raw.decode()


async def test_a_stall_longer_than_the_timeout_is_retried(start_broker, scripted) -> None:
    b = await start_broker(max_retries=2, request_timeout=1)
    scripted.inject(Fault(stall_seconds=5), kind="subcall")
    started = time.monotonic()
    reply = await b.subcall("ECHO: after the stall")
    elapsed = time.monotonic() - started
    assert reply.status == 200, reply.raw
    assert reply.json["text"] == "after the stall"
    assert len(scripted.requests) == 2
    assert 0.9 <= elapsed < 4


async def test_stalls_beyond_the_retries_end_in_an_error_not_a_hang(start_broker, scripted) -> None:
    b = await start_broker(max_retries=1, request_timeout=1)
    scripted.inject(Fault(stall_seconds=5), Fault(stall_seconds=5), kind="subcall")
    started = time.monotonic()
    reply = await b.subcall("ECHO: never")
    assert time.monotonic() - started < 4
    assert reply.status in (502, 504)
    assert reply.error["type"] in ("upstream_error", "upstream_timeout")
    assert len(scripted.requests) == 2
    assert (await b.budget(SCRIPT))["script_subcalls_used"] == 0


async def test_root_call_is_retried_on_overload_and_passed_through(start_broker, scripted) -> None:
    b = await start_broker(max_retries=2)
    scripted.inject(Fault(status=529), kind="root")
    reply = await b.request("POST", "/v1/messages", body=ROOT)
    assert reply.status == 200
    assert reply.headers["content-type"] == "text/event-stream"
    assert b"message_stop" in reply.raw
    assert len(scripted.requests) == 2
    (record,) = b.broker.records
    assert (record.kind, record.status) == ("root", "ok")


async def test_root_call_gets_the_last_overload_answer_when_retries_run_out(start_broker, scripted) -> None:
    b = await start_broker(max_retries=1)
    scripted.inject(Fault(status=529, retry_after=0), Fault(status=529, retry_after=0), kind="root")
    reply = await b.request("POST", "/v1/messages", body=ROOT)
    assert reply.status == 529  # the CLI sees what the API said and applies its own policy
    assert reply.json["error"]["type"] == "overloaded_error"
    assert reply.headers["retry-after"] == "0"
    assert len(scripted.requests) == 2
    assert b.broker.records[-1].status == "error"


async def test_root_401_is_passed_back_and_fatal(start_broker, scripted) -> None:
    b = await start_broker(max_retries=3)
    scripted.inject(Fault(status=401), kind="root")
    reply = await b.request("POST", "/v1/messages", body=ROOT)
    assert reply.status == 401
    assert len(scripted.requests) == 1
    assert b.broker.fatal_errors


async def test_root_stream_dropped_midway_is_not_presented_as_complete(start_broker, scripted) -> None:
    b = await start_broker(max_retries=2)
    scripted.inject(Fault(drop_mid_stream=True), kind="root")
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(b.endpoint.unix_socket))) as s:
        with pytest.raises(aiohttp.ClientPayloadError):
            async with s.post("http://broker/v1/messages", json=ROOT, headers={"x-api-key": b.token}) as r:
                assert r.status == 200
                await r.read()
    (record,) = b.broker.records
    assert record.status == "error"
    assert "interrupted" in (record.error or "")
    assert record.input_tokens > 0  # message_start arrived before the drop: what was used is counted
    assert (await b.request("GET", "/fsrlm/v1/health")).status == 200


async def test_unreachable_upstream_gives_502(start_broker, unused_tcp_port) -> None:
    upstream = UpstreamConfig(type="compatible", base_url=f"http://127.0.0.1:{unused_tcp_port}",
                              api_key=FAKE_UPSTREAM_KEY, max_retries=1)
    b = await start_broker(upstream=upstream)
    reply = await b.subcall("ECHO: x")
    assert reply.status == 502
    assert reply.error["type"] == "upstream_error"
    root = await b.request("POST", "/v1/messages", body=ROOT)
    assert root.status == 502
    assert [r.status for r in b.broker.records] == ["error", "error"]
    assert (await b.budget(SCRIPT))["script_subcalls_used"] == 0


# -- an upstream that breaks inside the body ----------------------------------------------


@pytest.fixture
async def truncating_upstream() -> AsyncIterator[dict[str, Any]]:
    """Answers the first request with headers and half a JSON body, then drops; later ones are fine."""
    state: dict[str, Any] = {"hits": 0}

    async def handle(request: web.Request) -> web.StreamResponse:
        state["hits"] += 1
        body = await request.json()
        message = json.dumps({
            "id": "msg_1", "type": "message", "role": "assistant", "model": body["model"],
            "content": [{"type": "text", "text": "whole"}], "stop_reason": "end_turn",
            "usage": {"input_tokens": 5, "output_tokens": 1},
        }).encode()
        if state["hits"] > 1:
            return web.Response(body=message, content_type="application/json")
        resp = web.StreamResponse(headers={"content-type": "application/json", "content-length": str(len(message))})
        await resp.prepare(request)
        await resp.write(message[:10])
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.abort()
        return resp

    app = web.Application()
    app.router.add_post("/v1/messages", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state["url"] = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield state
    finally:
        await runner.cleanup()


async def test_a_connection_dropped_inside_the_body_is_retried(start_broker, truncating_upstream) -> None:
    upstream = UpstreamConfig(type="compatible", base_url=truncating_upstream["url"], api_key=FAKE_UPSTREAM_KEY,
                              max_retries=2)
    b = await start_broker(upstream=upstream)
    reply = await b.subcall("ECHO: x")
    assert reply.status == 200, reply.raw
    assert reply.json["text"] == "whole"
    assert truncating_upstream["hits"] == 2
