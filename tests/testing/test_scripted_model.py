"""The scripted model server: JSON and SSE answers, plans, responder, faults, the real CLI."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import anthropic
import claude_agent_sdk
import pytest

from fsrlm.testing.plans import count_script, default_responder, working_directory
from fsrlm.testing.scripted_model import (
    Fault,
    FinalStep,
    Plan,
    ScriptedModelServer,
    ToolStep,
    bash_plan,
    count_label_plan,
    script_plan,
)

REPO = Path(__file__).resolve().parents[2]
CLI = Path(claude_agent_sdk.__file__).parent / "_bundled" / "claude"
TOOLS = [{"name": "Bash", "description": "run", "input_schema": {"type": "object"}}]


def client(srv: ScriptedModelServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=srv.url, api_key="x", max_retries=0)


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


@pytest.fixture
def srv():
    with ScriptedModelServer() as server:
        yield server


def test_json_subcall_echo_and_usage(srv):
    msg = client(srv).messages.create(model="sub", max_tokens=50, messages=ask("ECHO:  hello there "))
    assert msg.content[0].text == "hello there"
    assert msg.stop_reason == "end_turn" and msg.model == "sub"
    assert msg.usage.input_tokens == len(json.dumps(ask("ECHO:  hello there "))) // 4
    assert msg.usage.output_tokens == len("hello there") // 4
    [req] = srv.requests
    assert (req.kind, req.path, req.body["model"]) == ("subcall", "/v1/messages", "sub")
    # anthropic 2.x sends the key as "Authorization: Bearer"; headers are recorded lower-case
    assert req.headers.get("x-api-key") == "x" or req.headers.get("authorization") == "Bearer x"


def test_sse_root_tool_use_then_final(srv):
    long_command = "echo " + "x" * 1500  # streamed in several input_json_delta pieces
    srv.plan = Plan([ToolStep("Bash", {"command": long_command}), FinalStep("all done")])
    c = client(srv)
    with c.messages.stream(model="root", max_tokens=50, messages=ask("go"), tools=TOOLS) as stream:
        first = stream.get_final_message()
    [block] = first.content
    assert (block.type, block.name, block.id) == ("tool_use", "Bash", "toolu_0001")
    assert block.input == {"command": long_command}
    assert first.stop_reason == "tool_use"
    turn2 = ask("go") + [
        {"role": "assistant", "content": [block.model_dump(include={"type", "id", "name", "input"})]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block.id, "content": "x"}]},
    ]
    with c.messages.stream(model="root", max_tokens=50, messages=turn2, tools=TOOLS) as stream:
        second = stream.get_final_message()
    assert second.content[0].text == "all done" and second.stop_reason == "end_turn"
    with c.messages.stream(model="sub", max_tokens=50, messages=ask("ECHO: streamed")) as stream:
        assert stream.get_final_text() == "streamed"
    assert [r.kind for r in srv.requests] == ["root", "root", "subcall"]


def test_step_chosen_by_assistant_count_and_past_end(srv):
    srv.plan = Plan([FinalStep("zero"), lambda body: FinalStep(f"one of {len(body['messages'])}")])
    c = client(srv)

    def answer(n_assistant: int) -> str:
        messages = []
        for _ in range(n_assistant):
            messages += [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
        messages.append({"role": "user", "content": "q"})
        return c.messages.create(model="r", max_tokens=5, messages=messages, tools=TOOLS).content[0].text

    assert [answer(0), answer(1), answer(2), answer(5)] == ["zero", "one of 3", "done", "done"]


def test_default_responder_counts_label_lines():
    chunk = "a ERROR b\nok\nERROR ERROR\nerror\nxERRORx\n"
    prompt = f"Count the lines that contain the label ERROR. Reply with only the number.\n\n{chunk}"
    assert default_responder({"messages": ask(prompt)}) == "3"
    blocks = [{"role": "user", "content": [{"type": "text", "text": prompt}]}]
    assert default_responder({"messages": blocks}) == "3"
    assert default_responder({"messages": ask("what?")}) == "ok"


def test_responder_dict_controls_usage():
    with ScriptedModelServer(responder=lambda b: {"text": "hi", "input_tokens": 7, "output_tokens": 9}) as srv:
        msg = client(srv).messages.create(model="s", max_tokens=5, messages=ask("x"))
    assert (msg.content[0].text, msg.usage.input_tokens, msg.usage.output_tokens) == ("hi", 7, 9)


def test_count_label_plan_takes_label_and_cwd_from_request():
    body = {
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "<system-reminder>\nIMPORTANT: CLAUDE.md says hi\n</system-reminder>\n"},
                {"type": "text", "text": "How many lines contain ERROR? Use the TOOLS."},
            ]},
            {"role": "system", "content": "# Env\n - Primary working directory: /tmp/my ws\n - Platform: linux"},
        ],
        "tools": TOOLS,
    }
    assert working_directory(body) == "/tmp/my ws"
    step = count_label_plan(chunk_size=500).step_for(body)
    assert step == ToolStep("Write", {"file_path": "/tmp/my ws/scratch/scripts/count.py",
                                      "content": count_script("ERROR", 500)})
    del body["messages"][1]
    assert count_label_plan("WARN").step_for(body).input["file_path"] == "scratch/scripts/count.py"


def test_script_and_bash_plans():
    plan = script_plan("print(1)\n", final_text="fin")
    body = {"system": [{"type": "text", "text": "Working directory: /w"}], "messages": ask("q")}
    assert plan.step_for(body) == ToolStep("Write", {"file_path": "/w/scratch/scripts/job.py", "content": "print(1)\n"})
    body["messages"].append({"role": "assistant", "content": "a"})
    assert plan.step_for(body).input["command"] == "python3 scratch/scripts/job.py"
    body["messages"].append({"role": "assistant", "content": "a"})
    assert plan.step_for(body) == FinalStep("fin")
    steps = bash_plan("ls", "pwd").steps
    assert [s.input["command"] for s in steps[:2]] == ["ls", "pwd"] and steps[2] == FinalStep("done")


def test_fault_429_with_retry_after_then_normal(srv):
    srv.inject(Fault(status=429, retry_after=2), Fault(status=529), kind="subcall")
    c = client(srv)
    with pytest.raises(anthropic.RateLimitError) as err:
        c.messages.create(model="s", max_tokens=5, messages=ask("ECHO: a"))
    assert err.value.response.headers["retry-after"] == "2"
    assert err.value.body["error"]["type"] == "rate_limit_error"
    with pytest.raises(anthropic.APIStatusError) as err:
        c.messages.create(model="s", max_tokens=5, messages=ask("ECHO: a"))
    assert err.value.status_code == 529 and err.value.body["error"]["type"] == "overloaded_error"
    assert c.messages.create(model="s", max_tokens=5, messages=ask("ECHO: a")).content[0].text == "a"
    assert len(srv.requests) == 3


def test_fault_kind_401_only_hits_root(srv):
    srv.inject(Fault(status=401), kind="root")
    c = client(srv)
    assert c.messages.create(model="s", max_tokens=5, messages=ask("ECHO: sub")).content[0].text == "sub"
    with pytest.raises(anthropic.AuthenticationError):
        c.messages.create(model="r", max_tokens=5, messages=ask("q"), tools=TOOLS)
    srv.reset()
    assert srv.requests == []


def test_fault_drop_mid_stream_and_json(srv):
    c = client(srv)
    srv.inject(Fault(drop_mid_stream=True), Fault(drop_mid_stream=True))
    with pytest.raises(Exception) as err:
        with c.messages.stream(model="s", max_tokens=5, messages=ask("ECHO: a")) as stream:
            stream.get_final_message()
    assert "incomplete" in str(err.value) or isinstance(err.value, anthropic.APIConnectionError)
    with pytest.raises(anthropic.APIConnectionError):
        c.messages.create(model="s", max_tokens=5, messages=ask("ECHO: a"))
    assert len(srv.requests_of("subcall")) == 2


def test_fault_stall(srv):
    srv.inject(Fault(stall_seconds=0.3))
    started = time.monotonic()
    assert client(srv).messages.create(model="s", max_tokens=5, messages=ask("ECHO: z")).content[0].text == "z"
    assert time.monotonic() - started >= 0.3


async def test_async_mode_with_latency():
    async with ScriptedModelServer(subcall_latency_ms=200) as srv:
        c = anthropic.AsyncAnthropic(base_url=srv.url, api_key="x", max_retries=0)
        started = time.monotonic()
        answers = await asyncio.gather(*(
            c.messages.create(model="s", max_tokens=5, messages=ask(f"ECHO: {i}")) for i in range(10)
        ))
        elapsed = time.monotonic() - started
    assert [a.content[0].text for a in answers] == [str(i) for i in range(10)]
    assert 0.2 <= elapsed < 1.0  # concurrent, not 10 x 200 ms


def test_command_line_prints_url_and_serves():
    proc = subprocess.Popen(
        [sys.executable, "-m", "fsrlm.testing.scripted_model", "--port", "0", "--plan", "count", "--label", "ERROR"],
        stdout=subprocess.PIPE, text=True, cwd=REPO,
    )
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("URL http://127.0.0.1:")
        url = line.split()[1]
        req = urllib.request.Request(f"{url}/v1/messages", data=json.dumps(
            {"model": "s", "max_tokens": 5, "messages": ask("ECHO: cli")}).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert json.loads(resp.read())["content"][0]["text"] == "cli"
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


# -- the real Claude Code CLI ----------------------------------------------------------

CHUNKING = '''
from dataclasses import dataclass

@dataclass
class Chunk:
    index: int
    start: int
    end: int
    text: str

def chunk_file(path, chunk_size, overlap=0):
    text = open(path, encoding="utf-8").read()
    start = index = 0
    while start < len(text):
        end = min(len(text), start + chunk_size)
        newline = text.rfind("\\n", start, end)
        if end < len(text) and newline > start:
            end = newline + 1
        yield Chunk(index, start, end, text[start:end])
        start, index = end, index + 1
'''

LLM_CLIENT = '''
import json, os, urllib.request
from concurrent.futures import ThreadPoolExecutor

def _one(prompt):
    body = {"model": "scripted-sub", "max_tokens": 64, "messages": [{"role": "user", "content": prompt}]}
    req = urllib.request.Request(os.environ["ANTHROPIC_BASE_URL"] + "/v1/messages", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json", "x-api-key": "x"}, method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())["content"][0]["text"]

def llm_batch(prompts):
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(_one, prompts))

def append_artifact(record):
    os.makedirs("state", exist_ok=True)
    with open("state/artifacts.jsonl", "a") as f:
        f.write(json.dumps(record) + "\\n")
'''


@pytest.mark.slow
@pytest.mark.skipif(not CLI.exists(), reason="the claude-agent-sdk wheel has no bundled CLI")
def test_real_cli_runs_count_label_plan(tmp_path):
    ws = tmp_path / "ws"
    for sub in ("input", "output", "tools"):  # the CLI's Write creates scratch/scripts/
        (ws / sub).mkdir(parents=True)
    lines = [f"{i:04d} {'ERROR' if i % 8 == 3 and i < 296 else 'INFO'} something happened here" for i in range(300)]
    assert sum("ERROR" in line for line in lines) == 37
    (ws / "input" / "prompt.md").write_text("\n".join(lines) + "\n")
    (ws / "tools" / "chunking.py").write_text(textwrap.dedent(CHUNKING))
    (ws / "tools" / "llm_client.py").write_text(textwrap.dedent(LLM_CLIENT))

    with ScriptedModelServer(count_label_plan(chunk_size=2000)) as srv:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(tmp_path),
            "CLAUDE_CONFIG_DIR": str(tmp_path / ".agent"),
            "CLAUDE_CODE_TMPDIR": str(tmp_path),  # not a folder left in the host's /tmp/claude-<uid>
            "ANTHROPIC_BASE_URL": srv.url,
            "ANTHROPIC_API_KEY": "x",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "PYTHONPATH": str(ws / "tools"),
        }
        argv = [str(CLI), "-p", "How many lines of input/prompt.md contain ERROR?", "--output-format", "stream-json",
                "--verbose", "--model", "scripted-root", "--max-turns", "10",
                "--allowedTools", "Bash,Write,Read,Edit", "--permission-mode", "default"]
        done = subprocess.run(argv, cwd=ws, env=env, capture_output=True, text=True, timeout=180)
        requests = srv.requests

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (ws / "output" / "answer.md").read_text() == "37\n"
    assert (ws / "scratch" / "scripts" / "count.py").exists()
    artifacts = [json.loads(x) for x in (ws / "state" / "artifacts.jsonl").read_text().splitlines()]
    assert sum(a["count"] for a in artifacts) == 37
    subcalls = [r for r in requests if r.kind == "subcall"]
    assert len(subcalls) >= 2 and len(subcalls) == len(artifacts)
    roots = [r for r in requests if r.kind == "root"]
    assert len(roots) == 3 and all(r.headers.get("x-api-key") == "x" for r in roots)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["type"] == "result" and "total 37" in result["result"]
