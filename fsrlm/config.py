"""``RLMConfig``: every setting of a run, loaded from ``fsrlm.toml``, ``FSRLM_*`` and flags.

Precedence, lowest first: defaults, the TOML file, ``FSRLM_*`` environment
variables, explicit overrides (command-line flags or keyword arguments).
"""

from __future__ import annotations

import json
import os
import tomllib
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


class RLMConfig(BaseModel):
    """Settings of an RLM run. Every field can be set as ``FSRLM_<FIELD>``."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # Recursive subcalls (scripts calling the cheaper model), all enforced by the broker.
    max_tokens_per_subcall: int = Field(default=1000, gt=0, le=128_000)
    max_depth: int = Field(default=1, ge=0, le=5, description="nesting of rlm_query; 0 forbids it")
    max_scripts: int = Field(default=20, gt=0)
    max_subcalls_per_script: int = Field(default=100, gt=0)
    max_total_subcalls: int = Field(default=1000, gt=0)
    max_budget_usd: float | None = Field(default=5.0, gt=0, description='root + subcalls; None (or "none") for no cap')
    subcall_concurrency: int = Field(default=8, gt=0, le=256)
    submodel: str = "claude-haiku-4-5"

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


# -- loading -----------------------------------------------------------------


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """Map ``FSRLM_*`` variables onto config fields (strings; pydantic coerces them)."""
    out: dict[str, Any] = {}
    fields = set(RLMConfig.model_fields) - {"executor", "upstream"}
    for name in fields:
        value = env.get(ENV_PREFIX + name.upper())
        if value is not None and value != "":
            out[name] = value
    executor = env.get("FSRLM_EXECUTOR")
    if executor:
        out["executor"] = json.loads(executor) if executor.lstrip().startswith("{") else {"type": executor}
    upstream: dict[str, Any] = {}
    kind = env.get("FSRLM_UPSTREAM")
    if kind:
        upstream = json.loads(kind) if kind.lstrip().startswith("{") else {"type": kind}
    for key in ("base_url", "api_key", "aws_region"):
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
        if value is None:
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
        field = ".".join(loc) or "(config)"
        secret = any(word in field for word in ("key", "secret", "token", "password"))
        got = item.get("input")
        show = got is not None and not isinstance(got, dict | list) and not secret and item["type"] != "extra_forbidden"
        hint = ""
        if loc and loc[0] in RLMConfig.model_fields and loc[0] not in ("executor", "upstream"):
            hint = f"  [env {ENV_PREFIX}{loc[0].upper()}]"
        message = "unknown setting" if item["type"] == "extra_forbidden" else item["msg"]
        lines.append(f"  {field}: {message}" + (f" (got {got!r})" if show else "") + hint)
    return "Invalid fsRLM configuration:\n" + "\n".join(lines)


def build_config(data: Mapping[str, Any]) -> RLMConfig:
    """Validate a mapping into an ``RLMConfig``, turning errors into ``ConfigError``."""
    data = dict(data)
    executor = data.get("executor")
    if isinstance(executor, dict) and "type" not in executor:  # settings of the default executor
        executor = data["executor"] = {"type": "docker", **executor}
    if isinstance(executor, dict) and executor.get("type") not in (None, *EXECUTOR_TYPES):
        raise ConfigError(
            f"Unknown executor type {executor.get('type')!r}; valid types: {', '.join(EXECUTOR_TYPES)}."
        )
    try:
        return RLMConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None


def load_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> RLMConfig:
    """Load configuration: defaults < TOML file < ``FSRLM_*`` < overrides.

    Without ``path``, ``FSRLM_CONFIG`` or ``./fsrlm.toml`` is read when present.
    """
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    if path is None:
        path = env.get("FSRLM_CONFIG") or (DEFAULT_CONFIG_FILE if Path(DEFAULT_CONFIG_FILE).is_file() else None)
    if path is not None:
        data = _read_toml(Path(path))
    try:
        data = merge_settings(data, _env_overrides(env))
    except json.JSONDecodeError as e:
        raise ConfigError(f"FSRLM_EXECUTOR / FSRLM_UPSTREAM hold invalid JSON: {e}") from None
    isolation = env.get("FSRLM_ISOLATION")
    if isolation:  # the sandbox's kernel, for whichever container executor the config names (not for local)
        executor = data.get("executor")
        executor = dict(executor) if isinstance(executor, dict) else {}
        if executor.get("type", "docker") != "local":
            data["executor"] = {"type": "docker", **executor, "isolation": isolation}
    data = merge_settings(data, dict(overrides or {}))
    return build_config(data)
