"""The broker over its unix socket, against the scripted model: auth, subcalls, limits, cache, audit."""

from __future__ import annotations

import json
import re
from typing import Any

import aiohttp
import pytest
from broker_harness import SCRIPT, SUBMODEL, TOKEN, ask
from support import FAKE_UPSTREAM_KEY

from fsrlm.broker.cache import cache_key
from fsrlm.broker.subcalls import parse_request
from fsrlm.testing.scripted_model import Fault, FinalStep, Plan, ScriptedModelServer

TOOLS = [{"name": "Bash", "description": "run a command", "input_schema": {"type": "object"}}]
AUDIT_FIELDS = {"ts", "script", "model", "status", "input_tokens", "output_tokens", "cost_usd", "latency_ms"}


def root_body(text: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": "claude-sonnet-4-5", "max_tokens": 1024, "stream": True, "tools": TOOLS,
            "messages": [{"role": "user", "content": text}], **extra}


def assert_token_never_reached(scripted: ScriptedModelServer) -> None:
    assert scripted.requests, "expected upstream traffic"
    for r in scripted.requests:
        assert TOKEN not in json.dumps(r.headers) + json.dumps(r.body)
        assert r.headers.get("x-api-key") == FAKE_UPSTREAM_KEY
        assert "authorization" not in r.headers
        assert "x-fsrlm-script" not in r.headers


# -- authentication -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"x-api-key": "wrong"},
        {"x-api-key": TOKEN[:-1]},
        {"authorization": "Bearer wrong"},
        {"authorization": f"Basic {TOKEN}"},
        {"x-api-key": "", "authorization": "Bearer "},
    ],
    ids=["none", "wrong-key", "prefix", "wrong-bearer", "basic", "empty"],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/fsrlm/v1/health"), ("GET", "/fsrlm/v1/budget"), ("POST", "/fsrlm/v1/subcall"),
     ("POST", "/fsrlm/v1/rlm_query"), ("POST", "/v1/messages"), ("POST", "/model/m/invoke")],
)
async def test_requests_without_the_run_token_get_401(start_broker, scripted, headers, method, path) -> None:
    b = await start_broker()
    body = ask("hi") if method == "POST" else None
    reply = await b.request(method, path, body=body, headers=headers, token=None)
    assert reply.status == 401
    assert reply.error == {"type": "authentication_error", "message": "missing or wrong run token", "limit": None}
    assert scripted.requests == []
    assert b.broker.records == []


@pytest.mark.parametrize(
    "headers",
    [{"x-api-key": TOKEN}, {"authorization": f"Bearer {TOKEN}"}, {"Authorization": f"bearer  {TOKEN} "}],
    ids=["x-api-key", "bearer", "bearer-case"],
)
async def test_the_right_token_is_accepted_either_way(start_broker, scripted, headers) -> None:
    b = await start_broker()
    health = await b.request("GET", "/fsrlm/v1/health", headers=headers, token=None)
    assert health.status == 200
    assert health.json["ok"] is True
    reply = await b.subcall("ECHO: hi", headers=headers, token=None)
    assert reply.status == 200, reply.raw
    assert reply.json["text"] == "hi"
    assert_token_never_reached(scripted)


async def test_a_wrong_x_api_key_is_not_rescued_by_a_right_bearer(start_broker) -> None:
    b = await start_broker()
    reply = await b.request("GET", "/fsrlm/v1/health", token="wrong", headers={"authorization": f"Bearer {TOKEN}"})
    assert reply.status == 401


# -- subcalls -----------------------------------------------------------------------------


