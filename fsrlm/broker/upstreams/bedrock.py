"""AWS Bedrock: requests signed with SigV4 from the boto3 credential chain.

The CLI runs in Bedrock mode against the broker (``CLAUDE_CODE_USE_BEDROCK=1``,
``ANTHROPIC_BEDROCK_BASE_URL`` = broker, ``CLAUDE_CODE_SKIP_BEDROCK_AUTH=1``), so
it sends unsigned Bedrock-shaped requests (``/model/<id>/invoke…``) which are
signed here and passed through; responses (AWS event streams included) come
back unchanged. Subcalls are turned into ``/model/<id>/invoke`` calls.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest

from fsrlm.broker.upstreams.base import Upstream

BEDROCK_ANTHROPIC_VERSION = "bedrock-2023-05-31"


def bedrock_runtime_url(region: str) -> str:
    return f"https://bedrock-runtime.{region}.amazonaws.com"


class BedrockUpstream(Upstream):
    name = "bedrock"

    def __init__(self, *args: Any, credentials: Any, region: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._credentials = credentials  # botocore credentials (refreshable)
        self.region = region

    def subcall_target(self, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        model = body["model"]
        payload = {k: v for k, v in body.items() if k not in ("model", "stream")}
        payload.setdefault("anthropic_version", BEDROCK_ANTHROPIC_VERSION)
        return f"/model/{quote(model, safe='')}/invoke", payload

    def sign(self, method: str, url: str, headers: dict[str, str], data: bytes) -> dict[str, str]:
        clean = {k: v for k, v in headers.items() if k.lower() not in ("anthropic-version", "anthropic-beta")}
        clean.setdefault("content-type", "application/json")
        request = AWSRequest(method=method, url=url, data=data, headers=clean)
        SigV4Auth(self._credentials.get_frozen_credentials(), "bedrock", self.region).add_auth(request)
        return dict(request.headers.items())
