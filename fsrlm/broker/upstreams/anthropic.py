"""The Anthropic API, or any server that speaks its Messages API (a gateway, a local model)."""

from __future__ import annotations

from typing import Any

from fsrlm.broker.upstreams.base import Upstream

ANTHROPIC_API = "https://api.anthropic.com"
API_VERSION = "2023-06-01"


class AnthropicUpstream(Upstream):
    name = "anthropic"

    def __init__(self, *args: Any, api_key: str | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._api_key = api_key

    def subcall_target(self, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return "/v1/messages", {**body, "stream": False}

    def sign(self, method: str, url: str, headers: dict[str, str], data: bytes) -> dict[str, str]:
        out = dict(headers)
        out.setdefault("anthropic-version", API_VERSION)
        out.setdefault("content-type", "application/json")
        if self._api_key:
            out["x-api-key"] = self._api_key
        return out


class CompatibleUpstream(AnthropicUpstream):
    name = "compatible"