async def test_subcall_happy_path(start_broker, scripted) -> None:
    b = await start_broker()
    reply = await b.subcall("ECHO: the quick brown fox")
    assert reply.status == 200, reply.raw
    answer = reply.json
    assert answer["text"] == "the quick brown fox"
    assert answer["model"] == SUBMODEL  # no model asked for: the run's submodel
    assert answer["cached"] is False
    assert answer["input_tokens"] > 0 and answer["output_tokens"] > 0
    assert answer["cost_usd"] > 0
    assert answer["stop_reason"] == "end_turn"
    assert set(answer) == {"text", "model", "cached", "input_tokens", "output_tokens", "cost_usd", "stop_reason"}

    (sent,) = scripted.requests
    assert sent.path == "/v1/messages"
    assert sent.body["model"] == SUBMODEL
    assert sent.body["stream"] is False
    assert sent.body["messages"] == [{"role": "user", "content": "ECHO: the quick brown fox"}]
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert_token_never_reached(scripted)

    (record,) = b.broker.records
    assert (record.kind, record.script, record.status, record.model) == ("subcall", SCRIPT, "ok", SUBMODEL)
    assert record.cost_usd == answer["cost_usd"]


async def test_subcall_passes_model_and_sampling_fields_through(start_broker, scripted) -> None:
    b = await start_broker()
    body = ask("ECHO: x", model="claude-sonnet-4-5", system="Be terse.", temperature=0.2, top_p=0.5, top_k=3,
               stop_sequences=["END"])
    reply = await b.subcall(body)
    assert reply.status == 200, reply.raw
    assert reply.json["model"] == "claude-sonnet-4-5"
    sent = scripted.requests[0].body
    assert {k: sent[k] for k in ("model", "system", "temperature", "top_p", "top_k", "stop_sequences")} == {
        "model": "claude-sonnet-4-5", "system": "Be terse.", "temperature": 0.2, "top_p": 0.5, "top_k": 3,
        "stop_sequences": ["END"],
    }


@pytest.mark.parametrize(("asked", "sent"), [(None, 300), (100_000, 300), (300, 300), (50, 50)])
async def test_max_tokens_is_clamped_to_the_per_subcall_cap(start_broker, scripted, asked, sent) -> None:
    b = await start_broker(max_tokens_per_subcall=300)
    body = ask(f"ECHO: {asked}") if asked is None else ask(f"ECHO: {asked}", max_tokens=asked)
    reply = await b.subcall(body)
    assert reply.status == 200, reply.raw
    assert scripted.requests[0].body["max_tokens"] == sent


async def test_cached_calls_are_free_and_never_refused(start_broker, scripted) -> None:
    b = await start_broker(max_subcalls_per_script=1)
    replies = [await b.subcall("ECHO: same prompt") for _ in range(3)]
    assert [r.status for r in replies] == [200, 200, 200]
    assert [r.json["cached"] for r in replies] == [False, True, True]
    assert {r.json["text"] for r in replies} == {"same prompt"}
    assert replies[0].json["cost_usd"] > 0
    assert [r.json["cost_usd"] for r in replies[1:]] == [0.0, 0.0]
    assert [r.json["input_tokens"] for r in replies] == [replies[0].json["input_tokens"]] * 3
    assert len(scripted.requests) == 1

    assert [line["status"] for line in b.audit_lines()] == ["ok", "cached", "cached"]
    assert [line["cost_usd"] for line in b.audit_lines()][1:] == [0.0, 0.0]
    budget = await b.budget(SCRIPT)
    assert budget["cache_hits"] == 2
    assert budget["subcalls_used"] == 1
    assert budget["script_subcalls_used"] == 1
    assert budget["spent_usd"] == pytest.approx(replies[0].json["cost_usd"], abs=1e-6)

    # A different prompt is a real call, so the cap of one applies.
    refused = await b.subcall("ECHO: another prompt")
    assert refused.status == 402


async def test_the_cache_mirror_is_written_into_the_workspace(start_broker) -> None:
    b = await start_broker()
    assert (await b.subcall("ECHO: mirrored")).status == 200
    (entry,) = (b.workspace / "cache" / "llm").iterdir()
    assert re.fullmatch(r"[0-9a-f]{64}\.json", entry.name)
    assert json.loads(entry.read_text())["text"] == "mirrored"


async def test_without_a_cache_every_call_goes_upstream(start_broker, scripted) -> None:
    b = await start_broker(cache=False)
    for _ in range(2):
        reply = await b.subcall("ECHO: same")
        assert reply.json["cached"] is False
    assert len(scripted.requests) == 2
    assert not (b.workspace / "cache").exists()


