"""The viewer's HTTP API against real recorded runs: snapshot, run list, links, live events, the command."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import textwrap
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner

from fsrlm import RLM
from fsrlm.cli.main import cli
from fsrlm.testing.plans import script_plan
from fsrlm.errors import InputError
from fsrlm.viewer import ViewerSettings, create_app
from fsrlm.viewer.server import CSP, is_loopback

Client = Callable[..., Awaitable[TestClient]]


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    """``await client(path, **settings)``: an aiohttp test client on a real loopback port."""
    clients: list[TestClient] = []

    async def make(path: Path, **settings) -> TestClient:
        c = TestClient(TestServer(create_app(ViewerSettings(path=path, poll_interval=0.05, **settings))))
        await c.start_server()
        clients.append(c)
        return c

    yield make
    for c in clients:
        await c.close()


async def get_json(c: TestClient, url: str) -> dict:
    response = await c.get(url)
    assert response.status == 200, await response.text()
    return await response.json()


# -- one run ----------------------------------------------------------------------------------


async def test_snapshot_of_a_recorded_run(recorded_run, client: Client) -> None:
    run = recorded_run
    c = await client(run.path)
    snap = await get_json(c, "/api/run")

    assert snap["run_id"] == run.path.name and snap["status"] == "completed" and snap["success"] is True
    assert snap["workspace_path"] == str(run.path)
    assert snap["input"]["question"] == run.question
    prompt = (run.path / "input" / "prompt.md").read_text()
    assert snap["input"]["size_bytes"] == len(prompt.encode())
    assert snap["input"]["preview"].startswith(prompt[:4000])  # the first 4 KB, then a truncation note
    assert snap["answer"].strip() == str(run.expected)
    assert snap["job"]["root_model"] == "scripted-root"

    # the timeline: every line of state/events.jsonl, numbered
    lines = run.event_lines()
    assert snap["event_count"] == len(lines) == len(snap["events"])
    assert [e["seq"] for e in snap["events"]] == list(range(len(lines)))
    kinds = [e["kind"] for e in snap["events"]]
    for kind in ("run_started", "agent_text", "tool_use", "script_started", "script_finished", "subcall",
                 "artifact", "result"):
        assert kind in kinds, kind
    assert any(e["kind"] == "tool_use" and e["tool"] == "Bash" and "count.py" in e["detail"] for e in snap["events"])

    # the scripts the agent wrote
    assert [s["path"] for s in snap["scripts"]] == ["scratch/scripts/count.py"]
    assert snap["scripts"][0]["text"] == (run.path / "scratch" / "scripts" / "count.py").read_text()

    # every subcall, joined with its answer in the cache mirror
    assert run.subcalls > 1 and len(snap["subcalls"]) == run.subcalls
    audit = [r for r in run.audit() if r["kind"] == "subcall"]
    for call, record in zip(snap["subcalls"], audit, strict=True):
        for field in ("script", "model", "status", "input_tokens", "output_tokens", "cost_usd", "latency_ms"):
            assert call[field] == record[field], field
        assert call["status"] == "ok" and call["input_tokens"] > 0 and call["cost_usd"] > 0
        assert call["prompt_preview"].startswith("Count the lines that contain the label ERROR.")
        assert len(call["prompt_preview"]) == 500
        assert len(call["cache_key"]) == 64 and (run.path / "cache" / "llm" / f"{call['cache_key']}.json").is_file()
        assert call["answer"].isdigit()
    assert sum(int(call["answer"]) for call in snap["subcalls"]) == run.expected

    assert snap["artifact_count"] == len(snap["artifacts"]) == run.subcalls  # one per chunk
    assert snap["totals_source"] == "result"
    result = json.loads(lines[-1])["data"]["metrics"]
    assert snap["totals"] == result
    assert snap["totals"]["subcalls"] == run.subcalls and snap["totals"]["total_cost_usd"] > 0


async def test_security_headers_on_every_response(recorded_run, client: Client) -> None:
    c = await client(recorded_run.path)
    for url in ("/", "/static/app.js", "/static/app.css", "/api/run", "/api/runs", "/static/nope.js"):
        response = await c.get(url)
        assert response.headers["Content-Security-Policy"] == CSP, url
        assert response.headers["X-Content-Type-Options"] == "nosniff", url
    assert "default-src 'self'" in CSP and "unsafe-inline" not in CSP and "script-src 'self'" in CSP
    page = await (await c.get("/")).text()
    assert "<script src=\"/static/app.js\"" in page and "<script>" not in page  # no inline script
    assert (await c.get("/static/app.js")).content_type == "text/javascript"
    assert (await c.get("/static/..%2Fserver.py")).status == 404
    assert (await get_json(c, "/api/runs")) == {"mode": "run"}


async def test_only_loopback_host_names_are_answered(recorded_run, client: Client) -> None:
    c = await client(recorded_run.path)
    assert (await c.get("/api/run", headers={"Host": "localhost:8000"})).status == 200
    assert (await c.get("/api/run", headers={"Host": "[::1]:8000"})).status == 200
    # a DNS-rebinding page reaches the port under its own name: refused
    assert (await c.get("/api/run", headers={"Host": "evil.example:8000"})).status == 403
    # --allow-remote answers other Hosts, but still not a name someone else's DNS points here
    remote = await client(recorded_run.path, allow_remote=True, allowed_hosts=("viewer.example",))
    assert (await remote.get("/api/run", headers={"Host": "viewer.example:8000"})).status == 200
    assert (await remote.get("/api/run", headers={"Host": "192.0.2.7:8000"})).status == 200
    assert (await remote.get("/api/run", headers={"Host": "[2001:db8::1]:8000"})).status == 200
    assert (await remote.get("/api/run", headers={"Host": f"{socket.gethostname()}:8000"})).status == 200
    refused = await remote.get("/api/run", headers={"Host": "evil.example:8000"})
    assert refused.status == 403 and "--allow-host" in await refused.text()


async def test_event_streams_are_capped(recorded_run, client: Client) -> None:
    c = await client(recorded_run.path, max_event_streams=2)
    first = await c.get("/api/events")
    second = await c.get("/api/events")
    assert first.status == second.status == 200
    third = await c.get("/api/events")
    assert third.status == 503 and third.headers["Retry-After"] == "5"
    first.close()
    for _ in range(100):  # the server notices the closed stream at its next write
        again = await c.get("/api/events")
        if again.status == 200:
            break
        await asyncio.sleep(0.05)
    assert again.status == 200
    second.close()
    again.close()


async def test_nested_runs_are_listed_and_served(scripted, make_config, client: Client, tmp_path: Path) -> None:
    scripted.plan = script_plan(textwrap.dedent("""
        import os
        from llm_client import rlm_query, write_answer
        if os.environ["FSRLM_DEPTH"] == "0":
            os.symlink("/etc", "nested")  # a link the viewer must not take for the nested runs
            write_answer("parent got: " + rlm_query("child question", "child context"))
        else:
            write_answer("child answer")
    """))
    result = RLM(make_config("local", max_depth=1)).invoke("input", question="q")
    assert result.success, result.errors
    child = result.nested[0]
    c = await client(result.workspace_path)
    snap = await get_json(c, "/api/run")
    assert [(n["run_id"], n["status"], n["question"]) for n in snap["nested"]] == [
        (child.run_id, "completed", "child question")]
    inner = await get_json(c, f"/nested/{child.run_id}/api/run")
    assert inner["answer"] == "child answer" and inner["nested"] == []
    assert (await c.get(f"/nested/{child.run_id}/")).status == 200
    assert (await c.get(f"/nested/{child.run_id}", allow_redirects=False)).headers["Location"] == \
        f"/nested/{child.run_id}/"
    for bad in ("/nested/passwd/api/run", f"/run/{child.run_id}/api/run", "/nested/.x/api/run", "/nested/a/b/api/run"):
        assert (await c.get(bad)).status == 404, bad
    folder = await client(result.workspace_path.parent)
    runs = await get_json(folder, "/api/runs")
    assert [r["run_id"] for r in runs["runs"]] == [result.run_id]  # <run>.nested/ is not a run
    deep = await get_json(folder, f"/run/{result.run_id}/nested/{child.run_id}/api/run")
    assert deep["run_id"] == child.run_id
    assert (await folder.get(f"/nested/{child.run_id}/api/run")).status == 404


async def test_live_run_totals_come_from_the_audit_log(recorded_run, client: Client) -> None:
    run = recorded_run
    lines = run.event_lines()
    assert json.loads(lines[-1])["kind"] == "result"
    (run.path / "state" / "events.jsonl").write_text("\n".join(lines[:-1]) + "\n")  # as if still running
    c = await client(run.path)
    snap = await get_json(c, "/api/run")
    assert snap["status"] == "unfinished" and "success" not in snap
    assert snap["totals_source"] == "audit"
    audit = run.audit()
    assert snap["totals"]["subcalls"] == run.subcalls
    assert snap["totals"]["root_calls"] == sum(1 for r in audit if r["kind"] == "root")
    assert snap["totals"]["total_cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in audit), abs=1e-6)  # totals are rounded to 6 places


async def test_cache_hits_are_shown_with_their_answers(record_run, client: Client) -> None:
    record_run()
    second = record_run()  # the same subcalls again: all from the cache
    c = await client(second.path)
    snap = await get_json(c, "/api/run")
    assert len(snap["subcalls"]) == second.subcalls
    assert {call["status"] for call in snap["subcalls"]} == {"cached"}
    assert all(call["cost_usd"] == 0 and call["answer"].isdigit() for call in snap["subcalls"])
    assert snap["totals"]["subcalls_cached"] == second.subcalls and snap["totals"]["cache_hit_rate"] == 1.0


async def test_broken_lines_are_skipped_not_fatal(recorded_run, client: Client) -> None:
    run = recorded_run
    with (run.path / "state" / "subcalls.jsonl").open("a") as f:
        f.write('{"kind": "subcall", "oops"\nnot json\n{"kind": "subcall", "script": "x", "model": "m", '
                '"status": "ok", "cache_key": "../../../etc/passwd"}\n')
    with (run.path / "state" / "events.jsonl").open("a") as f:
        f.write('garbage\n{"kind": "no-such-kind", "run_id": "x"}\n')
    c = await client(run.path)
    snap = await get_json(c, "/api/run")
    assert len(snap["subcalls"]) == run.subcalls + 1
    assert "answer" not in snap["subcalls"][-1]  # a bad cache key is never used as a path
    assert snap["event_count"] == len(run.event_lines()) and len(snap["events"]) == snap["event_count"] - 2


# -- links planted by the agent are never followed ----------------------------------------------


async def test_links_out_of_the_workspace_are_not_read(recorded_run, client: Client,
                                                       tmp_path: Path) -> None:
    run = recorded_run
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("TOP-SECRET-OUTSIDE-THE-WORKSPACE\n")
    answer = run.path / "output" / "answer.md"
    answer.unlink()
    answer.symlink_to(secret)
    (run.path / "scratch" / "scripts" / "evil.py").symlink_to(secret)
    key = json.loads((run.path / "state" / "subcalls.jsonl").read_text().splitlines()[-2])["cache_key"]
    mirror = run.path / "cache" / "llm" / f"{key}.json"
    mirror.unlink()
    mirror.symlink_to(secret)
    os.link(secret, run.path / "input" / "question.md.tmp")
    (run.path / "input" / "question.md").unlink()
    (run.path / "input" / "question.md.tmp").rename(run.path / "input" / "question.md")  # a hard link

    c = await client(run.path)
    response = await c.get("/api/run")
    assert response.status == 200
    body = await response.text()
    assert "TOP-SECRET" not in body
    snap = json.loads(body)
    assert "answer" not in snap and "question" not in snap["input"]
    assert [s["path"] for s in snap["scripts"]] == ["scratch/scripts/count.py"]
    assert sum(1 for call in snap["subcalls"] if "answer" not in call) == 1


async def test_a_linked_state_folder_is_not_followed(recorded_run, client: Client,
                                                     tmp_path: Path) -> None:
    run = recorded_run
    elsewhere = tmp_path / "elsewhere"
    shutil.move(run.path / "state", elsewhere)
    (run.path / "state").symlink_to(elsewhere)
    (run.path / "scratch" / "scripts").rename(run.path / "scratch" / "real-scripts")
    (run.path / "scratch" / "scripts").symlink_to(run.path / "scratch" / "real-scripts")
    parent = run.path.parent
    c = await client(parent)  # not a run any more (its job.json is behind a link): not listed
    assert (await get_json(c, "/api/runs"))["runs"] == []
    assert (await c.get(f"/run/{run.path.name}/api/run")).status == 404


# -- a folder of runs ---------------------------------------------------------------------------------


async def test_folder_of_runs_is_listed(record_run, client: Client, tmp_path: Path) -> None:
    first = record_run()
    second = record_run()
    parent = first.path.parent
    assert second.path.parent == parent
    (parent / "not-a-run").mkdir()
    (parent / "linked-run").symlink_to(first.path)  # a link is never listed or served
    (parent / "stray-file.txt").write_text("x")

    c = await client(parent)
    listing = await get_json(c, "/api/runs")
    assert listing["mode"] == "folder"
    runs = listing["runs"]
    assert sorted(r["name"] for r in runs) == sorted([first.path.name, second.path.name])
    assert [r["name"] for r in runs] == sorted((r["name"] for r in runs), reverse=True)  # newest first
    for r in runs:
        assert r["question"] == first.question and r["status"] == "completed" and r["run_id"] == r["name"]
    by_name = {r["name"]: r for r in runs}
    assert by_name[first.path.name]["cost_usd"] > 0
    assert by_name[second.path.name]["cost_usd"] < by_name[first.path.name]["cost_usd"]  # cache hits are free

    snap = await get_json(c, f"/run/{first.path.name}/api/run")
    assert snap["run_id"] == first.path.name and len(snap["subcalls"]) == first.subcalls
    page = await c.get(f"/run/{first.path.name}/")
    assert page.status == 200 and "app.js" in await page.text()
    redirect = await c.get(f"/run/{first.path.name}", allow_redirects=False)
    assert redirect.status == 302 and redirect.headers["Location"] == f"/run/{first.path.name}/"
    for bad in ("linked-run", "not-a-run", "nope", "..", ".hidden", "stray-file.txt"):
        assert (await c.get(f"/run/{bad}/api/run")).status == 404, bad
    assert (await c.get("/api/run")).status == 404  # no single run at the top


def test_path_must_be_a_folder(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError):
        create_app(ViewerSettings(path=tmp_path / "file"))
    with pytest.raises(InputError):
        create_app(ViewerSettings(path=tmp_path / "missing"))


# -- live events ------------------------------------------------------------------------------------


async def read_sse(response, count: int, timeout: float = 10.0) -> list[tuple[str | None, dict]]:
    """The next ``count`` data messages of an event stream, as (id, data)."""
    messages: list[tuple[str | None, dict]] = []
    fields: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while len(messages) < count:
        line = await asyncio.wait_for(response.content.readline(), max(0.1, deadline - time.monotonic()))
        assert line, "the stream ended"
        text = line.decode().rstrip("\n")
        if text == "":
            if "data" in fields and fields.get("event", "message") == "message":
                messages.append((fields.get("id"), json.loads(fields["data"])))
            fields = {}
        elif not text.startswith(":"):
            name, _, value = text.partition(": ")
            fields[name] = value
    return messages


async def test_event_stream_delivers_events_appended_after_connect(recorded_run,
                                                                   client: Client) -> None:
    run = recorded_run
    c = await client(run.path)
    snap = await get_json(c, "/api/run")
    after = snap["event_count"]
    response = await c.get(f"/api/events?after={after}")
    assert response.status == 200 and response.content_type == "text/event-stream"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    await asyncio.sleep(0.3)  # connected and polling; nothing new yet

    run.append_event(kind="agent_text", text="first appended")
    [(event_id, event)] = await read_sse(response, 1)
    assert event_id == str(after) and event["seq"] == after
    assert event["kind"] == "agent_text" and event["text"] == "first appended"

    # a line is sent once it is complete, not while it is being written
    events_log = run.path / "state" / "events.jsonl"
    with events_log.open("a") as f:
        f.write('{"kind": "tool_use", "run_id": "r", "tool": "Bash", ')
        f.flush()
        await asyncio.sleep(0.3)
        f.write('"detail": "python3 scratch/scripts/x.py"}\n')
    [(_, event)] = await read_sse(response, 1)
    assert (event["seq"], event["tool"], event["detail"]) == (after + 1, "Bash", "python3 scratch/scripts/x.py")
    response.close()

    # a browser reconnecting with Last-Event-ID gets what came after it
    again = await c.get("/api/events?after=0", headers={"Last-Event-ID": str(after)})
    [(_, event)] = await read_sse(again, 1)
    assert event["seq"] == after + 1
    again.close()


async def test_event_stream_from_the_start_replays_the_log(recorded_run, client: Client) -> None:
    c = await client(recorded_run.path)
    response = await c.get("/api/events?after=0")
    lines = recorded_run.event_lines()
    messages = await read_sse(response, len(lines))
    assert [e["seq"] for _, e in messages] == list(range(len(lines)))
    assert messages[-1][1]["kind"] == "result"
    response.close()
    assert (await c.get("/api/events?after=abc")).status == 400


# -- the command ----------------------------------------------------------------------------------------


def test_loopback_names() -> None:
    for host in ("127.0.0.1", "127.3.4.5", "::1", "[::1]", "localhost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "192.168.1.5", "10.0.0.1", "example.com", ""):
        assert not is_loopback(host), host


def test_view_refuses_a_non_loopback_host(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["view", str(tmp_path), "--host", "0.0.0.0", "--no-browser"], prog_name="fsrlm")
    assert result.exit_code == 2
    assert "--allow-remote" in result.stderr and "Traceback" not in result.stderr


def test_view_command_serves_a_run_and_stops_on_ctrl_c(recorded_run) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fsrlm.cli.main", "view", str(recorded_run.path), "--port", "0", "--no-browser"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stdout.readline()
        assert " at http://127.0.0.1:" in line, line + proc.stderr.read() if proc.poll() is not None else line
        url = line.split(" at ", 1)[1].split()[0]
        with urllib.request.urlopen(url + "api/run", timeout=10) as response:
            snap = json.load(response)
            assert response.headers["Content-Security-Policy"] == CSP
        assert snap["run_id"] == recorded_run.path.name and len(snap["subcalls"]) == recorded_run.subcalls
        with urllib.request.urlopen(url + "api/events?after=0", timeout=10) as stream:  # a page watching
            assert stream.readline() == b"retry: 1000\n"
            started = time.monotonic()
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=15) == 0, proc.stderr.read()
        assert time.monotonic() - started < 5  # an open event stream does not hold the server up
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_prompt_preview_is_the_start_of_the_last_user_message() -> None:
    from fsrlm.broker.subcalls import PROMPT_PREVIEW_CHARS, prompt_preview

    assert prompt_preview([{"role": "user", "content": "x" * 2000}]) == "x" * PROMPT_PREVIEW_CHARS
    assert prompt_preview([
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "second "}, {"type": "image"},
                                     {"type": "text", "text": "part"}]},
    ]) == "second part"
    assert prompt_preview([{"role": "assistant", "content": "only"}]) is None
