"""tools/llm_client.py against a small fake broker (aiohttp on loopback, in a thread)."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from support import AGENT_TOOLS_DIR as TOOLS
from support import load_tool

TOKEN = "run-token-123"


lc = load_tool("llm_client")


def _error(status: int, kind: str, message: str, limit: str | None = None) -> web.Response:
    body = {"type": "error", "error": {"type": kind, "message": message, "limit": limit}}
    return web.json_response(body, status=status)


class FakeBroker:
    """Mimics the broker's subcall/rlm_query/budget routes. Prompts steer it:
    ``REFUSE`` → 402 limit, ``FAIL`` → 502, ``PLAIN500`` → text 500, else echo after ``delay``."""

    def __init__(self) -> None:
        self.delay = 0.0
        self.requests: list[dict[str, Any]] = []
        self.completed: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> None:
        app = web.Application(middlewares=[self._auth])
        app.router.add_post("/fsrlm/v1/subcall", self._subcall)
        app.router.add_post("/fsrlm/v1/rlm_query", self._rlm)
        app.router.add_get("/fsrlm/v1/budget", self._budget)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.headers.get("x-api-key") != TOKEN:
            return _error(401, "authentication_error", "missing or wrong run token")
        return await handler(request)

    async def _subcall(self, request: web.Request) -> web.Response:
        body = await request.json()
        prompt = body["messages"][0]["content"]
        self.requests.append({"headers": {k.lower(): v for k, v in request.headers.items()}, "body": body})
        if "REFUSE" in prompt:
            return _error(402, "limit_exceeded", "max_total_subcalls (3) reached", "max_total_subcalls")
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        self.completed.append(prompt)
        if "FAIL" in prompt:
            return _error(502, "upstream_error", f"upstream failed for {prompt}")
        if "PLAIN500" in prompt:
            return web.Response(status=500, text="boom")
        return web.json_response({"text": f"echo:{prompt}", "model": body.get("model") or "sub",
                                  "cached": False, "input_tokens": 1, "output_tokens": 1,
                                  "cost_usd": 0.0, "stop_reason": "end_turn"})

    async def _rlm(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append({"headers": {k.lower(): v for k, v in request.headers.items()}, "body": body})
        if body["prompt"] == "deep":
            return _error(402, "limit_exceeded", "already at max_depth 1", "max_depth")
        if body["prompt"] == "broken":
            return web.json_response({"answer": "", "success": False, "run_id": "r2", "stop_reason": "max_turns"})
        return web.json_response({"answer": f"{body['prompt']}|{len(body['context'])}", "success": True,
                                  "run_id": "r1", "stop_reason": "end_turn"})

    async def _budget(self, request: web.Request) -> web.Response:
        self.requests.append({"headers": {k.lower(): v for k, v in request.headers.items()}, "body": None})
        return web.json_response({"depth": 0, "max_depth": 1, "subcalls_used": 2, "max_total_subcalls": 100,
                                  "script_subcalls_used": 2, "max_subcalls_per_script": 25, "scripts_used": 1,
                                  "max_scripts": 20, "spent_usd": 0.01, "max_budget_usd": 5.0, "cache_hits": 0})


@pytest.fixture
def broker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    b = FakeBroker()
    b.start()
    monkeypatch.setenv("FSRLM_BROKER_URL", b.url)
    monkeypatch.setenv("FSRLM_BROKER_TOKEN", TOKEN)
    monkeypatch.setenv("FSRLM_WORKSPACE", str(tmp_path))
    monkeypatch.delenv("FSRLM_SUBCALL_CONCURRENCY", raising=False)
    yield b
    b.stop()


def test_query_sends_body_and_token(broker: FakeBroker) -> None:
    assert lc.llm_query("hello", system="be brief", model="m1", max_tokens=50) == "echo:hello"
    req = broker.requests[0]
    assert req["body"] == {"messages": [{"role": "user", "content": "hello"}], "system": "be brief",
                           "model": "m1", "max_tokens": 50}
    assert req["headers"]["x-api-key"] == TOKEN
    assert req["headers"]["x-fsrlm-script"]


def test_wrong_token_is_llm_error(broker: FakeBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FSRLM_BROKER_TOKEN", "nope")
    with pytest.raises(lc.LLMError) as info:
        lc.llm_query("x")
    assert info.value.status == 401 and info.value.error_type == "authentication_error"
    assert "missing or wrong run token" in str(info.value)
    assert not isinstance(info.value, lc.BudgetExceeded)


def test_non_json_error_body(broker: FakeBroker) -> None:
    with pytest.raises(lc.LLMError) as info:
        lc.llm_query("PLAIN500")
    assert info.value.status == 500 and "boom" in str(info.value)


def test_refusal_is_budget_exceeded(broker: FakeBroker) -> None:
    with pytest.raises(lc.BudgetExceeded) as info:
        lc.llm_query("REFUSE")
    assert info.value.limit == "max_total_subcalls" and info.value.status == 402
    assert "max_total_subcalls (3) reached" in str(info.value)


def test_connection_refused_message(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("FSRLM_BROKER_URL", url)
    monkeypatch.setattr(lc, "REFUSED_GRACE_S", 0.3)
    started = time.monotonic()
    with pytest.raises(lc.LLMError) as info:
        lc.llm_query("x")
    assert 0.3 <= time.monotonic() - started < 5  # refused connections were tried again for the grace period
    assert "not reachable" in str(info.value) and url in str(info.value)
    assert info.value.status is None and info.value.error_type == "connection_error"
    monkeypatch.delenv("FSRLM_BROKER_URL")
    with pytest.raises(lc.LLMError, match="FSRLM_BROKER_URL is not set"):
        lc.llm_query("x")


def test_a_relay_that_starts_late_is_waited_for(broker: FakeBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a sandbox the relay starts beside the agent: a refused first connection is not an error."""
    import threading

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("FSRLM_BROKER_URL", f"http://127.0.0.1:{port}")

    def late_relay() -> None:  # the broker starts listening on that port too, half a second late
        time.sleep(0.5)
        asyncio.run_coroutine_threadsafe(web.TCPSite(broker.runner, "127.0.0.1", port).start(), broker.loop).result(5)

    threading.Thread(target=late_relay, daemon=True).start()
    assert lc.llm_query("ECHO: late") == "echo:ECHO: late"