# -- limits -------------------------------------------------------------------------------


async def test_per_script_cap_refusal(start_broker, scripted) -> None:
    b = await start_broker(max_subcalls_per_script=2)
    assert (await b.subcall("ECHO: 1")).status == 200
    assert (await b.subcall("ECHO: 2")).status == 200
    reply = await b.subcall("ECHO: 3")
    assert reply.status == 402
    assert reply.headers["content-type"].startswith("application/json")
    assert reply.error["type"] == "limit_exceeded"
    assert reply.error["limit"] == "max_subcalls_per_script"
    assert SCRIPT in reply.error["message"]
    assert len(scripted.requests) == 2
    last = b.audit_lines()[-1]
    assert (last["status"], last["limit"], last["script"]) == ("refused", "max_subcalls_per_script", SCRIPT)
    # Another script still has its own allowance.
    assert (await b.subcall("ECHO: 3", script="scratch/scripts/other.py")).status == 200


async def test_forged_script_names_run_into_max_scripts(start_broker, scripted) -> None:
    b = await start_broker(max_scripts=3, max_subcalls_per_script=1)
    for i in range(3):
        assert (await b.subcall(f"ECHO: {i}", script=f"forged-{i}.py")).status == 200
    reply = await b.subcall("ECHO: 3", script="forged-3.py")
    assert reply.status == 402
    assert reply.error["limit"] == "max_scripts"
    # A missing header is one more "script", not a way around the cap.
    reply = await b.request("POST", "/fsrlm/v1/subcall", body=ask("ECHO: 4"))
    assert reply.error["limit"] == "max_scripts"
    assert len(scripted.requests) == 3
    assert (await b.budget())["scripts_used"] == 3


async def test_limits_from_request_headers_are_ignored(start_broker) -> None:
    b = await start_broker(max_subcalls_per_script=1)
    forged = {"x-fsrlm-max-subcalls-per-script": "1000", "x-fsrlm-depth": "-5"}
    assert (await b.subcall("ECHO: 1", headers=forged)).status == 200
    assert (await b.subcall("ECHO: 2", headers=forged)).status == 402


async def test_total_cap(start_broker, scripted) -> None:
    b = await start_broker(max_total_subcalls=3)
    for i in range(3):
        assert (await b.subcall(f"ECHO: {i}", script=f"s{i % 2}.py")).status == 200
    reply = await b.subcall("ECHO: 3", script="s9.py")
    assert reply.status == 402
    assert reply.error["limit"] == "max_total_subcalls"
    assert len(scripted.requests) == 3


async def test_budget_refusal_after_spend(start_broker, scripted) -> None:
    b = await start_broker(max_budget_usd=0.01)
    first = await b.subcall("ECHO: spend")
    assert first.status == 200 and first.json["cost_usd"] > 1e-9
    b.broker.ledger.charge(0.01 - first.json["cost_usd"], root=False)  # the rest spent elsewhere in the tree
    second = await b.subcall("ECHO: more")
    assert second.status == 402
    assert second.error["limit"] == "max_budget_usd"
    # A cache hit costs nothing and is still served.
    again = await b.subcall("ECHO: spend")
    assert again.status == 200 and again.json["cached"] is True
    # The root agent is held to the same budget.
    root = await b.request("POST", "/v1/messages", body=root_body())
    assert root.status == 402
    assert root.error["limit"] == "max_budget_usd"
    assert len(scripted.requests) == 1
    budget = await b.budget()
    assert budget["spent_usd"] == pytest.approx(0.01, abs=1e-6)
    assert budget["reserved_usd"] == 0.0
    assert budget["max_budget_usd"] == 0.01


