"""Broker defences the security suite asked for: a connection cap, and the budget under a burst of calls."""

from __future__ import annotations

import asyncio

from broker_harness import ask

from fsrlm.broker.server import MAX_CONNECTIONS, ROOT_CONCURRENCY

HALF_A_HEAD = b"POST /fsrlm/v1/subcall HTTP/1.1\r\nHost: broker\r\n"


async def test_idle_connections_past_the_cap_are_closed_oldest_first(start_broker) -> None:
    b = await start_broker()
    cap = MAX_CONNECTIONS + 2 * 4  # the harness runs 4 subcall slots
    held = []
    for _ in range(cap + 40):
        reader, writer = await asyncio.open_unix_connection(str(b.endpoint.unix_socket))
        writer.write(HALF_A_HEAD)
        held.append((reader, writer))
    await asyncio.sleep(0.3)
    try:
        closed = [reader.at_eof() for reader, _ in held]
        assert sum(closed) >= 40
        assert closed[0] and not closed[-1]  # the oldest idle ones went first
        assert (await b.subcall("ECHO: still serving")).json["text"] == "still serving"
    finally:
        for _, writer in held:
            writer.close()


async def test_a_burst_of_subcalls_overruns_the_budget_by_at_most_the_slots(start_broker, scripted) -> None:
    scripted.subcall_latency_ms = 300  # calls overlap, as with a real model
    b = await start_broker(max_budget_usd=0.05)
    big = "words " * 4000
    replies = await asyncio.gather(*(b.subcall(ask(f"ECHO: {i} {big}")) for i in range(20)))
    answered = [r for r in replies if r.status == 200]
    refused = [r for r in replies if r.status == 402]
    assert answered and len(answered) + len(refused) == 20, [r.status for r in replies]
    per_call = b.broker.ledger.shared.subcall_usd / len(answered)
    assert b.broker.ledger.shared.spent_usd <= 0.05 + 4 * per_call  # 4 slots in the harness
    assert {r.error["limit"] for r in refused} == {"max_budget_usd"}
    assert b.broker.ledger.shared.subcalls == len(answered)  # refused calls gave their reservation back


async def test_a_burst_of_root_calls_overruns_the_budget_by_at_most_the_root_slots(start_broker, scripted) -> None:
    scripted.subcall_latency_ms = 300  # a root-model body without tools is answered like a subcall
    b = await start_broker(max_budget_usd=0.5)
    body = {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "w " * 300000}]}
    replies = await asyncio.gather(*(b.request("POST", "/v1/messages", body=body) for _ in range(12)))
    statuses = [r.status for r in replies]
    assert set(statuses) == {200, 402}, statuses
    per_call = b.broker.ledger.shared.root_usd / statuses.count(200)
    # Admitted while under budget, plus at most the calls in flight when it ran out.
    assert b.broker.ledger.shared.spent_usd <= 0.5 + ROOT_CONCURRENCY * per_call, statuses


async def test_absurdly_nested_json_in_a_root_call_is_not_a_500(start_broker) -> None:
    b = await start_broker()
    reply = await b.request("POST", "/v1/messages", data=b"[" * 200000 + b"]" * 200000)
    assert reply.status == 400  # passed through; the (scripted) model API refuses it
    assert reply.json["type"] == "error"


def test_gc_removes_socket_folders_of_dead_brokers_only(tmp_path, monkeypatch) -> None:
    import os
    import socket
    import tempfile

    from fsrlm.broker.endpoint import SOCKET_DIR_PREFIX, remove_stale_socket_dirs

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    folders = {name: tmp_path / f"{SOCKET_DIR_PREFIX}{name}" for name in ("live", "dead", "young", "old")}
    for folder in folders.values():
        folder.mkdir()
    live = socket.socket(socket.AF_UNIX)
    live.bind(str(folders["live"] / "broker.sock"))
    live.listen()
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(folders["dead"] / "broker.sock"))
    dead.close()  # the file stays, nothing listens: a killed orchestrator's
    os.utime(folders["old"], (1, 1))
    try:
        removed = remove_stale_socket_dirs(min_age_seconds=60)
    finally:
        live.close()
    assert sorted(removed) == sorted(str(folders[n]) for n in ("dead", "old"))
    assert folders["live"].exists() and folders["young"].exists()
