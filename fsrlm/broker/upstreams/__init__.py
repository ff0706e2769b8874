"""Model APIs the broker can call, built from ``UpstreamConfig``."""

from __future__ import annotations

import os

import aiohttp

from fsrlm.broker.upstreams.anthropic import (
    ANTHROPIC_API,
    AnthropicUpstream,
    CompatibleUpstream,
)
from fsrlm.broker.upstreams.base import Upstream
from fsrlm.config import UpstreamConfig
from fsrlm.errors import ConfigError, CredentialsError

__all__ = ["Upstream", "check_credentials", "create_upstream"]

_ANTHROPIC_HELP = (
    "No Anthropic API key found. Set ANTHROPIC_API_KEY (or FSRLM_UPSTREAM_API_KEY) in the environment "
    "of the fsrlm process; only the host-side broker reads it, the sandbox never sees it. To use AWS "
    "Bedrock instead set FSRLM_UPSTREAM=bedrock (or use_bedrock = true) with AWS credentials; to use a "
    "gateway or local server set FSRLM_UPSTREAM=compatible and FSRLM_UPSTREAM_BASE_URL."
)
_BEDROCK_HELP = (
    "No AWS credentials found for Bedrock. Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, "
    "or run where an instance role is available) and AWS_REGION, in the environment of the fsrlm process; "
    "only the host-side broker uses them."
)


def _api_key(config: UpstreamConfig) -> str | None:
    if config.api_key is not None:
        return config.api_key.get_secret_value()
    return os.environ.get("FSRLM_UPSTREAM_API_KEY") or os.environ.get("ANTHROPIC_API_KEY") or None


def _aws_credentials_and_region(config: UpstreamConfig):
    import boto3  # lazily: only Bedrock users need it loaded

    session = boto3.Session(region_name=config.aws_region) if config.aws_region else boto3.Session()
    credentials = session.get_credentials()
    if credentials is None:
        raise CredentialsError(_BEDROCK_HELP)
    region = config.aws_region or os.environ.get("AWS_REGION") or session.region_name
    if not region:
        raise CredentialsError("No AWS region set for Bedrock. Set AWS_REGION (e.g. us-east-1) or upstream.aws_region.")
    return credentials, region


def check_credentials(config: UpstreamConfig) -> None:
    """Fail before any work starts when the upstream cannot be authenticated."""
    if config.type == "anthropic" and not _api_key(config):
        raise CredentialsError(_ANTHROPIC_HELP)
    if config.type == "compatible" and not config.base_url:
        raise ConfigError("upstream.type = 'compatible' needs upstream.base_url (FSRLM_UPSTREAM_BASE_URL).")
    if config.type == "bedrock":
        _aws_credentials_and_region(config)


def create_upstream(config: UpstreamConfig, session: aiohttp.ClientSession) -> Upstream:
    check_credentials(config)
    timeout = config.request_timeout_seconds
    if config.type == "bedrock":
        from fsrlm.broker.upstreams.bedrock import BedrockUpstream, bedrock_runtime_url

        credentials, region = _aws_credentials_and_region(config)
        base = config.base_url or bedrock_runtime_url(region)
        return BedrockUpstream(session, base, timeout, credentials=credentials, region=region)
    cls = CompatibleUpstream if config.type == "compatible" else AnthropicUpstream
    return cls(session, config.base_url or ANTHROPIC_API, timeout, api_key=_api_key(config))
