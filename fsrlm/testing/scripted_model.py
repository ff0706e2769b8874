"""A scripted, Anthropic-compatible Messages API server for tests and ``make demo``.

The real Claude Code CLI (and the broker, and ``tools/llm_client.py``) can talk to
it with no network and no key. ``POST /v1/messages`` is answered as JSON, or as
SSE when the body says ``"stream": true``:

- a request with ``tools`` is the root agent: answered by the server's
  :class:`~fsrlm.testing.plans.Plan` (step N = number of assistant messages);
- any other request is a subcall (or a side request of the CLI): answered by the
  responder, :func:`~fsrlm.testing.plans.default_responder` unless one is given.

With ``bedrock=BedrockCredentials(...)`` it also speaks AWS Bedrock's runtime API
(``/model/<id>/invoke``, ``/model/<id>/invoke-with-response-stream`` as AWS event
streams, and ``/model/<id>/converse`` with Converse's camelCase usage), refusing requests whose SigV4 signature does not verify
(``fsrlm.testing.bedrock``).

Use it synchronously (``with ScriptedModelServer(plan) as srv: srv.url``, the
server runs in a background thread with its own loop) or in the caller's loop
(``async with ScriptedModelServer(plan) as srv``). Every request is recorded in
``srv.requests``; ``srv.inject(Fault(status=429))`` makes the next matching
request fail.

Command line (``make demo``, benchmarks)::

    python -m fsrlm.testing.scripted_model --port 0 --plan count --label ERROR
    URL http://127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import signal
import threading
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web

from fsrlm.testing.bedrock import (
    BedrockCredentials,
    bedrock_error,
    event_frame,
    sigv4_problem,
)
from fsrlm.testing.plans import (
    FinalStep,
    Plan,
    Responder,
    ToolStep,
    bash_plan,
    count_label_plan,
    default_responder,
    estimate_tokens,
    script_plan,
)

__all__ = [
    "FinalStep",
    "Fault",
    "Plan",
    "RecordedRequest",
    "ScriptedModelServer",
    "ToolStep",
    "bash_plan",
    "count_label_plan",
    "default_responder",
    "script_plan",
]

logger = logging.getLogger(__name__)

Kind = Literal["root", "subcall"]

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}
_DELTA_CHARS = 512  # text and tool-input JSON are streamed in pieces this long


@dataclass(frozen=True)
class Fault:
    """One injected failure, applied to the next matching request.

    ``stall_seconds`` delays the answer; then ``status`` answers with an Anthropic
    error body (``body`` replaces it) and a ``retry-after`` header when set, or
    ``drop_mid_stream`` breaks the connection (SSE: after ``message_start``; JSON:
    before any response). With only ``stall_seconds`` the answer is normal.
    """

    status: int | None = None
    retry_after: float | None = None
    body: dict | None = None
    drop_mid_stream: bool = False
    stall_seconds: float = 0.0


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it.

    ``path`` has no query string (see ``query``); ``headers`` keys are lower-case;
    ``body`` is the parsed JSON (``None`` when the body was not JSON).
    """

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    kind: Kind


