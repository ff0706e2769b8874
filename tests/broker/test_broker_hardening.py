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


async def test_a_burst_of_subcalls_never_spends_past_the_budget(start_broker, scripted) -> None:
    scripted.subcall_latency_ms = 300  # calls overlap, as with a real model
    b = await start_broker(max_budget_usd=0.1)
    big = "words " * 4000
    replies = await asyncio.gather(*(b.subcall(ask(f"ECHO: {i} {big}")) for i in range(20)))
    answered = [r for r in replies if r.status == 200]
    refused = [r for r in replies if r.status == 402]
    assert answered and refused and len(answered) + len(refused) == 20, [r.status for r in replies]
    shared = b.broker.ledger.shared
    assert shared.spent_usd <= 0.1  # each attempt's worst case was held before it went upstream
    assert shared.reserved_usd == 0.0 and shared.over_reservation_usd == 0.0
    assert {r.error["limit"] for r in refused} == {"max_budget_usd"}
    assert shared.subcalls == len(answered)  # refused calls gave their slot back


async def test_a_burst_of_root_calls_never_spends_past_the_budget(start_broker, scripted) -> None:
    scripted.subcall_latency_ms = 300  # a root-model body without tools is answered like a subcall
    b = await start_broker(max_budget_usd=1.5)
    body = {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "w " * 100000}]}
    replies = await asyncio.gather(*(b.request("POST", "/v1/messages", body=body) for _ in range(12)))
    statuses = [r.status for r in replies]
    assert set(statuses) == {200, 402}, statuses
    shared = b.broker.ledger.shared
    assert shared.spent_usd <= 1.5, statuses
    assert shared.reserved_usd == 0.0 and shared.over_reservation_usd == 0.0
    assert ROOT_CONCURRENCY == 4


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


async def test_rlm_query_runs_at_most_max_concurrent_nested_at_once(start_broker) -> None:
    running, peak = 0, 0

    async def nested(prompt: str, context: str) -> dict:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1
        return {"answer": prompt, "success": True, "run_id": "x", "stop_reason": "completed"}

    b = await start_broker(nested_runner=nested, max_concurrent_nested=2, nested_wait_seconds=30)
    replies = await asyncio.gather(*(b.request("POST", "/fsrlm/v1/rlm_query", body={"prompt": f"p{i}"})
                                     for i in range(8)))
    assert [r.status for r in replies] == [200] * 8  # the top-level run's extra calls waited their turn
    assert peak == 2 and b.broker.ledger.shared.nested_running == 0


async def test_the_only_slack_is_an_answer_billed_past_its_max_tokens(start_broker, scripted) -> None:
    """The bound's one condition (limits.py): an upstream that bills more output than max_tokens."""
    scripted.responder = lambda body: {"text": "long", "output_tokens": 50_000}  # ignores max_tokens=300
    b = await start_broker(max_budget_usd=1.0)
    replies = [await b.subcall(ask(f"ECHO: {i}")) for i in range(10)]
    shared = b.broker.ledger.shared
    answered = sum(r.status == 200 for r in replies)
    assert answered and shared.over_reservation_usd > 0
    # What was spent past the budget is at most what answers billed past their reservations.
    assert shared.spent_usd <= 1.0 + shared.over_reservation_usd
    assert {r.error["limit"] for r in replies if r.status != 200} <= {"max_budget_usd"}
