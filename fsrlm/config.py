"""``RLMConfig``: every setting of a run, loaded from ``fsrlm.toml``, ``FSRLM_*`` and flags.

One rule for every way of making a configuration — ``RLMConfig(...)``,
``RLM(...)``, ``fsrlm.invoke``, ``load_config`` and the command line — lowest
first: defaults, the TOML file (``FSRLM_CONFIG`` or ``./fsrlm.toml``),
``FSRLM_*`` environment variables, then what the caller passed (keyword
arguments or flags). Only ``RLMConfig.model_validate(mapping)`` takes the
mapping alone (a configuration stored elsewhere, e.g. a run's own record).
"""

from __future__ import annotations

import contextvars
import difflib
import json
import os
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from fsrlm.errors import ConfigError
from fsrlm.executors.configs import EXECUTOR_TYPES, DockerExecutorConfig, ExecutorConfig

DEFAULT_CONFIG_FILE = "fsrlm.toml"
ENV_PREFIX = "FSRLM_"
# Default dollar cap of a run. One pass of the default submodel over a 50 MB log (the headline use case)
# costs about $14-19 at list prices (the README's cost table, fsrlm/costs.py); $25 lets that finish with
# the root agent and some retries on top, and still stops a runaway agent at a known, bounded cost.
DEFAULT_BUDGET_USD = 25.0

# FSRLM_* variables that are not settings: read by fsRLM's other parts (the in-sandbox tools, the relay,
# the image and Docker scripts, the test and security suites). Any other FSRLM_* name is refused, so a
# misspelt limit never goes unnoticed (tests/test_config.py checks that this list covers the repository).
OTHER_ENV_VARIABLES = frozenset({
    "FSRLM_CONFIG",  # the TOML file to read
    "FSRLM_BROKER_TOKEN", "FSRLM_BROKER_URL", "FSRLM_BROKER_SOCKET", "FSRLM_RUN_ID", "FSRLM_DEPTH",
    "FSRLM_WORKSPACE", "FSRLM_RELAY", "FSRLM_RELAY_MODE", "FSRLM_RELAY_LISTEN", "FSRLM_RELAY_TIMEOUT",
    "FSRLM_TUNNEL_READY", "FSRLM_IMAGE_HASH", "FSRLM_WORKSPACE_ID",  # inside the sandbox / the image build
    "FSRLM_DOCKER_WAIT", "FSRLM_DOCKERD_LOG", "FSRLM_DOCKER_CHECK_TIMEOUT",  # scripts/ensure-docker.sh
    "FSRLM_DEBIAN_MIRROR", "FSRLM_DEBIAN_SUITE",  # images/base/build-base.sh
    "FSRLM_SECURITY_RESULTS", "FSRLM_TEST_HOST_ONLY", "FSRLM_RAY_CLUSTER",  # the test suites, test Ray clusters
    "FSRLM_TEST_RUNTIMES", "FSRLM_TEST_EVERY_KERNEL", "FSRLM_DOCKERD_PID",  # the suite's kernels; a test engine's pid
    "FSRLM_GVISOR_RUNTIME",  # scripts/install-gvisor.sh
    "FSRLM_SCRIPT_MEMORY_KB", "FSRLM_SCRIPT_PROCESSES",  # gVisor limits read by the sandbox's agent shell
})
_UPSTREAM_ENV = ("base_url", "api_key", "aws_region")
# Settings that are tables: their FSRLM_* variable holds JSON (FSRLM_PRICES='{"my-model": {...}}').
_JSON_FIELDS = ("prices", "unknown_model_price")


class ModelPrice(BaseModel):
    """A model's list price in US dollars per million tokens (``prices`` and ``unknown_model_price``).

    Cache prices default to Anthropic's multipliers of the input price: writes 1.25x
    (5-minute cache) and 2x (1-hour cache), reads 0.1x.
    """

    model_config = ConfigDict(extra="forbid")

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)
    cache_write_per_mtok: float | None = Field(default=None, ge=0)
    cache_write_1h_per_mtok: float | None = Field(default=None, ge=0)
    cache_read_per_mtok: float | None = Field(default=None, ge=0)