# -- invalid requests ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"{not json",
        b"",
        b"[]",
        json.dumps({"messages": []}).encode(),
        json.dumps({"prompt": "hi"}).encode(),
        json.dumps(ask("hi", unknown_field=1)).encode(),
        json.dumps(ask("hi", max_tokens=0)).encode(),
        json.dumps(ask("hi", temperature=3)).encode(),
        json.dumps(ask("hi", stream=True)).encode(),
    ],
    ids=["not-json", "empty", "array", "no-messages", "missing-messages", "unknown-field", "zero-max-tokens",
         "temperature", "stream"],
)
async def test_invalid_subcall_requests_get_400(start_broker, scripted, data) -> None:
    b = await start_broker()
    reply = await b.request("POST", "/fsrlm/v1/subcall", data=data, headers={"x-fsrlm-script": SCRIPT})
    assert reply.status == 400
    assert reply.error["type"] == "invalid_request_error"
    assert reply.error["limit"] is None
    assert scripted.requests == []
    assert (await b.budget(SCRIPT))["script_subcalls_used"] == 0


async def test_unknown_field_error_names_the_field(start_broker) -> None:
    b = await start_broker()
    reply = await b.subcall(ask("hi", max_scripts=999))
    assert reply.status == 400
    assert "max_scripts" in reply.error["message"]


async def test_unknown_route_and_method_are_json_errors(start_broker) -> None:
    b = await start_broker()
    missing = await b.request("GET", "/nope")
    assert missing.status == 404
    assert missing.error["type"] == "policy_refused"
    assert "forwards only POST /v1/messages" in missing.error["message"]
    wrong = await b.request("GET", "/fsrlm/v1/subcall")  # every unknown route is judged by the root-call policy
    assert wrong.status == 404
    assert wrong.json["type"] == "error"


@pytest.mark.parametrize("path", ["/fsrlm/v1/subcall", "/v1/messages"])
async def test_a_body_over_32_mb_gets_413(start_broker, scripted, path) -> None:
    b = await start_broker()
    padding = "x" * (33 * 1024 * 1024)
    try:
        reply = await b.request("POST", path, body=ask(padding))
    except aiohttp.ClientOSError:
        pytest.fail("the broker dropped the connection instead of answering 413")
    assert reply.status == 413
    assert reply.error["type"] == "request_too_large"
    assert scripted.requests == []
    # The broker is still serving afterwards.
    assert (await b.subcall("ECHO: after")).status == 200


# -- budget and health --------------------------------------------------------------------


async def test_budget_fields(start_broker) -> None:
    b = await start_broker(max_scripts=4, max_subcalls_per_script=7, max_total_subcalls=9, max_budget_usd=3.0,
                           max_depth=2)
    assert await b.budget() == {
        "depth": 0, "max_depth": 2, "subcalls_used": 0, "max_total_subcalls": 9, "script_subcalls_used": 0,
        "max_subcalls_per_script": 7, "scripts_used": 0, "max_scripts": 4, "spent_usd": 0.0,
        "reserved_usd": 0.0, "max_budget_usd": 3.0, "cache_hits": 0, "nested_running": 0, "max_concurrent_nested": 2,
    }
    await b.subcall("ECHO: a")
    await b.subcall("ECHO: a")
    await b.subcall("ECHO: b", script="other.py")
    mine = await b.budget(SCRIPT)
    assert (mine["subcalls_used"], mine["script_subcalls_used"], mine["scripts_used"], mine["cache_hits"]) == (
        2, 1, 2, 1)
    assert mine["spent_usd"] > 0
    assert (await b.budget("other.py"))["script_subcalls_used"] == 1


async def test_health(start_broker) -> None:
    b = await start_broker()
    reply = await b.request("GET", "/fsrlm/v1/health")
    assert reply.status == 200
    assert reply.json["ok"] is True


async def test_tcp_listener_serves_the_same_api(start_broker) -> None:
    b = await start_broker()
    port = await b.endpoint.open_tcp()
    assert await b.endpoint.open_tcp() == port
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{port}/fsrlm/v1/health") as r:
            assert r.status == 401
        async with s.get(f"http://127.0.0.1:{port}/fsrlm/v1/health", headers={"x-api-key": TOKEN}) as r:
            assert r.status == 200


