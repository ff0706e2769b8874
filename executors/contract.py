"""What every sandbox gets, whatever the backend — written once, used by every executor.

Two halves meet here:

* ``AgentContract`` comes from the orchestrator: which run this is, its token, its
  depth, how many subcalls may run at once, and which wire format the CLI speaks to
  the broker (``anthropic``, or ``bedrock`` when the upstream is AWS Bedrock: then
  the CLI runs in Bedrock mode and the broker signs what it sends).
* ``SandboxPlaces`` comes from the backend: where the workspace, the home folder and
  the temp folder are as the agent sees them, and the broker's URL from inside
  (the broker's loopback port for ``local``, the in-sandbox relay for Docker).

``agent_environment`` turns the two into the agent's whole environment and refuses
it (``check_agent_env``) if a real key or a cloud credential got in. A backend adds
nothing else; a new executor implements ``executors.base`` and calls this.

The limits the agent is *shown* are backend-independent too: the orchestrator writes
them into ``state/job.json`` and the system prompt (``fsrlm/prompts.py``); the
broker enforces them whatever the agent reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from fsrlm.errors import SandboxError

# Variables that must never reach a sandbox: a real key or cloud credentials.
KEY_VARIABLES = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN")
FORBIDDEN_PREFIXES = ("AWS_", "GOOGLE_", "AZURE_", "ANTHROPIC_VERTEX_")
FORBIDDEN_VARIABLES = ("CLAUDE_CODE_OAUTH_TOKEN", "FSRLM_UPSTREAM_API_KEY")

# The CLI's own switches: no telemetry, no auto-update, no traffic but model calls.
_QUIET_CLI = {
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "DISABLE_TELEMETRY": "1",
    "CLAUDE_AGENT_SDK_SKIP_VERSION_CHECK": "1",
    # The CLI speaks plain HTTP to the broker (the relay, or loopback) and never TLS: reading the
    # system's CA store, which it does at every start, only costs time (up to 0.2 s in a container).
    "CLAUDE_CODE_CERT_STORE": "bundled",
}


class AgentContract(BaseModel):
    """The run's side of the contract, from the orchestrator."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: str
    token: str = Field(repr=False)  # the per-run broker token: the only secret a sandbox holds
    depth: int = Field(default=0, ge=0)
    subcall_concurrency: int = Field(default=8, gt=0)
    api: Literal["anthropic", "bedrock"] = "anthropic"


class SandboxPlaces(BaseModel):
    """The backend's side: places as the agent sees them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workspace: str
    broker_url: str
    home: str
    tmp: str | None = None  # None: leave the temp folder as the process found it (local)
    plumbing: Mapping[str, str] = Field(default_factory=dict)  # backend-only variables (CLAUDE_CODE_SHELL, relay mode)


def agent_environment(agent: AgentContract, places: SandboxPlaces,
                      inherited: Mapping[str, str] | None = None) -> dict[str, str]:
    """The agent's whole environment. ``inherited``: harmless host variables a backend keeps (PATH)."""
    url = places.broker_url
    env = dict(inherited or {})
    env |= places.plumbing
    env |= _QUIET_CLI
    env |= {
        "FSRLM_RUN_ID": agent.run_id,
        "FSRLM_DEPTH": str(agent.depth),
        "FSRLM_SUBCALL_CONCURRENCY": str(agent.subcall_concurrency),
        "FSRLM_BROKER_TOKEN": agent.token,
        "FSRLM_BROKER_URL": url,
        "FSRLM_WORKSPACE": places.workspace,
        "ANTHROPIC_BASE_URL": url,
        "ANTHROPIC_API_KEY": agent.token,  # the CLI sends it as x-api-key: the broker's run token, never a key
        "PYTHONPATH": f"{places.workspace}/tools",  # any script can `import llm_client`
        "HOME": places.home,
        "CLAUDE_CONFIG_DIR": f"{places.workspace}/.agent",  # session transcripts live in the run (resume)
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    if places.tmp is not None:
        env |= {"TMPDIR": places.tmp, "CLAUDE_CODE_TMPDIR": places.tmp}
    if agent.api == "bedrock":
        # The CLI sends unsigned Bedrock requests to the broker, which signs them. In Bedrock mode it
        # does not send ANTHROPIC_API_KEY, so the token travels as a custom header.
        env |= {
            "CLAUDE_CODE_USE_BEDROCK": "1",
            "CLAUDE_CODE_SKIP_BEDROCK_AUTH": "1",
            "ANTHROPIC_BEDROCK_BASE_URL": url,
            "ANTHROPIC_CUSTOM_HEADERS": f"x-api-key: {agent.token}",
        }
    check_agent_env(env)
    return env


def check_agent_env(env: Mapping[str, str]) -> None:
    """Refuse an environment that carries a real key or cloud credentials (``SandboxError``)."""
    token = env.get("FSRLM_BROKER_TOKEN")
    for name in KEY_VARIABLES:
        if name in env and env[name] != token:
            raise SandboxError(
                f"Refusing to start the sandbox: {name} holds something other than the run token; "
                "real keys stay in the broker."
            )
    bad = sorted(k for k in env if k.startswith(FORBIDDEN_PREFIXES) or k in FORBIDDEN_VARIABLES)
    if bad:
        raise SandboxError(f"Refusing to start the sandbox: credentials in its environment ({', '.join(bad)}).")