# What a model that neither ``prices`` nor the maintained table (genai-prices) knows is charged:
# the dearest Claude list price (Opus 4.0/4.1), so a gateway's or local server's name never
# under-counts the budget. A local model that costs nothing: set its price to 0 in ``prices``.
DEFAULT_UNKNOWN_MODEL_PRICE = ModelPrice(input_per_mtok=15.0, output_per_mtok=75.0)


class UpstreamConfig(BaseModel):
    """Where the broker sends model calls. Credentials never leave the broker."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["anthropic", "bedrock", "compatible"] = "anthropic"
    base_url: str | None = Field(
        default=None, description="API root; default https://api.anthropic.com, or the Bedrock runtime of aws_region"
    )
    api_key: SecretStr | None = Field(
        default=None, description="default: FSRLM_UPSTREAM_API_KEY, then ANTHROPIC_API_KEY"
    )
    aws_region: str | None = Field(default=None, description="Bedrock region; default AWS_REGION")
    request_timeout_seconds: float = Field(default=600.0, gt=0)
    max_retries: int = Field(default=4, ge=0, le=20)
    preflight: bool = Field(default=True, description="before a run starts, check that the upstream's address "
                                                       "accepts a connection (no request is sent)")


# What each switch of ``policy.allow_outbound`` lets through. Each one is an outbound channel: the model
# API fetches, connects or runs code on the agent's behalf, so the network-less sandbox reaches the
# network through it. Off by default; turn one on only for inputs you trust.
OUTBOUND_CHANNELS: dict[str, str] = {
    "server_tools": "server tools such as web_search, web_fetch and code_execution: the API searches, fetches "
                    "URLs or runs code for the agent",
    "mcp_servers": "`mcp_servers`: the API connects to MCP servers at URLs the agent names",
    "url_sources": "image and document `source.url`: the API downloads the URL",
    "file_sources": "`source.type = \"file\"` (file ids): the API reads files stored in the account, "
                    "which may be other users' or other runs' data",
    "container": "`container` and `container_upload`: the API runs code in (or reuses) a hosted container",
}
OutboundChannel = Literal["server_tools", "mcp_servers", "url_sources", "file_sources", "container"]


class PolicyConfig(BaseModel):
    """What the broker lets the sandbox ask the model API to do (``fsrlm/broker/policy.py``).

    Requests are parsed and rebuilt, never passed through; anything outside this policy is
    refused with HTTP 400 ``policy_refused`` naming the setting that would allow it.
    """

    model_config = ConfigDict(extra="forbid")

    allowed_models: list[str] = Field(
        default_factory=list,
        description="models the agent may call besides root_model and submodel (their Bedrock ids included)")
    max_root_output_tokens: int = Field(
        default=64_000, gt=0, le=1_000_000,
        description="root calls' max_tokens is clamped to this (the CLI asks for 32,000)")
    allow_outbound: list[OutboundChannel] = Field(
        default_factory=list,
        description="outbound channels to open: " + ", ".join(OUTBOUND_CHANNELS) + " (each lets the model "
                    "API reach the network for the agent; none by default)")
    extra_betas: list[str] = Field(
        default_factory=list,
        description="anthropic-beta values to forward besides the ones the bundled CLI sends")


class RLMConfig(BaseModel):
    """Settings of an RLM run. Every field can be set as ``FSRLM_<FIELD>``."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # Recursive subcalls (scripts calling the cheaper model), all enforced by the broker.
    max_tokens_per_subcall: int = Field(default=1000, gt=0, le=128_000)
    max_depth: int = Field(default=1, ge=0, le=5, description="nesting of rlm_query; 0 forbids it")
    max_scripts: int = Field(default=20, gt=0)
    max_subcalls_per_script: int = Field(default=100, gt=0)
    max_total_subcalls: int = Field(default=1000, gt=0)
    max_budget_usd: float | None = Field(default=DEFAULT_BUDGET_USD, gt=0,
                                         description='root + subcalls; None (or "none") for no cap')
    subcall_concurrency: int = Field(default=8, gt=0, le=256)
    max_concurrent_nested: int = Field(default=2, gt=0, le=64,
                                       description="rlm_query runs at once across the whole tree of runs")
    submodel: str = "claude-haiku-4-5"

    # Prices (the broker's own; the CLI's figures are guesses for names it does not know).
    prices: dict[str, ModelPrice] = Field(
        default_factory=dict, description="per model name, dollars per million tokens; win over the maintained table")
    unknown_model_price: ModelPrice = Field(
        default_factory=lambda: DEFAULT_UNKNOWN_MODEL_PRICE.model_copy(),
        description="charged for a model that neither prices nor the maintained table knows")

    # Root agent.
    root_model: str = "claude-sonnet-4-5"
    max_turns: int = Field(default=50, gt=0)
    timeout_seconds: float = Field(default=1800.0, gt=0)

    # AWS Bedrock (seed-compatible switches; equivalent to upstream.type = "bedrock").
    use_bedrock: bool = False
    bedrock_model: str | None = None
    bedrock_submodel: str | None = None

    # Files.
    workspace_dir: Path | None = Field(default=None, description="parent of run folders; default a temp dir")
    preserve_workspace: bool = False
    cache_responses: bool = True
    cache_dir: Path | None = Field(default=None, description="host response cache; default ~/.cache/fsrlm")

    executor: ExecutorConfig = Field(default_factory=DockerExecutorConfig)
    upstream: UpstreamConfig = Field(default_factory=UpstreamConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)

    def __init__(self, /, **data: Any) -> None:
        """Defaults < ``fsrlm.toml`` < ``FSRLM_*`` < ``data``, like the command line; ``ConfigError`` if bad."""
        if _EXACT.get():  # model_validate, or the sources below already merged
            super().__init__(**data)
            return
        merged = collect_sources(overrides=data)
        # A keyword argument given as None means None (max_budget_usd=None: no cap), unlike an unset flag.
        merged.update({key: None for key, value in data.items() if value is None})
        check_executor_type(merged)
        token = _EXACT.set(True)
        try:
            super().__init__(**merged)
        except ValidationError as e:
            raise ConfigError(format_validation_error(e)) from None
        finally:
            _EXACT.reset(token)

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> RLMConfig:  # type: ignore[override]
        """Exactly ``obj``: no file, no environment (pydantic's own errors)."""
        token = _EXACT.set(True)
        try:
            return super().model_validate(obj, **kwargs)
        finally:
            _EXACT.reset(token)

    @classmethod
    def model_validate_json(cls, json_data: str | bytes, **kwargs: Any) -> RLMConfig:  # type: ignore[override]
        token = _EXACT.set(True)
        try:
            return super().model_validate_json(json_data, **kwargs)
        finally:
            _EXACT.reset(token)

    @field_validator("max_budget_usd", mode="before")
    @classmethod
    def _no_budget(cls, value: Any) -> Any:
        # TOML and environment variables cannot say None: accept a word for "no cap".
        if isinstance(value, str) and value.strip().lower() in ("none", "off", "unlimited"):
            return None
        return value

    @model_validator(mode="after")
    def _bedrock_switch(self) -> RLMConfig:
        if self.use_bedrock and self.upstream.type != "bedrock":
            object.__setattr__(self, "upstream", self.upstream.model_copy(update={"type": "bedrock"}))
        return self

    @property
    def effective_root_model(self) -> str:
        if self.upstream.type == "bedrock" and self.bedrock_model:
            return self.bedrock_model
        return self.root_model

    @property
    def effective_submodel(self) -> str:
        if self.upstream.type == "bedrock" and self.bedrock_submodel:
            return self.bedrock_submodel
        return self.submodel

    @property
    def effective_cache_dir(self) -> Path:
        if self.cache_dir is not None:
            return self.cache_dir
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(base) / "fsrlm"


