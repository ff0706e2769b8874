"""The sandbox contract on its own (``executors/contract.py``); every backend runs it in test_conformance.py."""

from __future__ import annotations

import pytest
from fsrlm.executors.contract import (
    AgentContract,
    SandboxPlaces,
    agent_environment,
    check_agent_env,
)

from fsrlm.errors import SandboxError

PLACES = SandboxPlaces(workspace="/workspace", broker_url="http://127.0.0.1:8080", home="/home/sandbox", tmp="/tmp")


@pytest.mark.parametrize(
    "env",
    [
        {"FSRLM_BROKER_TOKEN": "t", "ANTHROPIC_API_KEY": "sk-ant-real"},
        {"ANTHROPIC_API_KEY": "sk-ant-real"},
        {"FSRLM_BROKER_TOKEN": "t", "ANTHROPIC_AUTH_TOKEN": "real"},
        {"FSRLM_BROKER_TOKEN": "t", "AWS_SECRET_ACCESS_KEY": "x"},
        {"FSRLM_BROKER_TOKEN": "t", "AWS_PROFILE": "prod"},
        {"FSRLM_BROKER_TOKEN": "t", "AWS_BEARER_TOKEN_BEDROCK": "t"},
        {"FSRLM_BROKER_TOKEN": "t", "CLAUDE_CODE_OAUTH_TOKEN": "x"},
        {"FSRLM_BROKER_TOKEN": "t", "FSRLM_UPSTREAM_API_KEY": "x"},
        {"FSRLM_BROKER_TOKEN": "t", "GOOGLE_APPLICATION_CREDENTIALS": "/k.json"},
    ],
)
def test_refuses_credentials(env: dict[str, str]) -> None:
    with pytest.raises(SandboxError, match="Refusing"):
        check_agent_env(env)


def test_the_run_token_is_the_only_key() -> None:
    env = agent_environment(AgentContract(run_id="r1", token="tok"), PLACES)
    assert env["ANTHROPIC_API_KEY"] == env["FSRLM_BROKER_TOKEN"] == "tok"
    assert env["ANTHROPIC_BASE_URL"] == env["FSRLM_BROKER_URL"] == "http://127.0.0.1:8080"
    assert env["TMPDIR"] == env["CLAUDE_CODE_TMPDIR"] == "/tmp"
    assert "CLAUDE_CODE_USE_BEDROCK" not in env and "ANTHROPIC_BEDROCK_BASE_URL" not in env


def test_bedrock_mode_points_the_cli_at_the_broker() -> None:
    env = agent_environment(AgentContract(run_id="r1", token="tok", api="bedrock"), PLACES)
    assert env["ANTHROPIC_BEDROCK_BASE_URL"] == "http://127.0.0.1:8080"
    assert env["CLAUDE_CODE_USE_BEDROCK"] == env["CLAUDE_CODE_SKIP_BEDROCK_AUTH"] == "1"
    assert env["ANTHROPIC_CUSTOM_HEADERS"] == "x-api-key: tok"


def test_the_contract_wins_over_backend_plumbing_and_inherited_variables() -> None:
    places = SandboxPlaces(workspace="/w", broker_url="http://127.0.0.1:9", home="/h",
                           plumbing={"HOME": "/etc", "BASH_ENV": "/opt/x.sh"})
    env = agent_environment(AgentContract(run_id="r1", token="tok"), places,
                            inherited={"PATH": "/usr/bin", "FSRLM_BROKER_URL": "http://evil:1"})
    assert env["HOME"] == "/h" and env["FSRLM_BROKER_URL"] == "http://127.0.0.1:9"
    assert env["PATH"] == "/usr/bin" and env["BASH_ENV"] == "/opt/x.sh"
    assert "TMPDIR" not in env  # local keeps the host's temp folder


def test_a_token_is_never_in_the_repr() -> None:
    assert "tok-secret" not in repr(AgentContract(run_id="r1", token="tok-secret"))
