"""The request policy (``fsrlm/broker/policy.py``) on its own: what it forwards, rebuilds and refuses."""

from __future__ import annotations

import json
from typing import Any

import pytest
from broker_harness import ask

from fsrlm.broker.policy import CLI_BETAS, RequestPolicy
from fsrlm.broker.subcalls import parse_request
from fsrlm.config import OUTBOUND_CHANNELS, PolicyConfig, RLMConfig
from fsrlm.errors import InputError, PolicyRefused

ROOT, SUB = "claude-sonnet-4-5", "claude-haiku-4-5"
BEDROCK_ROOT = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
# Shaped like what the bundled CLI sends (recorded against the scripted model).
CLI_HEADERS = {
    "anthropic-version": "2023-06-01", "content-type": "application/json", "x-app": "cli",
    "anthropic-beta": ",".join(sorted(CLI_BETAS)[:6]), "user-agent": "claude-cli/2 (external, sdk-cli)",
    "x-stainless-lang": "js", "anthropic-dangerous-direct-browser-access": "true", "x-api-key": "run-token",
}


def cli_body(**extra: Any) -> dict[str, Any]:
    return {
        "model": ROOT, "max_tokens": 32000, "stream": True,
        "metadata": {"user_id": "{\"session_id\": \"s\"}"},
        "thinking": {"type": "adaptive", "display": "updates"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "high"},
        "system": [{"type": "text", "text": "You are"}, {"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}],
        "tools": [{"name": "Bash", "description": "run", "input_schema": {"type": "object", "properties": {}}}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "go"}]},
            {"role": "system", "content": "a mid-conversation note"},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "t", "signature": "s"},
                                              {"type": "tool_use", "id": "t1", "name": "Bash",
                                               "input": {"command": "ls", "source": {"type": "url"}}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "is_error": False,
                                          "content": [{"type": "text", "text": "ok"},
                                                      {"type": "image", "source": {"type": "base64",
                                                                                   "media_type": "image/png",
                                                                                   "data": "AA=="}}]}]},
        ],
        **extra,
    }


def policy(api: str = "anthropic", **config: Any) -> RequestPolicy:
    models = [BEDROCK_ROOT, "us.anthropic.claude-haiku-4-5-20251001-v1:0"] if api == "bedrock" else [ROOT, SUB]
    return RequestPolicy(PolicyConfig(**config), api=api, models=models)  # type: ignore[arg-type]


def root(p: RequestPolicy, body: Any, *, path: str = "/v1/messages", query: dict[str, str] | None = None,
         headers: dict[str, str] | None = None, method: str = "POST"):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return p.root(method, path, {"beta": "true"} if query is None else query, headers or CLI_HEADERS, raw)


def refused(p: RequestPolicy, body: Any, **kw: Any) -> PolicyRefused:
    with pytest.raises(PolicyRefused) as info:
        root(p, body, **kw)
    return info.value


# -- what the CLI sends goes through, rebuilt ----------------------------------------------


def test_the_clis_request_is_forwarded_rebuilt() -> None:
    body = cli_body()
    call = root(policy(), body)
    assert call.path == "/v1/messages?beta=true"
    assert (call.model, call.max_tokens, call.stream) == (ROOT, 32000, True)
    assert json.loads(call.body) == body
    # Only the headers the policy knows; the run token and the CLI's client headers stay behind.
    assert call.headers == {"content-type": "application/json", "anthropic-version": "2023-06-01",
                            "anthropic-beta": CLI_HEADERS["anthropic-beta"]}


def test_count_tokens_is_forwarded() -> None:
    call = root(policy(), {"model": ROOT, "messages": [{"role": "user", "content": "x"}]},
                path="/v1/messages/count_tokens")
    assert call.path == "/v1/messages/count_tokens?beta=true" and call.max_tokens is None


def test_bedrock_invoke_is_forwarded_with_the_model_from_the_path() -> None:
    body = {k: v for k, v in cli_body().items() if k not in ("model", "stream")}
    body |= {"anthropic_version": "bedrock-2023-05-31",
             "anthropic_beta": ["interleaved-thinking-2025-05-14", "mcp-client-2025-04-04"]}
    call = root(policy("bedrock"), body, path=f"/model/{BEDROCK_ROOT}/invoke-with-response-stream", query={})
    assert call.path == "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke-with-response-stream"
    assert call.model == BEDROCK_ROOT and call.stream
    assert json.loads(call.body)["anthropic_beta"] == ["interleaved-thinking-2025-05-14"]  # MCP's beta dropped
    assert "anthropic-beta" not in call.headers


def test_max_tokens_and_a_thinking_budget_are_clamped() -> None:
    body = cli_body(max_tokens=10_000_000, thinking={"type": "enabled", "budget_tokens": 9_999_999})
    call = root(policy(max_root_output_tokens=2000), body)
    sent = json.loads(call.body)
    assert call.max_tokens == sent["max_tokens"] == 2000
    assert sent["thinking"]["budget_tokens"] == 1999  # below max_tokens, as the API requires


