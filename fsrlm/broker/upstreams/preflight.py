"""Before a run starts: can the configured model API be reached at all?

A mistyped ``FSRLM_UPSTREAM_BASE_URL`` or a gateway that is down used to cost
minutes of retries (the broker's, then the CLI's own) before a run failed with a
message naming the in-sandbox relay. ``check_reachable`` opens one TCP connection
to the upstream's host and port with a short timeout — no request is sent, nothing
is spent — and fails at once with the configured URL and what to check.
"""

from __future__ import annotations

import asyncio
import os
import socket
from urllib.parse import urlsplit

from fsrlm.config import UpstreamConfig
from fsrlm.errors import ConfigError, UpstreamUnreachable

PREFLIGHT_TIMEOUT_SECONDS = 5.0


def upstream_url(config: UpstreamConfig, region: str | None = None) -> str:
    """The base URL the broker will call for ``config``."""
    from fsrlm.broker.upstreams.anthropic import ANTHROPIC_API
    from fsrlm.broker.upstreams.bedrock import bedrock_runtime_url

    if config.base_url:
        return config.base_url
    if config.type == "bedrock":
        return bedrock_runtime_url(region or config.aws_region or os.environ.get("AWS_REGION") or "us-east-1")
    return ANTHROPIC_API


def _where(config: UpstreamConfig) -> str:
    if config.base_url:
        return "upstream.base_url / FSRLM_UPSTREAM_BASE_URL"
    if config.type == "bedrock":
        return "the Bedrock runtime of AWS_REGION / upstream.aws_region"
    return "the Anthropic API"


async def check_reachable(config: UpstreamConfig, *, region: str | None = None,
                          timeout: float = PREFLIGHT_TIMEOUT_SECONDS) -> None:
    """Raise ``UpstreamUnreachable`` when nothing accepts a connection at the upstream's address."""
    url = upstream_url(config, region)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"upstream.base_url {url!r} is not an http(s) URL; give e.g. https://gateway.example/anthropic")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(parts.hostname, port), timeout)
    except (OSError, asyncio.TimeoutError) as e:
        if isinstance(e, socket.gaierror):
            reason = f"the name {parts.hostname} does not resolve"
        elif isinstance(e, asyncio.TimeoutError | TimeoutError):
            reason = f"no answer within {timeout:g} s"
        else:
            reason = (e.strerror or str(e)).lower() if isinstance(e, OSError) else str(e)
        raise UpstreamUnreachable(
            f"Cannot reach the model API at {url} ({_where(config)}): {reason}. Check the address and that the "
            "server runs; nothing was started and nothing was spent (set upstream.preflight = false to skip "
            "this check)."
        ) from None
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