# Set while a mapping is validated as it is (model_validate, or after the sources were merged).
_EXACT: contextvars.ContextVar[bool] = contextvars.ContextVar("fsrlm_config_exact", default=False)


# -- loading -----------------------------------------------------------------


_TABLES = frozenset({"executor", "upstream", "policy"})  # nested settings: TOML tables or JSON, not FSRLM_<FIELD>


def _scalar_fields() -> list[str]:
    return sorted(set(RLMConfig.model_fields) - _TABLES)


def setting_env_variables() -> list[str]:
    """Every ``FSRLM_*`` variable that sets a configuration field."""
    names = [ENV_PREFIX + name.upper() for name in _scalar_fields()]
    names += ["FSRLM_EXECUTOR", "FSRLM_ISOLATION", "FSRLM_UPSTREAM"] + [f"FSRLM_UPSTREAM_{key.upper()}" for key in _UPSTREAM_ENV]
    return sorted(names)


def _check_env_names(env: Mapping[str, str]) -> None:
    """Refuse an ``FSRLM_*`` variable that sets nothing (a misspelt limit must not be ignored)."""
    known = set(setting_env_variables())
    unknown = sorted(name for name in env if name.startswith(ENV_PREFIX) and name not in known
                     and name not in OTHER_ENV_VARIABLES)
    if not unknown:
        return
    lines = []
    for name in unknown:
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.75)
        lines.append(f"  {name}: not an fsRLM setting" + (f"; did you mean {close[0]}?" if close else ""))
    raise ConfigError("Unknown fsRLM environment variable" + ("s" if len(unknown) > 1 else "") + ":\n"
                      + "\n".join(lines) + "\nRename or unset it (the settings are FSRLM_<FIELD> for the "
                      "fields of RLMConfig, listed in the README's Configuration table).")


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """Map ``FSRLM_*`` variables onto config fields (strings; pydantic coerces them)."""
    _check_env_names(env)
    out: dict[str, Any] = {}
    for name in _scalar_fields():
        value = env.get(ENV_PREFIX + name.upper())
        if value is not None and value != "":
            out[name] = json.loads(value) if name in _JSON_FIELDS else value
    executor = env.get("FSRLM_EXECUTOR")
    if executor:
        out["executor"] = json.loads(executor) if executor.lstrip().startswith("{") else {"type": executor}
    upstream: dict[str, Any] = {}
    kind = env.get("FSRLM_UPSTREAM")
    if kind:
        upstream = json.loads(kind) if kind.lstrip().startswith("{") else {"type": kind}
    for key in _UPSTREAM_ENV:
        value = env.get(f"FSRLM_UPSTREAM_{key.upper()}")
        if value:
            upstream[key] = value
    if upstream:
        out["upstream"] = upstream
    return out