def test_unknown_betas_are_dropped_and_extra_betas_kept() -> None:
    headers = {**CLI_HEADERS, "anthropic-beta": "claude-code-20250219, files-api-2025-04-14 ,my-beta-1"}
    assert root(policy(), cli_body(), headers=headers).headers["anthropic-beta"] == "claude-code-20250219"
    kept = root(policy(extra_betas=["my-beta-1"]), cli_body(), headers=headers).headers["anthropic-beta"]
    assert kept == "claude-code-20250219,my-beta-1"


# -- refusals -----------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "api"), [
    ("POST", "/v1/files", "anthropic"), ("GET", "/v1/files/file_1/content", "anthropic"),
    ("GET", "/v1/messages", "anthropic"), ("POST", "/v1/messages/batches", "anthropic"),
    ("POST", "/v1/messages/../files", "anthropic"), ("POST", f"/model/{ROOT}/invoke", "anthropic"),
    ("POST", f"/model/{BEDROCK_ROOT}/converse", "bedrock"), ("POST", "/v1/messages", "bedrock"),
    ("POST", f"/model/{BEDROCK_ROOT}/invoke/x", "bedrock"),
])
def test_other_paths_are_refused_with_404(method: str, path: str, api: str) -> None:
    error = refused(policy(api), cli_body(), method=method, path=path)
    assert error.status == 404 and "forwards only" in str(error)


@pytest.mark.parametrize("query", [{"beta": "true", "target": "x"}, {"beta": "false"}, {"url": "x"}])
def test_query_strings_beyond_beta_true_are_refused(query: dict[str, str]) -> None:
    assert "query" in str(refused(policy(), cli_body(), query=query))


def test_a_model_outside_the_run_is_refused_unless_listed() -> None:
    error = refused(policy(), cli_body(model="claude-opus-4-1"))
    assert error.setting == "policy.allowed_models" and "claude-opus-4-1" in str(error)
    assert root(policy(allowed_models=["claude-opus-4-1"]), cli_body(model="claude-opus-4-1")).model == "claude-opus-4-1"
    assert refused(policy("bedrock"), {"max_tokens": 5, "messages": []},
                   path="/model/anthropic.claude-opus-4-1-v1:0/invoke", query={}).setting == "policy.allowed_models"


def _url_image(url: str = "https://example.org/a.png") -> dict[str, Any]:
    return {"type": "image", "source": {"type": "url", "url": url}}


CHANNEL_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("mcp_servers", {"mcp_servers": [{"type": "url", "url": "https://x", "name": "x"}]}, "mcp_servers"),
    ("container", {"container": "container_1"}, "container"),
    ("web_search tool", {"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "server_tools"),
    ("web_fetch tool", {"tools": [{"type": "web_fetch_20250910", "name": "web_fetch"}]}, "server_tools"),
    ("code_execution tool", {"tools": [{"type": "code_execution_20250825", "name": "c"}]}, "server_tools"),
    ("bash tool type", {"tools": [{"type": "bash_20250124", "name": "bash"}]}, "server_tools"),
    ("image url", {"messages": [{"role": "user", "content": [_url_image()]}]}, "url_sources"),
    ("document url", {"messages": [{"role": "user", "content": [
        {"type": "document", "source": {"type": "url", "url": "https://x/a.pdf"}}]}]}, "url_sources"),
    ("file id", {"messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "file", "file_id": "file_1"}}]}]}, "file_sources"),
    ("url in a tool result", {"messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": [_url_image()]}]}]}, "url_sources"),
    ("url in a document's content", {"messages": [{"role": "user", "content": [
        {"type": "document", "source": {"type": "content", "content": [_url_image()]}}]}]}, "url_sources"),
    ("url in the system prompt", {"system": [_url_image()]}, "url_sources"),
    ("server tool history", {"messages": [{"role": "assistant", "content": [
        {"type": "server_tool_use", "id": "s", "name": "web_fetch", "input": {"url": "https://x"}}]}]}, "server_tools"),
    ("mcp tool history", {"messages": [{"role": "assistant", "content": [
        {"type": "mcp_tool_use", "id": "m", "name": "x", "server_name": "s", "input": {}}]}]}, "mcp_servers"),
    ("container upload", {"messages": [{"role": "user", "content": [
        {"type": "container_upload", "file_id": "file_1"}]}]}, "container"),
]


@pytest.mark.parametrize(("name", "extra", "channel"), CHANNEL_CASES, ids=[c[0] for c in CHANNEL_CASES])
def test_outbound_channels_are_refused_unless_switched_on(name: str, extra: dict[str, Any], channel: str) -> None:
    body = cli_body(**extra)
    error = refused(policy(), body)
    assert error.setting == f"policy.allow_outbound:{channel}"
    assert f'policy.allow_outbound = ["{channel}"]' in str(error) and OUTBOUND_CHANNELS[channel] in str(error)
    call = root(policy(allow_outbound=[channel]), body)
    assert json.loads(call.body) == body
    others = [c for c in OUTBOUND_CHANNELS if c != channel]
    with pytest.raises(PolicyRefused):
        root(policy(allow_outbound=others), body)