def error_body(status: int, message: str) -> dict:
    """The Anthropic error JSON for ``status``."""
    kind = _ERROR_TYPES.get(status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


class ScriptedModelServer:
    """Anthropic-compatible server answering from a plan (root) and a responder (subcalls).

    ``plan``, ``responder`` and the latencies are plain attributes: a test may swap
    them between runs. ``port=0`` picks a free port; read it from ``url``.
    """

    def __init__(
        self,
        plan: Plan | None = None,
        responder: Responder | None = None,
        *,
        subcall_latency_ms: float = 0,
        root_latency_ms: float = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        bedrock: BedrockCredentials | None = None,
    ) -> None:
        self.plan = plan if plan is not None else Plan()
        self.bedrock = bedrock  # also answer Bedrock's /model/<id>/invoke[-with-response-stream], SigV4 checked
        self.responder: Responder = responder or default_responder
        self.subcall_latency_ms = subcall_latency_ms
        self.root_latency_ms = root_latency_ms
        self.host = host
        self.port = port
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._faults: list[tuple[Fault, str]] = []
        self._tool_ids = itertools.count(1)
        self._message_ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None
        self._thread_stop: asyncio.Event | None = None
        self._start_error: BaseException | None = None

    # -- public state ------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://host:port`` once started (the value for ``ANTHROPIC_BASE_URL``)."""
        if self._runner is None:
            raise RuntimeError("ScriptedModelServer is not running")
        return f"http://{self.host}:{self.port}"

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received so far, faulted ones included."""
        with self._lock:
            return list(self._requests)

    def requests_of(self, kind: Kind) -> list[RecordedRequest]:
        """The recorded requests of one kind (``"root"`` or ``"subcall"``)."""
        return [r for r in self.requests if r.kind == kind]

    def reset(self) -> None:
        """Forget recorded requests and pending faults (ids keep counting up)."""
        with self._lock:
            self._requests.clear()
            self._faults.clear()

    def inject(self, *faults: Fault, kind: Literal["subcall", "root", "any"] = "subcall") -> None:
        """Queue ``faults``; each applies to one later request of ``kind``, in order."""
        if kind not in ("subcall", "root", "any"):
            raise ValueError(f"kind must be 'subcall', 'root' or 'any', not {kind!r}")
        with self._lock:
            self._faults.extend((f, kind) for f in faults)

    # -- async lifecycle (caller's loop) -----------------------------------------------

    async def astart(self) -> ScriptedModelServer:
        """Start listening in the running loop."""
        if self._runner is not None:
            raise RuntimeError("ScriptedModelServer is already running")
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self.port = runner.addresses[0][1]
        self._runner = runner
        return self

    async def astop(self) -> None:
        """Stop listening and close open connections (idempotent)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> ScriptedModelServer:
        return await self.astart()

    async def __aexit__(self, *exc: object) -> None:
        await self.astop()

    # -- sync lifecycle (background thread) --------------------------------------------

    def start(self, timeout: float = 10.0) -> ScriptedModelServer:
        """Run the server in a background thread with its own loop; return once listening."""
        if self._thread is not None or self._runner is not None:
            raise RuntimeError("ScriptedModelServer is already running")
        ready = threading.Event()
        self._start_error = None
        thread = threading.Thread(
            target=lambda: asyncio.run(self._serve_in_thread(ready)), name="scripted-model", daemon=True
        )
        thread.start()
        if not ready.wait(timeout):
            raise TimeoutError("ScriptedModelServer did not start in time")
        if self._start_error is not None:
            thread.join()
            raise self._start_error
        self._thread = thread
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the background server started by :meth:`start` (idempotent)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        if self._thread_loop is not None and self._thread_stop is not None:
            self._thread_loop.call_soon_threadsafe(self._thread_stop.set)
        thread.join(timeout)

    def __enter__(self) -> ScriptedModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _serve_in_thread(self, ready: threading.Event) -> None:
        self._thread_loop = asyncio.get_running_loop()
        self._thread_stop = asyncio.Event()
        try:
            await self.astart()
        except BaseException as exc:  # handed to the starting thread
            self._start_error = exc
            ready.set()
            return
        ready.set()
        try:
            await self._thread_stop.wait()
        finally:
            await self.astop()

    # -- request handling --------------------------------------------------------------

    def _next_id(self, counter: itertools.count) -> int:
        with self._lock:
            return next(counter)

    def _take_fault(self, kind: Kind) -> Fault | None:
        with self._lock:
            for i, (fault, wanted) in enumerate(self._faults):
                if wanted in ("any", kind):
                    del self._faults[i]
                    return fault
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else {}
        except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
            body = None
        kind: Kind = "root" if isinstance(body, dict) and body.get("tools") else "subcall"
        headers = {k.lower(): v for k, v in request.headers.items()}
        record = RecordedRequest(request.method, request.path, dict(request.query), headers, body, kind)
        with self._lock:
            self._requests.append(record)
        fault = self._take_fault(kind) or Fault()

        if fault.stall_seconds:
            await asyncio.sleep(fault.stall_seconds)
        if fault.status:
            return self._error(fault.status, f"injected fault {fault.status}", fault)
        if not isinstance(body, dict):
            return self._error(400, "request body is not a JSON object")
        bedrock_action = self._bedrock_action(request, raw)
        if isinstance(bedrock_action, web.Response):
            return bedrock_action
        if bedrock_action == "converse":
            return self._converse(body, request.path.strip("/").split("/")[1])
        if bedrock_action is not None:
            body = {**body, "model": request.path.strip("/").split("/")[1],
                    "stream": bedrock_action == "invoke-with-response-stream"}
        elif request.method != "POST" or not request.path.startswith("/v1/messages"):
            return self._error(404, f"no route for {request.method} {request.path}")
        if request.path.rstrip("/").endswith("/count_tokens"):
            return web.json_response({"input_tokens": estimate_tokens(body.get("messages", []))})

        latency = self.root_latency_ms if kind == "root" else self.subcall_latency_ms
        if latency:
            await asyncio.sleep(latency / 1000)
        try:
            message = self._answer(body, kind)
        except Exception as exc:  # a broken plan or responder: say so to the client
            logger.exception("scripted model failed to answer a %s request", kind)
            return self._error(500, f"scripted model error: {exc!r}")

        if body.get("stream"):
            return await self._stream(request, message, fault.drop_mid_stream, bedrock=bedrock_action is not None)
        if fault.drop_mid_stream:
            return self._drop(request)
        return web.json_response(message, headers={"request-id": message["id"].replace("msg_", "req_", 1)})

    def _bedrock_action(self, request: web.Request, raw: bytes) -> str | web.Response | None:
        """For ``/model/<id>/<action>`` in Bedrock mode: the action, or the refusal AWS would send."""
        parts = request.path.strip("/").split("/")
        if self.bedrock is None or len(parts) != 3 or parts[0] != "model" or request.method != "POST":
            return None
        if parts[2] not in ("invoke", "invoke-with-response-stream", "converse"):
            return bedrock_error(404, f"unknown Bedrock action {parts[2]!r}")
        problem = sigv4_problem(request, raw, self.bedrock)
        if problem:
            return bedrock_error(403, f"The request signature we calculated does not match: {problem}")
        return parts[2]

    def _converse(self, body: dict, model: str) -> web.Response:
        """Bedrock's Converse API: the responder's text, usage in Converse's camelCase."""
        messages = [{"role": m.get("role"), "content": "".join(b.get("text", "") for b in m.get("content") or []
                                                              if isinstance(b, dict))}
                    for m in body.get("messages") or [] if isinstance(m, dict)]
        answer = self.responder({"model": model, "messages": messages})
        text = str(answer.get("text", "")) if isinstance(answer, dict) else str(answer)
        limit = (body.get("inferenceConfig") or {}).get("maxTokens")
        output = estimate_tokens(text) if not isinstance(limit, int) else min(estimate_tokens(text), limit)
        usage = {"inputTokens": estimate_tokens(messages), "outputTokens": output}
        usage["totalTokens"] = usage["inputTokens"] + output
        return web.json_response({"output": {"message": {"role": "assistant", "content": [{"text": text}]}},
                                  "stopReason": "end_turn", "usage": usage, "metrics": {"latencyMs": 1}})

    def _error(self, status: int, message: str, fault: Fault | None = None) -> web.Response:
        headers = {}
        if fault is not None and fault.retry_after is not None:
            headers["retry-after"] = f"{fault.retry_after:g}"
        payload = fault.body if fault is not None and fault.body is not None else error_body(status, message)
        return web.json_response(payload, status=status, headers=headers)

    def _answer(self, body: dict, kind: Kind) -> dict:
        """The complete assistant message for ``body``."""
        usage = {"input_tokens": estimate_tokens(body.get("messages", [])), "output_tokens": 0}
        stop_reason = "end_turn"
        if kind == "root":
            step = self.plan.step_for(body)
            if isinstance(step, ToolStep):
                block = {"type": "tool_use", "id": f"toolu_{self._next_id(self._tool_ids):04d}", "name": step.name,
                         "input": step.input}
                content, output, stop_reason = [block], json.dumps(step.input), "tool_use"
            else:
                content, output = [{"type": "text", "text": step.text}], step.text
        else:
            answer = self.responder(body)
            if isinstance(answer, dict):
                output = str(answer.get("text", ""))
                usage["input_tokens"] = int(answer.get("input_tokens", usage["input_tokens"]))
                if "output_tokens" in answer:
                    usage["output_tokens"] = int(answer["output_tokens"])
                stop_reason = answer.get("stop_reason", stop_reason)
            else:
                output = str(answer)
            content = [{"type": "text", "text": output}]
        if not usage["output_tokens"]:  # estimated (a responder's own figure is kept as given)
            usage["output_tokens"] = estimate_tokens(output)
            limit = body.get("max_tokens")
            if isinstance(limit, int) and limit > 0:
                usage["output_tokens"] = min(usage["output_tokens"], limit)  # as a real API: never past max_tokens
        return {
            "id": f"msg_scripted_{self._next_id(self._message_ids):04d}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model") or "scripted",
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": usage,
        }

    async def _stream(self, request: web.Request, message: dict, drop: bool, *, bedrock: bool = False
                      ) -> web.StreamResponse:
        content_type = "application/vnd.amazon.eventstream" if bedrock else "text/event-stream"
        resp = web.StreamResponse(headers={"content-type": content_type, "cache-control": "no-cache"})
        await resp.prepare(request)

        async def send(event: str, data: dict) -> None:
            await resp.write(event_frame(data) if bedrock else f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())

        start = dict(message, content=[], stop_reason=None, usage=dict(message["usage"], output_tokens=1))
        await send("message_start", {"type": "message_start", "message": start})
        if drop:
            return self._drop(request, resp)
        for index, block in enumerate(message["content"]):
            if block["type"] == "text":
                first, delta_type, key, whole = dict(block, text=""), "text_delta", "text", block["text"]
            else:
                first, delta_type, key, whole = dict(block, input={}), "input_json_delta", "partial_json", \
                    json.dumps(block["input"])
            await send("content_block_start", {"type": "content_block_start", "index": index, "content_block": first})
            for at in range(0, len(whole), _DELTA_CHARS):
                delta = {"type": delta_type, key: whole[at:at + _DELTA_CHARS]}
                await send("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
            await send("content_block_stop", {"type": "content_block_stop", "index": index})
        await send("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
            "usage": {"output_tokens": message["usage"]["output_tokens"]},
        })
        await send("message_stop", {"type": "message_stop"})
        await resp.write_eof()
        return resp

    @staticmethod
    def _drop(request: web.Request, resp: web.StreamResponse | None = None) -> web.StreamResponse:
        """Break the connection: the client sees a truncated stream or no response at all."""
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError  # aiohttp's quiet way out of a handler whose peer is gone


# -- command line ----------------------------------------------------------------------


def _plan_from_args(args: argparse.Namespace) -> Plan:
    if args.plan == "count":
        return count_label_plan(args.label, chunk_size=args.chunk_size)
    return Plan(name="final")


async def _serve(args: argparse.Namespace) -> None:
    server = ScriptedModelServer(
        _plan_from_args(args),
        subcall_latency_ms=args.subcall_latency_ms,
        root_latency_ms=args.root_latency_ms,
        host=args.host,
        port=args.port,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        print(f"URL {server.url}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    """Serve a scripted model until SIGTERM/SIGINT; print ``URL http://host:port`` first."""
    parser = argparse.ArgumentParser(prog="python -m fsrlm.testing.scripted_model", description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--plan", choices=["count", "final"], default="count",
                        help="count: write and run a label-counting script; final: answer 'done'")
    parser.add_argument("--label", default=None, help="label to count (default: first ALL-CAPS word of the question)")
    parser.add_argument("--chunk-size", type=int, default=2000)
    parser.add_argument("--subcall-latency-ms", type=float, default=0)
    parser.add_argument("--root-latency-ms", type=float, default=0)
    asyncio.run(_serve(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