async def test_unix_socket_is_private(start_broker) -> None:
    b = await start_broker()
    sock = b.endpoint.unix_socket
    assert sock.stat().st_mode & 0o777 == 0o600
    assert sock.parent.stat().st_mode & 0o777 == 0o700
    await b.broker.stop()
    assert not sock.parent.exists()


# -- rlm_query ----------------------------------------------------------------------------


async def test_rlm_query_refused_at_max_depth(start_broker, scripted) -> None:
    calls: list[tuple[str, str]] = []

    async def runner(prompt: str, context: str) -> dict[str, Any]:
        calls.append((prompt, context))
        return {"answer": "x", "success": True, "run_id": "child", "stop_reason": "end_turn"}

    b = await start_broker(max_depth=0, nested_runner=runner)
    reply = await b.request("POST", "/fsrlm/v1/rlm_query", body={"prompt": "p", "context": "c"},
                            headers={"x-fsrlm-script": SCRIPT})
    assert reply.status == 402
    assert reply.error["type"] == "limit_exceeded"
    assert reply.error["limit"] == "max_depth"
    assert calls == []
    last = b.audit_lines()[-1]
    assert (last["kind"], last["status"], last["limit"]) == ("rlm_query", "refused", "max_depth")


async def test_rlm_query_at_the_deepest_level_is_refused(start_broker) -> None:
    async def runner(prompt: str, context: str) -> dict[str, Any]:
        raise AssertionError("must not run")

    b = await start_broker(max_depth=2, depth=2, nested_runner=runner)
    reply = await b.request("POST", "/fsrlm/v1/rlm_query", body={"prompt": "p"})
    assert reply.status == 402
    assert reply.error["limit"] == "max_depth"
    assert (await b.budget())["depth"] == 2


async def test_rlm_query_calls_the_nested_runner(start_broker) -> None:
    calls: list[tuple[str, str]] = []

    async def runner(prompt: str, context: str) -> dict[str, Any]:
        calls.append((prompt, context))
        return {"answer": "forty-two", "success": True, "run_id": "child-1", "stop_reason": "end_turn"}

    b = await start_broker(max_depth=1, nested_runner=runner)
    reply = await b.request("POST", "/fsrlm/v1/rlm_query", body={"prompt": "what?", "context": "ctx " * 10},
                            headers={"x-fsrlm-script": SCRIPT})
    assert reply.status == 200, reply.raw
    assert reply.json == {"answer": "forty-two", "success": True, "run_id": "child-1", "stop_reason": "end_turn"}
    assert calls == [("what?", "ctx " * 10)]
    last = b.audit_lines()[-1]
    assert (last["kind"], last["status"], last["script"]) == ("rlm_query", "ok", SCRIPT)


@pytest.mark.parametrize("body", [{}, {"prompt": ""}, {"prompt": "p", "depth": 0}, {"prompt": 3}])
async def test_invalid_rlm_query_gets_400(start_broker, body) -> None:
    async def runner(prompt: str, context: str) -> dict[str, Any]:
        raise AssertionError("must not run")

    b = await start_broker(nested_runner=runner)
    reply = await b.request("POST", "/fsrlm/v1/rlm_query", body=body)
    assert reply.status == 400
    assert reply.error["type"] == "invalid_request_error"


async def test_rlm_query_without_a_runner_is_refused(start_broker) -> None:
    b = await start_broker(max_depth=1)
    reply = await b.request("POST", "/fsrlm/v1/rlm_query", body={"prompt": "p"})
    assert reply.status == 402
    assert reply.error["limit"] == "max_depth"


# -- root pass-through --------------------------------------------------------------------


async def _direct(scripted: ScriptedModelServer, body: dict[str, Any]) -> tuple[int, str, bytes]:
    async with aiohttp.ClientSession() as s:
        async with s.post(scripted.url + "/v1/messages?beta=true", json=body,
                          headers={"x-api-key": "x", "anthropic-version": "2023-06-01"}) as r:
            return r.status, r.headers["content-type"], await r.read()


def _normalise(raw: bytes) -> bytes:
    return re.sub(rb"msg_scripted_\d+", b"msg_ID", raw)


