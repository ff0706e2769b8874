"""Bedrock's side of the wire, for the scripted model: SigV4 checked as AWS checks it, event-stream frames.

``ScriptedModelServer(bedrock=BedrockCredentials(...))`` also answers
``POST /model/<id>/invoke`` (JSON) and ``/model/<id>/invoke-with-response-stream``
(``application/vnd.amazon.eventstream``: one ``chunk`` frame per Anthropic
streaming event, its bytes base64 in a JSON payload, as Bedrock sends them). A
request whose signature does not verify against these credentials gets Bedrock's
403, so a test that passes proves the broker signed what the CLI sent unsigned.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class BedrockCredentials:
    """The AWS credentials the broker is expected to sign with (fake ones, in tests)."""

    access_key: str = "AKIAFAKEFAKEFAKEFAKE"
    secret_key: str = "fake/secret/key/for/tests/only/0123456789"
    region: str = "us-west-2"

    def environment(self) -> dict[str, str]:
        """What the *host* environment holds for the broker's boto3 chain (never the sandbox)."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_REGION": self.region}


def sigv4_problem(request: web.Request, body: bytes, creds: BedrockCredentials) -> str | None:
    """Recompute the signature from what arrived on the wire, as AWS does; None when it matches."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    auth = request.headers.get("authorization", "")
    if not auth.startswith("AWS4-HMAC-SHA256 "):
        return "no SigV4 authorization header"
    amz_date = request.headers.get("x-amz-date")
    if not amz_date:
        return "no x-amz-date"
    fields = dict(p.strip().split("=", 1) for p in auth[len("AWS4-HMAC-SHA256 "):].split(","))
    access_key, date, region, service, terminal = fields["Credential"].split("/")
    if (access_key, region, service, terminal, date) != (creds.access_key, creds.region, "bedrock", "aws4_request",
                                                         amz_date[:8]):
        return f"unexpected credential scope {fields['Credential']}"
    signed = fields["SignedHeaders"].split(";")
    headers = {name: request.headers[name] for name in signed if name in request.headers}
    if set(headers) != set(signed):
        return f"signed headers missing on the wire: {set(signed) - set(headers)}"
    # AWS canonicalises the path exactly as it arrived (raw, still percent-encoded).
    aws = AWSRequest(method=request.method, url=f"http://{request.host}{request.raw_path}", data=body,
                     headers=headers)
    aws.context["timestamp"] = amz_date
    signer = SigV4Auth(Credentials(creds.access_key, creds.secret_key, request.headers.get("x-amz-security-token")),
                       "bedrock", creds.region)
    expected = signer.signature(signer.string_to_sign(aws, signer.canonical_request(aws)), aws)
    return None if expected == fields["Signature"] else "signature mismatch"


def _header(name: str, value: str) -> bytes:
    n, v = name.encode(), value.encode()
    return bytes([len(n)]) + n + b"\x07" + struct.pack(">H", len(v)) + v


def event_frame(event: dict[str, Any]) -> bytes:
    """One Bedrock ``chunk`` frame carrying an Anthropic streaming event."""
    payload = json.dumps({"bytes": base64.b64encode(json.dumps(event).encode()).decode()},
                         separators=(",", ":")).encode()
    headers = _header(":event-type", "chunk") + _header(":content-type", "application/json") + \
        _header(":message-type", "event")
    prelude = struct.pack(">II", 12 + len(headers) + len(payload) + 4, len(headers))
    message = prelude + struct.pack(">I", binascii.crc32(prelude)) + headers + payload
    return message + struct.pack(">I", binascii.crc32(message))


def bedrock_error(status: int, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status)