def test_batch_keeps_input_order(broker: FakeBroker) -> None:
    broker.delay = 0.01
    prompts = [f"p{i}" for i in range(40)]
    assert lc.llm_batch(prompts) == [f"echo:p{i}" for i in range(40)]
    assert lc.llm_batch([]) == []


def test_batch_respects_concurrency(broker: FakeBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FSRLM_SUBCALL_CONCURRENCY", "3")
    broker.delay = 0.05
    t0 = time.monotonic()
    out = lc.llm_batch([f"p{i}" for i in range(12)])
    elapsed = time.monotonic() - t0
    assert out == [f"echo:p{i}" for i in range(12)]
    assert broker.max_in_flight == 3
    assert elapsed >= 4 * 0.05 * 0.9  # 4 waves of 3


def test_batch_default_concurrency_is_8(broker: FakeBroker) -> None:
    broker.delay = 0.1
    lc.llm_batch([f"p{i}" for i in range(20)])
    assert broker.max_in_flight == 8


def test_batch_budget_stops_unstarted_items(broker: FakeBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FSRLM_SUBCALL_CONCURRENCY", "2")
    broker.delay = 0.2
    prompts = [f"p{i}" for i in range(10)]
    prompts[1] = "p1 REFUSE"  # refused at once while p0 is still in flight
    with pytest.raises(lc.BudgetExceeded) as info:
        lc.llm_batch(prompts)
    assert info.value.limit == "max_total_subcalls"
    sent = [r["body"]["messages"][0]["content"] for r in broker.requests]
    assert sorted(sent) == ["p0", "p1 REFUSE"]  # p2.. never sent
    assert broker.completed == ["p0"]  # the in-flight item finished before the raise


def test_batch_budget_wins_over_other_errors(broker: FakeBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FSRLM_SUBCALL_CONCURRENCY", "1")
    with pytest.raises(lc.BudgetExceeded):
        lc.llm_batch(["p0 FAIL", "p1 REFUSE", "p2"])


def test_batch_other_error_raises_first_failed_after_all_ran(broker: FakeBroker) -> None:
    prompts = ["p0", "p1 FAIL", "p2", "p3 FAIL", "p4"]
    with pytest.raises(lc.LLMError) as info:
        lc.llm_batch(prompts)
    assert not isinstance(info.value, lc.BudgetExceeded)
    assert info.value.status == 502 and "p1 FAIL" in str(info.value)
    assert len(broker.requests) == 5


def test_batch_return_exceptions(broker: FakeBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    out = lc.llm_batch(["p0", "p1 FAIL", "p2", "p3 FAIL"], return_exceptions=True)
    assert out[0] == "echo:p0" and out[2] == "echo:p2"
    assert isinstance(out[1], lc.LLMError) and out[1].status == 502 and "p1 FAIL" in str(out[1])
    assert isinstance(out[3], lc.LLMError)
    monkeypatch.setenv("FSRLM_SUBCALL_CONCURRENCY", "1")
    out = lc.llm_batch(["a", "b REFUSE", "c", "d"], return_exceptions=True)
    assert out[0] == "echo:a"
    assert all(isinstance(r, lc.BudgetExceeded) and r.limit == "max_total_subcalls" for r in out[1:])
    assert "not sent" in str(out[2])
    assert [r["body"]["messages"][0]["content"] for r in broker.requests[-2:]] == ["a", "b REFUSE"]


def test_rlm_query_and_budget(broker: FakeBroker) -> None:
    assert lc.rlm_query("q", "ctx" * 10) == "q|30"
    with pytest.raises(lc.BudgetExceeded) as info:
        lc.rlm_query("deep", "c")
    assert info.value.limit == "max_depth"
    with pytest.raises(lc.LLMError, match="max_turns"):
        lc.rlm_query("broken", "c")
    budget = lc.check_budget()
    assert budget["max_total_subcalls"] == 100 and budget["spent_usd"] == 0.01
    assert broker.requests[-1]["headers"]["x-api-key"] == TOKEN


def test_llmclient_seed_compat(broker: FakeBroker) -> None:
    client = lc.LLMClient(model="m-default", max_tokens=7, system="sys")
    assert client.query("a") == "echo:a"
    assert broker.requests[-1]["body"]["model"] == "m-default"
    assert client.call_claude("b", model="m-other") == "echo:b"
    assert broker.requests[-1]["body"]["model"] == "m-other"
    assert broker.requests[-1]["body"]["max_tokens"] == 7
    assert client.batch(["c", "d"]) == ["echo:c", "echo:d"]
    assert lc.call_claude("e") == "echo:e"
    assert client.check_budget()["max_depth"] == 1


def _run(args: list[str], cwd: Path, env_extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(TOOLS), **env_extra}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


PROBE = "import llm_client, os\nos.chdir('/')\nprint(llm_client.llm_query('probe'))\n"


def test_script_header_relative_to_workspace(broker: FakeBroker, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / "scratch" / "scripts").mkdir(parents=True)
    (ws / "scratch" / "scripts" / "map.py").write_text(PROBE)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "other.py").write_text(PROBE)
    link = tmp_path / "ws-link"
    link.symlink_to(ws)
    env = {"FSRLM_BROKER_URL": broker.url, "FSRLM_BROKER_TOKEN": TOKEN, "FSRLM_WORKSPACE": str(ws)}
    cases = [
        ([sys.executable, "scratch/scripts/map.py"], ws, env, "scratch/scripts/map.py"),
        ([sys.executable, "scratch/scripts/map.py"], link, {**env, "FSRLM_WORKSPACE": str(link)},
         "scratch/scripts/map.py"),
        ([sys.executable, str(outside / "other.py")], ws, env, "other.py"),
        ([sys.executable, "-c", PROBE], ws, env, "<interactive>"),
    ]
    for args, cwd, env_, expected in cases:
        proc = _run(args, cwd, env_)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "echo:probe"
        assert broker.requests[-1]["headers"]["x-fsrlm-script"] == expected


def test_append_artifact_threads_and_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FSRLM_WORKSPACE", str(tmp_path))
    payload = "x" * 20_000  # far above PIPE_BUF: only the lock keeps lines whole

    def worker(t: int) -> None:
        for i in range(50):
            lc.append_artifact({"t": t, "i": i, "p": payload, "u": "é✓"})

    script = ("import llm_client, sys\nfor i in range(50):\n"
              "    llm_client.append_artifact({'t': 'proc' + sys.argv[1], 'i': i, 'p': 'y' * 20000})\n")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(n)], cwd=tmp_path,
                              env={"PYTHONPATH": str(TOOLS), "FSRLM_WORKSPACE": str(tmp_path)})
             for n in range(4)]
    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert all(p.wait(60) == 0 for p in procs)
    lines = (tmp_path / "state" / "artifacts.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 8 * 50 + 4 * 50
    assert {(r["t"], r["i"]) for r in records} == (
        {(t, i) for t in range(8) for i in range(50)} | {(f"proc{n}", i) for n in range(4) for i in range(50)})
    lc.append_artifact({"a": 1}, path=str(tmp_path / "abs.jsonl"))
    assert json.loads((tmp_path / "abs.jsonl").read_text()) == {"a": 1}
    with pytest.raises(TypeError):
        lc.append_artifact(["not", "a", "dict"])  # type: ignore[arg-type]


def test_write_answer_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FSRLM_WORKSPACE", str(tmp_path))
    path = lc.write_answer("# Answer\n\n42 ✓\n")
    assert Path(path) == tmp_path / "output" / "answer.md"
    assert Path(path).read_text(encoding="utf-8") == "# Answer\n\n42 ✓\n"
    lc.write_answer("second")
    assert (tmp_path / "output" / "answer.md").read_text() == "second"
    assert os.listdir(tmp_path / "output") == ["answer.md"]  # no temp files left


def test_the_mounted_broker_socket_is_used_directly(broker: FakeBroker, monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    """In a Docker sandbox scripts skip the relay: HTTP over the mounted socket, same token and routes."""
    path = str(tmp_path / "broker.sock")
    asyncio.run_coroutine_threadsafe(web.UnixSite(broker.runner, path).start(), broker.loop).result(5)
    monkeypatch.setenv("FSRLM_BROKER_URL", "http://127.0.0.1:9")  # nothing there: only the socket answers
    monkeypatch.setattr(lc, "_SOCKET", path)
    assert lc.llm_query("over the socket") == "echo:over the socket"
    assert lc.llm_batch([f"p{i}" for i in range(20)]) == [f"echo:p{i}" for i in range(20)]
    assert broker.requests[0]["headers"]["x-api-key"] == TOKEN
    with pytest.raises(lc.BudgetExceeded):  # errors read as over TCP
        lc.llm_query("REFUSE")
    os.unlink(path)  # gone: said with the socket's name
    monkeypatch.setattr(lc, "REFUSED_GRACE_S", 0.1)
    with pytest.raises(lc.LLMError, match="FSRLM_BROKER_SOCKET") as info:
        lc.llm_query("x")
    assert info.value.error_type == "connection_error"


def test_a_socket_variable_without_a_socket_keeps_tcp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FSRLM_BROKER_SOCKET", str(tmp_path / "none.sock"))
    assert lc._broker_socket() is None
    conn, prefix = lc._connection("http://127.0.0.1:9", lc._broker_socket())
    assert type(conn) is http.client.HTTPConnection and (conn.host, conn.port, prefix) == ("127.0.0.1", 9, "")


@pytest.mark.parametrize("url", ["", "https://127.0.0.1:9", "127.0.0.1:9", "http://127.0.0.1:port"])
def test_a_broker_url_that_is_not_plain_http_is_said(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FSRLM_BROKER_URL", url)
    monkeypatch.setattr(lc, "_SOCKET", None)
    with pytest.raises(lc.LLMError, match="FSRLM_BROKER_URL") as info:
        lc.llm_query("x")
    assert info.value.error_type == "connection_error"


def test_scripts_import_no_more_than_they_need() -> None:
    """Every script pays for llm_client's imports at its start: not urllib.request (hashlib, tempfile, shutil…)."""
    code = ("import sys, llm_client; "
            "print(' '.join(m for m in ('urllib.request', 'hashlib', 'tempfile', 'shutil') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-S", "-c", code], env={"PYTHONPATH": str(TOOLS)}, capture_output=True,
                         text=True, check=True, timeout=60).stdout
    assert out.strip() == ""