async def test_root_sse_passes_through_unchanged(start_broker, scripted) -> None:
    long_text = "".join(f"line {i}: {'lorem ipsum ' * 3}\n" for i in range(200))  # many SSE deltas
    scripted.plan = Plan([FinalStep(long_text)])
    b = await start_broker()
    body = root_body("summarise")
    direct_status, direct_type, direct = await _direct(scripted, body)
    scripted.reset()

    reply = await b.request("POST", "/v1/messages?beta=true", body=body,
                            headers={"anthropic-version": "2023-06-01",
                                     "anthropic-beta": "claude-code-20250219,x-test"})
    assert reply.status == direct_status == 200
    assert reply.headers["content-type"] == direct_type == "text/event-stream"
    assert _normalise(reply.raw) == _normalise(direct)
    assert reply.raw.count(b"content_block_delta") > 5

    (sent,) = scripted.requests
    assert sent.path == "/v1/messages" and sent.query == {"beta": "true"}
    assert sent.body == body
    assert sent.headers["anthropic-beta"] == "claude-code-20250219"  # a beta the CLI does not send is dropped
    assert_token_never_reached(scripted)

    (record,) = b.broker.records
    final = [json.loads(line[5:]) for line in direct.split(b"\n") if line.startswith(b"data:")]
    start = final[0]["message"]["usage"]
    delta = [e for e in final if e["type"] == "message_delta"][0]["usage"]
    assert (record.kind, record.script, record.model, record.status) == ("root", "(root agent)",
                                                                         "claude-sonnet-4-5", "ok")
    assert record.input_tokens == start["input_tokens"]
    assert record.output_tokens == delta["output_tokens"] > 100
    assert record.cost_usd > 0
    assert (await b.budget())["spent_usd"] == pytest.approx(record.cost_usd, abs=1e-6)
    assert (await b.budget())["subcalls_used"] == 0  # root calls are not subcalls


async def test_root_json_answer_passes_through_and_is_accounted(start_broker, scripted) -> None:
    b = await start_broker()
    body = root_body("hi", stream=False)
    reply = await b.request("POST", "/v1/messages", body=body)
    assert reply.status == 200
    assert reply.json["content"] == [{"type": "text", "text": "done"}]
    assert reply.headers["request-id"].startswith("req_")
    (record,) = b.broker.records
    assert record.input_tokens == reply.json["usage"]["input_tokens"]
    assert record.output_tokens == reply.json["usage"]["output_tokens"]


async def test_root_upstream_error_status_is_passed_back(start_broker, scripted) -> None:
    b = await start_broker()
    scripted.inject(Fault(status=400), kind="any")
    reply = await b.request("POST", "/v1/messages", body=root_body())
    assert reply.status == 400  # the scripted model's own answer, passed back
    assert reply.json["error"]["type"] == "invalid_request_error"
    (record,) = b.broker.records
    assert (record.kind, record.status, record.error) == ("root", "error", "HTTP 400")


async def test_root_call_that_is_not_json_is_refused_by_the_broker(start_broker, scripted) -> None:
    b = await start_broker()
    reply = await b.request("POST", "/v1/messages", data=b"{not json")
    assert reply.status == 400 and reply.error["type"] == "policy_refused"
    assert scripted.requests == []


# -- audit log ----------------------------------------------------------------------------


