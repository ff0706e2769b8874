"""The Bedrock upstream against a fake Bedrock runtime that checks SigV4 the way AWS does."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import claude_agent_sdk
import pytest
from aiohttp import web
from botocore.eventstream import EventStreamBuffer
from broker_harness import TOKEN

from fsrlm.broker.accounting import UsageSniffer
from fsrlm.broker.upstreams import check_credentials
from fsrlm.broker.upstreams.bedrock import BEDROCK_ANTHROPIC_VERSION
from fsrlm.config import UpstreamConfig
from fsrlm.errors import CredentialsError
from fsrlm.testing.bedrock import BedrockCredentials, event_frame, sigv4_problem

CREDENTIALS = BedrockCredentials()
ACCESS_KEY, SECRET_KEY, REGION = CREDENTIALS.access_key, CREDENTIALS.secret_key, CREDENTIALS.region
SUBMODEL = "us.anthropic.claude-haiku-4-5-20251001-v1:0"
ROOT_MODEL = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"


# -- AWS event stream frames (application/vnd.amazon.eventstream) ---------------------------


def stream_events(model: str, text: str, input_tokens: int = 21, output_tokens: int = 7) -> list[dict[str, Any]]:
    return [
        {"type": "message_start", "message": {"id": "msg_bdrk_1", "type": "message", "role": "assistant",
                                              "model": model, "content": [], "stop_reason": None,
                                              "usage": {"input_tokens": input_tokens, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
         "usage": {"output_tokens": output_tokens}},
        {"type": "message_stop", "amazon-bedrock-invocationMetrics": {"inputTokenCount": input_tokens,
                                                                     "outputTokenCount": output_tokens}},
    ]


def decode_frames(raw: bytes) -> list[dict[str, Any]]:
    buffer = EventStreamBuffer()
    buffer.add_data(raw)
    return [json.loads(base64.b64decode(json.loads(m.payload)["bytes"])) for m in buffer]


def test_event_frames_decode_with_botocore() -> None:
    events = stream_events("m", "hi")
    assert decode_frames(b"".join(event_frame(e) for e in events)) == events


# -- the fake Bedrock runtime ---------------------------------------------------------------


@dataclass
class FakeBedrock:
    url: str = ""
    seen: list[dict[str, Any]] = field(default_factory=list)
    text: str = "bedrock says hi"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append({"path": request.path, "raw_path": request.raw_path, "body": json.loads(body),
                          "headers": {k.lower(): v for k, v in request.headers.items()}})
        problem = sigv4_problem(request, body, CREDENTIALS)
        if problem:
            return web.json_response({"message": f"The request signature is invalid: {problem}"}, status=403)
        model, action = request.match_info["model"], request.match_info["action"]
        if action == "invoke":
            return web.json_response({
                "id": "msg_bdrk_1", "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": self.text}], "stop_reason": "end_turn",
                "stop_sequence": None, "usage": {"input_tokens": 13, "output_tokens": 5},
            })
        if action == "invoke-with-response-stream":
            resp = web.StreamResponse(headers={"content-type": "application/vnd.amazon.eventstream",
                                               "x-amzn-requestid": "req-1"})
            await resp.prepare(request)
            for event in stream_events(model, self.text):
                await resp.write(event_frame(event))
            await resp.write_eof()
            return resp
        return web.json_response({"message": f"unknown action {action}"}, status=404)


@pytest.fixture
async def fake_bedrock() -> AsyncIterator[FakeBedrock]:
    fake = FakeBedrock()
    app = web.Application()
    app.router.add_post("/model/{model}/{action}", fake.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    fake.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield fake
    finally:
        await runner.cleanup()


@pytest.fixture
def no_aws_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No shared config, no instance metadata: only what a test puts in the environment counts."""
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-such-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-such-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def aws_env(no_aws_files: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_REGION", REGION)


def bedrock(fake: FakeBedrock, **kw: Any) -> UpstreamConfig:
    return UpstreamConfig(type="bedrock", base_url=fake.url, max_retries=1, **kw)


# -- tests ------------------------------------------------------------------------------------


async def test_subcall_is_a_signed_invoke_without_model_in_the_body(aws_env, fake_bedrock, start_broker) -> None:
    b = await start_broker(upstream=bedrock(fake_bedrock), submodel=SUBMODEL, max_tokens_per_subcall=200)
    reply = await b.subcall({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5000,
                             "temperature": 0.3})
    assert reply.status == 200, reply.raw
    assert reply.json["text"] == "bedrock says hi"
    assert (reply.json["input_tokens"], reply.json["output_tokens"]) == (13, 5)
    assert reply.json["cost_usd"] > 0

    (seen,) = fake_bedrock.seen
    assert seen["path"] == f"/model/{SUBMODEL}/invoke"
    assert seen["raw_path"] == f"/model/{quote(SUBMODEL, safe='')}/invoke"  # ":" travels as %3A, like boto3
    assert seen["body"] == {"anthropic_version": BEDROCK_ANTHROPIC_VERSION, "max_tokens": 200, "temperature": 0.3,
                            "messages": [{"role": "user", "content": "hi"}]}
    assert seen["headers"]["authorization"].startswith("AWS4-HMAC-SHA256 Credential=" + ACCESS_KEY)
    assert "x-amz-date" in seen["headers"]
    assert "x-api-key" not in seen["headers"] and "anthropic-version" not in seen["headers"]
    assert TOKEN not in json.dumps(seen)
    assert b.broker.fatal_errors == []


async def test_subcall_with_a_session_token_signs_it(aws_env, fake_bedrock, start_broker, monkeypatch) -> None:
    monkeypatch.setenv("AWS_SESSION_TOKEN", "fake-session-token")
    b = await start_broker(upstream=bedrock(fake_bedrock), submodel=SUBMODEL)
    reply = await b.subcall("hi")
    assert reply.status == 200, reply.raw
    assert fake_bedrock.seen[0]["headers"]["x-amz-security-token"] == "fake-session-token"


async def test_wrong_aws_secret_is_rejected_and_fatal(fake_bedrock, start_broker, no_aws_files,
                                                      monkeypatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    monkeypatch.setenv("AWS_REGION", REGION)
    b = await start_broker(upstream=bedrock(fake_bedrock), submodel=SUBMODEL)
    reply = await b.subcall("hi")
    assert reply.status == 502
    assert len(fake_bedrock.seen) == 1  # a 403 is not retried
    assert b.broker.fatal_errors


@pytest.mark.parametrize("model_id", [ROOT_MODEL, "anthropic.claude-3-haiku-20240307-v1:0", "plainmodel"])
async def test_root_stream_call_is_signed_and_passed_through(aws_env, fake_bedrock, start_broker,
                                                            model_id) -> None:
    """What the Bedrock-mode CLI sends: an unsigned invoke-with-response-stream, signed by the broker."""
    b = await start_broker(upstream=bedrock(fake_bedrock), submodel=SUBMODEL, root_model=model_id)
    body = {"anthropic_version": BEDROCK_ANTHROPIC_VERSION, "max_tokens": 512,
            "messages": [{"role": "user", "content": "hello"}], "tools": [],
            "anthropic_beta": ["interleaved-thinking-2025-05-14"]}
    path = f"/model/{quote(model_id, safe='')}/invoke-with-response-stream"
    reply = await b.request("POST", path, body=body, headers={
        "anthropic-version": "2023-06-01", "x-amz-date": "19990101T000000Z",  # must not override the broker's
        "x-stainless-lang": "js",
    })
    assert reply.status == 200, reply.raw
    assert reply.headers["content-type"] == "application/vnd.amazon.eventstream"
    expected = b"".join(event_frame(e) for e in stream_events(model_id, fake_bedrock.text))
    assert reply.raw == expected
    assert decode_frames(reply.raw)[2]["delta"]["text"] == "bedrock says hi"

    (seen,) = fake_bedrock.seen
    assert seen["path"] == f"/model/{model_id}/invoke-with-response-stream"
    assert seen["body"] == body
    assert seen["headers"]["x-amz-date"] != "19990101T000000Z"
    assert "x-stainless-lang" not in seen["headers"]  # the policy forwards only the headers it knows
    assert TOKEN not in json.dumps(seen)

    (record,) = b.broker.records
    assert (record.kind, record.model, record.status) == ("root", model_id, "ok")
    assert (record.input_tokens, record.output_tokens) == (21, 7)
    assert record.cost_usd > 0


def test_root_stream_usage_is_counted_when_frames_arrive_in_pieces() -> None:
    """The usage sniffer sees the event stream in arbitrary network pieces."""
    raw = b"".join(event_frame(e) for e in stream_events(ROOT_MODEL, "x" * 3000, 1234, 567))
    for size in (1, 7, 64, 1000, len(raw)):
        sniffer = UsageSniffer("application/vnd.amazon.eventstream")
        for at in range(0, len(raw), size):
            sniffer.feed(raw[at:at + size])
        usage = sniffer.finish()
        assert (usage.input_tokens, usage.output_tokens, usage.stop_reason) == (1234, 567, "end_turn"), size


def test_check_credentials_without_aws_credentials(no_aws_files, monkeypatch) -> None:
    monkeypatch.setenv("AWS_REGION", REGION)
    with pytest.raises(CredentialsError, match="AWS_ACCESS_KEY_ID"):
        check_credentials(UpstreamConfig(type="bedrock"))


def test_check_credentials_without_a_region(no_aws_files, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    with pytest.raises(CredentialsError, match="AWS_REGION"):
        check_credentials(UpstreamConfig(type="bedrock"))
    check_credentials(UpstreamConfig(type="bedrock", aws_region="eu-west-1"))


async def test_broker_does_not_start_without_aws_credentials(no_aws_files, fake_bedrock, start_broker) -> None:
    with pytest.raises(CredentialsError):
        await start_broker(upstream=bedrock(fake_bedrock))


# -- the real Claude Code CLI in Bedrock mode ----------------------------------------------

CLI = Path(claude_agent_sdk.__file__).parent / "_bundled" / "claude"


async def run_cli(env: dict[str, str], cwd: Path, timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(CLI), "-p", "say hi", "--output-format", "json", "--model", ROOT_MODEL, "--max-turns", "1",
        env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(), err.decode()


def cli_env(tmp_path: Path, port: int, **extra: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "CLAUDE_CONFIG_DIR": str(tmp_path / ".agent"),
        "CLAUDE_CODE_TMPDIR": str(tmp_path),  # not a folder left in the host's /tmp/claude-<uid>
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "CLAUDE_CODE_USE_BEDROCK": "1",
        "CLAUDE_CODE_SKIP_BEDROCK_AUTH": "1",
        "ANTHROPIC_BEDROCK_BASE_URL": f"http://127.0.0.1:{port}",
        "AWS_REGION": REGION,
        "ANTHROPIC_API_KEY": TOKEN,  # not sent in Bedrock mode: see the variants below
        **extra,
    }


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.skipif(not CLI.exists(), reason="the claude-agent-sdk wheel has no bundled CLI")
@pytest.mark.parametrize(
    "variant",
    [{"ANTHROPIC_CUSTOM_HEADERS": f"x-api-key: {TOKEN}"},  # sent as x-api-key on the model calls
     {"AWS_BEARER_TOKEN_BEDROCK": TOKEN}],  # sent as Authorization: Bearer on the model calls
    ids=["custom-headers", "bedrock-bearer-token"],
)
async def test_real_cli_in_bedrock_mode_through_the_broker(aws_env, fake_bedrock, start_broker, tmp_path,
                                                           variant) -> None:
    b = await start_broker(upstream=bedrock(fake_bedrock), submodel=SUBMODEL, root_model=ROOT_MODEL)
    port = await b.endpoint.open_tcp()
    code, out, err = await run_cli(cli_env(tmp_path, port, **variant), tmp_path)
    assert code == 0, out[-2000:] + err[-2000:]
    result = json.loads(out)
    assert result["result"] == "bedrock says hi"
    # The broker signed what the CLI sent unsigned; the fake checked the signature.
    invokes = [s for s in fake_bedrock.seen if s["path"].endswith("/invoke-with-response-stream")]
    assert invokes and all(s["path"] == f"/model/{ROOT_MODEL}/invoke-with-response-stream" for s in invokes)
    assert all(s["headers"]["authorization"].startswith("AWS4-HMAC-SHA256 ") for s in fake_bedrock.seen)
    assert TOKEN not in json.dumps(fake_bedrock.seen)
    roots = [r for r in b.broker.records if r.kind == "root"]
    assert roots and all(r.status == "ok" and r.model == ROOT_MODEL for r in roots)
    assert roots[0].input_tokens == 21 and roots[0].output_tokens == 7
    assert b.broker.fatal_errors == []


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.skipif(not CLI.exists(), reason="the claude-agent-sdk wheel has no bundled CLI")
async def test_real_cli_in_bedrock_mode_does_not_send_anthropic_api_key(aws_env, fake_bedrock, start_broker,
                                                                        tmp_path) -> None:
    """ANTHROPIC_API_KEY alone is not sent in Bedrock mode: the broker refuses, nothing reaches the upstream."""
    b = await start_broker(upstream=bedrock(fake_bedrock), submodel=SUBMODEL, root_model=ROOT_MODEL)
    port = await b.endpoint.open_tcp()
    code, out, err = await run_cli(cli_env(tmp_path, port, CLAUDE_CODE_MAX_RETRIES="0"), tmp_path)
    assert code != 0 or json.loads(out).get("is_error"), out[-2000:]
    assert fake_bedrock.seen == []
    assert b.broker.records == []