def merge_settings(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``top`` laid over ``base`` as ``load_config`` does: tables merge, a new executor ``type`` replaces
    the executor table, ``None`` values are ignored (per-job overrides of ``fsrlm batch``, ``fsrlm resume``)."""
    merged = dict(base)
    for key, value in top.items():
        if value is None:  # an unset flag does not erase lower layers
            continue
        if key == "executor" and isinstance(value, dict) and isinstance(merged.get(key), dict):
            # A different executor type replaces the old table instead of mixing fields.
            old = merged[key]
            if "type" in value and old.get("type") not in (None, value["type"]):
                merged[key] = dict(value)
            else:
                merged[key] = {**old, **value}
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_settings(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"Config file {path} does not exist; create it or drop --config.") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"Config file {path} is not valid TOML: {e}") from None
    # Allow both a flat file and one with an [fsrlm] table.
    return dict(data.get("fsrlm", data))


def format_validation_error(err: ValidationError) -> str:
    lines = []
    for item in err.errors():
        loc = [str(p) for p in item["loc"]]
        shown = loc
        of = ""
        if len(loc) > 1 and loc[0] == "executor" and loc[1] in EXECUTOR_TYPES:  # pydantic adds the union's tag
            shown, of = [loc[0], *loc[2:]], f" of the {loc[1]} executor"
        field = ".".join(shown) or "(config)"
        secret = any(word in field for word in ("key", "secret", "token", "password"))
        got = item.get("input")
        show = got is not None and not isinstance(got, dict | list) and not secret and item["type"] != "extra_forbidden"
        hint = ""
        if loc and loc[0] in RLMConfig.model_fields and loc[0] not in _TABLES:
            hint = f"  [env {ENV_PREFIX}{loc[0].upper()}]"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            close = difflib.get_close_matches(loc[-1], _field_names_at(loc[:-1]), n=1, cutoff=0.6)
            message = f"unknown setting{of}" + (f"; did you mean {'.'.join([*shown[:-1], close[0]])}?"
                                                 if close else "")
        lines.append(f"  {field}: {message}" + (f" (got {got!r})" if show else "") + hint)
    return "Invalid fsRLM configuration:\n" + "\n".join(lines)


def _field_names_at(loc: list[str]) -> list[str]:
    """The setting names valid at ``loc`` (``[]`` the top level, ``["executor", "docker"]``, ``["upstream"]``)."""
    if not loc:
        return list(RLMConfig.model_fields)
    if loc[0] == "upstream":
        return list(UpstreamConfig.model_fields)
    if loc[0] == "policy":
        return list(PolicyConfig.model_fields)
    if loc[0] == "executor" and len(loc) > 1:
        union = typing.get_args(ExecutorConfig)[0]  # Annotated[Union[...], Field(discriminator="type")]
        for cls in typing.get_args(union):
            if cls.model_fields["type"].default == loc[1]:
                return list(cls.model_fields)
    return []


def check_executor_type(data: Mapping[str, Any]) -> None:
    executor = data.get("executor")
    if isinstance(executor, dict) and executor.get("type") not in (None, *EXECUTOR_TYPES):
        close = difflib.get_close_matches(str(executor.get("type")), EXECUTOR_TYPES, n=1, cutoff=0.6)
        raise ConfigError(
            f"Unknown executor type {executor.get('type')!r}"
            + (f" (did you mean {close[0]!r}?)" if close else "")
            + f"; valid types: {', '.join(EXECUTOR_TYPES)}."
        )


def build_config(data: Mapping[str, Any]) -> RLMConfig:
    """Validate a mapping into an ``RLMConfig``, turning errors into ``ConfigError``."""
    data = dict(data)
    executor = data.get("executor")
    if isinstance(executor, dict) and "type" not in executor:  # settings of the default executor
        data["executor"] = {"type": "docker", **executor}
    check_executor_type(data)
    try:
        return RLMConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None


def collect_sources(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The merged, not yet validated settings: TOML file < ``FSRLM_*`` < overrides."""
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    if path is None:
        path = env.get("FSRLM_CONFIG") or (DEFAULT_CONFIG_FILE if Path(DEFAULT_CONFIG_FILE).is_file() else None)
    if path is not None:
        data = _read_toml(Path(path))
    try:
        data = merge_settings(data, _env_overrides(env))
    except json.JSONDecodeError as e:
        raise ConfigError(f"FSRLM_EXECUTOR / FSRLM_UPSTREAM / FSRLM_PRICES / FSRLM_UNKNOWN_MODEL_PRICE hold "
                          f"invalid JSON: {e}") from None
    isolation = env.get("FSRLM_ISOLATION")
    if isolation:  # the sandbox's kernel, for whichever container executor the config names (not for local)
        executor = data.get("executor")
        executor = dict(executor) if isinstance(executor, dict) else {}
        if executor.get("type", "docker") != "local":
            data["executor"] = {"type": "docker", **executor, "isolation": isolation}
    return merge_settings(data, dict(overrides or {}))


def load_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> RLMConfig:
    """Load configuration: defaults < TOML file < ``FSRLM_*`` < overrides.

    Without ``path``, ``FSRLM_CONFIG`` or ``./fsrlm.toml`` is read when present.
    ``RLMConfig(**overrides)`` is the same as ``load_config(overrides=overrides)``.
    """
    return build_config(collect_sources(path, env=env, overrides=overrides))