def test_a_switched_on_channel_lets_its_betas_through() -> None:
    headers = {**CLI_HEADERS, "anthropic-beta": "mcp-client-2025-04-04,web-fetch-2025-09-10"}
    call = root(policy(allow_outbound=["mcp_servers"]), cli_body(), headers=headers)
    assert call.headers["anthropic-beta"] == "mcp-client-2025-04-04"


@pytest.mark.parametrize("extra", [
    {"bogus": 1}, {"betas": ["x"]}, {"tools": [{"name": "x"}]}, {"tools": [{"name": "x", "input_schema": {},
                                                                         "allowed_callers": ["code"]}]},
    {"messages": [{"role": "user", "content": [{"type": "weird_block"}]}]},
    {"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "ftp"}}]}]},
    {"messages": [{"role": "user", "content": [{"type": "image", "source": "https://x"}]}]},
    {"messages": [{"role": "tool", "content": "x"}]}, {"messages": "x"}, {"max_tokens": -1},
    {"max_tokens": "32000"}, {"model": 5},
], ids=lambda e: json.dumps(e)[:40])
def test_malformed_or_unknown_bodies_are_refused(extra: dict[str, Any]) -> None:
    error = refused(policy(), cli_body(**extra))
    assert error.status == 400


@pytest.mark.parametrize("raw", [
    b"", b"{not json", b"[1, 2]", b"null", b'"x"',
    b'{"model": "claude-sonnet-4-5", "x": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",
    b"[" * 200_000 + b"]" * 200_000,
])
def test_unparseable_and_deeply_nested_json_is_refused_cleanly(raw: bytes) -> None:
    assert refused(policy(), raw).status == 400


def test_content_nested_deeper_than_the_cap_is_refused() -> None:
    block: dict[str, Any] = {"type": "text", "text": "x"}
    for _ in range(40):
        block = {"type": "tool_result", "tool_use_id": "t", "content": [block]}
    assert "nested deeper" in str(refused(policy(), cli_body(messages=[{"role": "user", "content": [block]}])))


@pytest.mark.parametrize("depth", [500, 5000])
def test_a_deep_tool_input_cannot_crash_the_rebuild(depth: int) -> None:
    """Tool inputs are the agent's own data (not checked), yet nesting there must not crash the broker."""
    raw = (b'{"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": [{"role": "assistant", "content": '
           b'[{"type": "tool_use", "id": "t", "name": "Bash", "input": {"x": ' + b"[" * depth + b"]" * depth
           + b"}}]}]}")
    try:
        call = root(policy(), raw)
    except PolicyRefused as e:
        assert e.status == 400
    else:
        assert json.loads(call.body) == json.loads(raw)


# -- subcalls get the same content policy ------------------------------------------------


def test_subcalls_get_the_same_content_policy() -> None:
    p = policy()
    assert parse_request(json.dumps(ask("hi")).encode(), p).messages[0]["content"] == "hi"
    with pytest.raises(PolicyRefused) as info:
        parse_request(json.dumps({"messages": [{"role": "user", "content": [_url_image()]}]}).encode(), p)
    assert info.value.setting == "policy.allow_outbound:url_sources"
    with pytest.raises(PolicyRefused):
        parse_request(json.dumps({"messages": [{"role": "user", "content": "x"}], "system": [_url_image()]}).encode(), p)
    with pytest.raises(PolicyRefused) as info:
        parse_request(json.dumps(ask("x", model="claude-opus-4-1")).encode(), p)
    assert info.value.setting == "policy.allowed_models"
    assert parse_request(json.dumps(ask("x", model=ROOT)).encode(), p).model == ROOT  # the run's models
    with pytest.raises(InputError):
        parse_request(json.dumps(ask("x", tools=[])).encode(), p)  # unknown subcall fields: as before


def test_policy_settings_load_from_configuration(tmp_path) -> None:
    toml = tmp_path / "fsrlm.toml"
    toml.write_text('[policy]\nallowed_models = ["claude-opus-4-1"]\nallow_outbound = ["url_sources"]\n'
                    "max_root_output_tokens = 8000\n")
    from fsrlm.config import load_config

    config = load_config(toml, env={})
    assert config.policy == PolicyConfig(allowed_models=["claude-opus-4-1"], allow_outbound=["url_sources"],
                                         max_root_output_tokens=8000)
    assert RLMConfig.model_validate({}).policy.allow_outbound == []  # every channel closed by default
    from fsrlm.errors import ConfigError

    toml.write_text('[policy]\nallow_outbound = ["web_search"]\n')
    with pytest.raises(ConfigError, match="policy.allow_outbound"):
        load_config(toml, env={})