async def test_audit_log_has_one_valid_line_per_call(start_broker, scripted) -> None:
    b = await start_broker(max_subcalls_per_script=1)
    await b.subcall("ECHO: a")  # ok
    await b.subcall("ECHO: a")  # cached
    await b.subcall("ECHO: b")  # refused
    await b.request("POST", "/v1/messages", body=root_body())  # root
    await b.subcall(ask("x", bogus=1))  # invalid: not a call, not logged
    lines = (b.workspace / "state" / "subcalls.jsonl").read_text().splitlines()
    assert len(lines) == 4
    records = [json.loads(line) for line in lines]
    for r in records:
        assert AUDIT_FIELDS <= set(r)
        assert isinstance(r["ts"], float) and isinstance(r["latency_ms"], float)
        assert r["latency_ms"] >= 0
    assert [(r["kind"], r["status"]) for r in records] == [
        ("subcall", "ok"), ("subcall", "cached"), ("subcall", "refused"), ("root", "ok")]
    assert [r["script"] for r in records] == [SCRIPT, SCRIPT, SCRIPT, "(root agent)"]
    assert records[0]["model"] == SUBMODEL and records[3]["model"] == "claude-sonnet-4-5"
    assert records[0]["input_tokens"] > 0 and records[0]["output_tokens"] > 0 and records[0]["cost_usd"] > 0
    assert records == [r.model_dump() for r in b.broker.records]
    assert TOKEN not in "\n".join(lines) and FAKE_UPSTREAM_KEY not in "\n".join(lines)


async def test_audit_symlink_out_of_the_workspace_is_not_written_through(start_broker, tmp_path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("precious\n")
    workspace = tmp_path / "ws"
    (workspace / "state").mkdir(parents=True)
    (workspace / "state" / "subcalls.jsonl").symlink_to(outside)
    b = await start_broker(workspace=workspace)
    reply = await b.subcall("ECHO: hi")
    assert reply.status == 200  # the call still works; the in-memory log is authoritative
    assert outside.read_text() == "precious\n"
    assert (workspace / "state" / "subcalls.jsonl").is_symlink()
    assert [r.status for r in b.broker.records] == ["ok"]


async def test_audit_symlinked_state_dir_is_not_followed(start_broker, tmp_path) -> None:
    outside = tmp_path / "outside-dir"
    outside.mkdir()
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "state").symlink_to(outside, target_is_directory=True)
    b = await start_broker(workspace=workspace)
    assert (await b.subcall("ECHO: hi")).status == 200
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("link", ["cache/llm", "cache"])
async def test_cache_mirror_does_not_follow_a_planted_symlink(start_broker, tmp_path, link) -> None:
    outside = tmp_path / "outside-dir"
    outside.mkdir()
    workspace = tmp_path / "ws"
    target = workspace / link
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(outside, target_is_directory=True)
    b = await start_broker(workspace=workspace)
    first = await b.subcall("ECHO: hi")
    second = await b.subcall("ECHO: hi")  # the cache hit mirrors again
    assert (first.status, second.status) == (200, 200)
    assert second.json["cached"] is True
    assert list(outside.iterdir()) == []


async def test_cache_mirror_replaces_a_planted_file_symlink_instead_of_following_it(start_broker, scripted,
                                                                                    tmp_path) -> None:
    """A link planted at the exact entry name is replaced (rename), never written through."""
    b0 = await start_broker()
    assert b0.broker._service is not None
    key = cache_key("compatible", b0.broker._service.build_body(parse_request(json.dumps(ask("ECHO: hi")).encode())))
    outside = tmp_path / "victim.txt"
    outside.write_text("precious")
    workspace = tmp_path / "ws"
    (workspace / "cache" / "llm").mkdir(parents=True)
    (workspace / "cache" / "llm" / f"{key}.json").symlink_to(outside)
    b = await start_broker(workspace=workspace)
    assert (await b.subcall("ECHO: hi")).status == 200
    assert outside.read_text() == "precious"


@pytest.mark.parametrize("size", [1, 5, 64, 4096])
def test_sse_usage_is_read_whatever_the_network_pieces(size: int) -> None:
    from fsrlm.broker.accounting import UsageSniffer

    events = [
        {"type": "message_start", "message": {"usage": {"input_tokens": 321, "output_tokens": 1,
                                                        "cache_read_input_tokens": 40}}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "x" * 2000}},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 99}},
        {"type": "message_stop"},
    ]
    raw = b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)
    sniffer = UsageSniffer("text/event-stream; charset=utf-8")
    for at in range(0, len(raw), size):
        sniffer.feed(raw[at:at + size])
    usage = sniffer.finish()
    assert (usage.input_tokens, usage.output_tokens, usage.cache_read_input_tokens, usage.stop_reason) == (
        321, 99, 40, "end_turn")
