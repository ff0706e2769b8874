"""The broker: a host-side HTTP service, one per run, that owns keys, limits, cache and audit.

It listens on a unix socket in a private folder (and, for the local executor, on
a loopback port). Every request must carry the run's random token; the token
authorises calls against *this run's* limits and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fsrlm.broker.accounting import (
    DEFAULT_MAX_OUTPUT_TOKENS,
    UsageSniffer,
    input_ceiling,
    terms_of,
)
from fsrlm.broker.audit import AuditLog, CallRecord
from fsrlm.broker.cache import ResponseCache
from fsrlm.broker.connections import limit_connections
from fsrlm.broker.endpoint import BrokerEndpoint, BrokerSocket
from fsrlm.broker.intake import IntakeLimiter
from fsrlm.broker.limits import MeteredCall, RunLedger, RunLimits, SharedLedger
from fsrlm.broker.policy import RequestPolicy, RootRequest
from fsrlm.broker.pricing import Pricer
from fsrlm.broker.subcalls import SubcallService, parse_request
from fsrlm.broker.upstreams import create_upstream
from fsrlm.broker.upstreams.retry import OnRetry, with_retries
from fsrlm.config import (
    DEFAULT_UNKNOWN_MODEL_PRICE,
    ModelPrice,
    PolicyConfig,
    UpstreamConfig,
)
from fsrlm.errors import (
    InputError,
    LimitExceeded,
    PolicyRefused,
    UpstreamAuthError,
    UpstreamError,
    root_cause,
)

logger = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 32 * 1024 * 1024  # a whole root conversation fits; hundreds of MB do not
# Request bodies held at once, across every connection: a body's bytes are reserved before it is read
# and released when its call is answered, so a flood of big requests waits instead of growing memory.
MAX_BYTES_IN_FLIGHT = 2 * MAX_REQUEST_BYTES
BODY_READ_TIMEOUT = 60.0  # seconds to receive a whole body once its reservation is granted
ROOT_CONCURRENCY = 4  # root-model calls in flight at once (the CLI makes one at a time)
MAX_CONNECTIONS = 256  # plus 2 per subcall slot: open sockets the sandbox may hold (connections.py)
ROOT_SCRIPT = "(root agent)"
UNREAD_USAGE = ("the answer's usage could not be read (cut short, too big or of an unknown shape): "
                "charged its reservation")
SETTLE_WAIT_SECONDS = 5.0  # Broker.stop: how long cancelled handlers get to settle their calls themselves
# Response headers worth passing back to the CLI.
_PASS_HEADERS = ("content-type", "request-id", "x-request-id", "retry-after", "anthropic-ratelimit-requests-remaining")


class BrokerSettings(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    run_id: str
    token: str
    workspace: Path
    submodel: str
    root_model: str | None = None  # the CLI's model (effective name); the policy allows it and the submodel
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    limits: RunLimits
    upstream: UpstreamConfig
    cache_dir: Path | None  # None: caching off
    subcall_concurrency: int = Field(gt=0)
    retry_base_wait: float = 0.5
    socket: BrokerSocket | None = None  # made ahead of time (a warm sandbox mounts it); default: made at start
    prices: dict[str, ModelPrice] = Field(default_factory=dict)  # RLMConfig.prices
    unknown_model_price: ModelPrice = DEFAULT_UNKNOWN_MODEL_PRICE


NestedRunner = Callable[[str, str], Awaitable[dict[str, Any]]]


LIMIT_STATUS = 402  # the CLI shows "API Error: 402 <message>" and does not retry (403 reads "Failed to authenticate")


def error_response(status: int, kind: str, message: str, limit: str | None = None) -> web.Response:
    """The broker's one error body: ``{"type": "error", "error": {"type", "message", "limit"}}``.

    ``limit`` names the run limit or the policy setting involved (None when there is none).
    """
    body = {"type": "error", "error": {"type": kind, "message": message, "limit": limit}}
    return web.json_response(body, status=status)


class Broker:
    def __init__(
        self,
        settings: BrokerSettings,
        *,
        depth: int = 0,
        shared: SharedLedger | None = None,
        nested_runner: NestedRunner | None = None,
        on_record: Callable[[CallRecord], None] | None = None,
        on_retry: OnRetry | None = None,
    ) -> None:
        self.settings = settings
        pricer = Pricer(settings.prices, settings.unknown_model_price, upstream_type=settings.upstream.type)
        self.ledger = RunLedger(limits=settings.limits, depth=depth, shared=shared or SharedLedger(), pricer=pricer)
        self.audit = AuditLog(settings.workspace, on_record)
        self.nested_runner = nested_runner
        self.on_retry = on_retry
        self.fatal_errors: list[str] = []  # e.g. the upstream rejected our credentials
        self._root_slots = asyncio.Semaphore(ROOT_CONCURRENCY)
        self.policy = RequestPolicy(settings.policy, api="bedrock" if settings.upstream.type == "bedrock" else "anthropic",
                                    models=[settings.root_model or "", settings.submodel])
        self._intake = IntakeLimiter(MAX_BYTES_IN_FLIGHT, MAX_REQUEST_BYTES, BODY_READ_TIMEOUT)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._socket: BrokerSocket | None = None
        self._tcp_port: int | None = None
        self._service: SubcallService | None = None

    # -- lifecycle ----------------------------------------------------------

    async def start(self) -> BrokerEndpoint:
        s = self.settings
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max(64, s.subcall_concurrency * 2)),
            auto_decompress=True,
        )
        try:
            upstream = create_upstream(s.upstream, self._session)
            self._service = SubcallService(
                upstream=upstream, ledger=self.ledger, audit=self.audit,
                cache=ResponseCache(s.cache_dir) if s.cache_dir else None,
                submodel=s.submodel, concurrency=s.subcall_concurrency,
                max_retries=s.upstream.max_retries, retry_base_wait=s.retry_base_wait, on_retry=self.on_retry,
            )
            self._upstream = upstream
            app = web.Application(client_max_size=MAX_REQUEST_BYTES, middlewares=[self._guard])
            app.router.add_post("/fsrlm/v1/subcall", self._subcall)
            app.router.add_post("/fsrlm/v1/rlm_query", self._rlm_query)
            app.router.add_get("/fsrlm/v1/budget", self._budget)
            app.router.add_get("/fsrlm/v1/health", self._health)
            # Everything else is a root call for the policy to judge: it forwards only the Messages API
            # routes of this upstream and answers the rest with a refusal that says so.
            app.router.add_route("*", "/{tail:.*}", self._root_call)
            self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
            await self._runner.setup()
            assert self._runner.server is not None
            limit_connections(self._runner.server, MAX_CONNECTIONS + 2 * s.subcall_concurrency)
            self._socket = s.socket or BrokerSocket.create()
            await web.SockSite(self._runner, self._socket.sock).start()
        except BaseException:
            await self.stop()
            raise
        return BrokerEndpoint(unix_socket=self._socket.path, open_tcp=self.open_tcp)

    async def open_tcp(self) -> int:
        """Also listen on a random loopback port (for agents running on the host)."""
        if self._tcp_port is None:
            assert self._runner is not None
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            self._tcp_port = next(a[1] for a in self._runner.addresses if isinstance(a, tuple))
        return self._tcp_port

    async def stop(self) -> None:
        """Stop serving; return once every call this broker started is settled (charged) in the ledger."""
        if self._runner is not None:
            await self._runner.cleanup()  # handlers get shutdown_timeout to finish, then are cancelled
            self._runner = None
        await self._settle_in_flight()
        self.audit.close()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    async def _settle_in_flight(self) -> None:
        """Let cancelled handlers settle their own calls (their ``finally``), then charge what is left in full."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE_WAIT_SECONDS
        while self.ledger.unsettled and loop.time() < deadline:
            await asyncio.sleep(0.01)
        charged = self.ledger.settle_open()
        if charged:
            logger.warning("broker %s stopped with calls in flight: charged their reservations ($%.4f)",
                           self.settings.run_id, charged)

    async def __aenter__(self) -> Broker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def records(self) -> list[CallRecord]:
        return self.audit.records

    # -- middleware ---------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        if not self._authorised(request):
            return error_response(401, "authentication_error", "missing or wrong run token")
        try:
            async with self._intake.body(request):  # the body's bytes reserved, read with a deadline
                return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            return error_response(413, "request_too_large", f"request larger than {MAX_REQUEST_BYTES} bytes")
        except web.HTTPException as e:
            return error_response(e.status, "invalid_request_error", e.reason)
        except LimitExceeded as e:
            return error_response(LIMIT_STATUS, "limit_exceeded", str(e), e.limit)
        except PolicyRefused as e:
            return error_response(e.status, "policy_refused", f"fsRLM broker policy: {e}", e.setting)
        except InputError as e:
            return error_response(400, "invalid_request_error", str(e))
        except UpstreamAuthError as e:
            self._fatal(f"The model API rejected the broker's credentials: {e}")
            return error_response(502, "upstream_error", str(e))
        except UpstreamError as e:
            if e.status == 504:
                return error_response(504, "upstream_timeout", str(e))
            return error_response(502, "upstream_error", str(e))

    def _authorised(self, request: web.Request) -> bool:
        offered = request.headers.get("x-api-key", "")
        auth = request.headers.get("authorization", "")
        if not offered and auth.lower().startswith("bearer "):
            offered = auth[7:].strip()
        return hmac.compare_digest(offered.encode(), self.settings.token.encode())

    def _fatal(self, message: str) -> None:
        if message not in self.fatal_errors:
            self.fatal_errors.append(message)

    # -- handlers -----------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "run_id": self.settings.run_id})

    async def _budget(self, request: web.Request) -> web.Response:
        return web.json_response(self.ledger.snapshot(request.headers.get("x-fsrlm-script")))

    async def _subcall(self, request: web.Request) -> web.Response:
        assert self._service is not None
        script = (request.headers.get("x-fsrlm-script") or "<unknown>")[:256]
        req = parse_request(await request.read(), self.policy)
        answer = await self._service.call(script, req)
        return web.json_response(answer.model_dump())

    async def _rlm_query(self, request: web.Request) -> web.Response:
        try:
            payload = _RlmQuery.model_validate_json(await request.read())
        except ValidationError as e:
            raise InputError(f"invalid rlm_query request: {e.errors()[0]['msg']}") from None
        script = (request.headers.get("x-fsrlm-script") or "<unknown>")[:256]
        started = time.perf_counter()
        try:
            self.ledger.check_depth()
            self.ledger.check_budget()
        except LimitExceeded as e:
            self.audit.add(CallRecord(kind="rlm_query", script=script, model=self.settings.submodel,
                                      status="refused", limit=e.limit, error=str(e)))
            raise
        if self.nested_runner is None:
            raise LimitExceeded("nested runs are not available in this broker", limit="max_depth")
        async with contextlib.AsyncExitStack() as stack:
            try:
                await stack.enter_async_context(self.ledger.nested_slot())  # max_concurrent_nested
                self.ledger.check_budget()  # the budget may have run out while this call waited for its slot
            except LimitExceeded as e:
                self.audit.add(CallRecord(kind="rlm_query", script=script, model=self.settings.submodel,
                                          status="refused", limit=e.limit, error=str(e)))
                raise
            result = await self.nested_runner(payload.prompt, payload.context)
        self.audit.add(CallRecord(kind="rlm_query", script=script, model=self.settings.submodel,
                                  status="ok" if result.get("success") else "error",
                                  latency_ms=round((time.perf_counter() - started) * 1000, 3)))
        return web.json_response(result)

    async def _root_call(self, request: web.Request) -> web.StreamResponse:
        """Forward the CLI's model call as the policy rebuilt it, counting its cost.

        At most ``ROOT_CONCURRENCY`` at once; each attempt reserves its worst case in the
        ledger before it goes upstream, so a burst of root calls cannot spend past the budget.
        """
        try:
            call = self.policy.root(request.method, request.raw_path.partition("?")[0], request.query,
                                    request.headers, await request.read())
        except PolicyRefused as e:
            self._root_record("(refused)", "refused", time.perf_counter(), error=str(e), limit=e.setting or "policy")
            raise
        async with self._root_slots:
            return await self._root_call_in_slot(request, call)

    async def _root_call_in_slot(self, request: web.Request, call: RootRequest) -> web.StreamResponse:
        data = call.body  # the request the policy rebuilt: what goes upstream, and what is reserved for
        terms = terms_of(call.data)  # the dict ``data`` was serialised from: no second parse of the body
        model = call.model
        started = time.perf_counter()
        long_context = "context-1m" in call.headers.get("anthropic-beta", "")
        context = self.ledger.pricer.context_tokens(model, long_context=long_context)
        metered = MeteredCall(self.ledger, model, input_ceiling(len(data), terms, context),
                              call.max_tokens or terms.max_tokens or DEFAULT_MAX_OUTPUT_TOKENS, root=True,
                              cache=terms.cache)
        try:
            return await self._metered_root_call(request, call, model, started, metered)
        finally:
            metered.close()  # cancelled or failed before the answer was read: charged its reservation

    async def _metered_root_call(self, request: web.Request, call: RootRequest, model: str, started: float,
                                 metered: MeteredCall) -> web.StreamResponse:
        try:
            self.ledger.check_budget()
        except LimitExceeded as e:
            self._root_record(model, "refused", started, error=str(e), limit=e.limit)
            raise
        upstream = self._upstream
        try:
            response = await with_retries(
                lambda: metered.attempt(lambda: upstream.request("POST", call.path, call.headers, call.body)),
                max_retries=self.settings.upstream.max_retries,
                base_wait=self.settings.retry_base_wait,
                retry_connect=lambda: upstream.answered,
                on_retry=self.on_retry,
            )
        except LimitExceeded as e:  # the budget cannot hold this call's worst case (or one more attempt)
            self._root_record(model, "refused", started, cost=metered.charged_usd, error=str(e), limit=e.limit)
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            message = f"the model API at {upstream.base_url} is unreachable: {root_cause(e)}"
            self._root_record(model, "error", started, cost=metered.charged_usd, error=message)
            return error_response(502, "upstream_error", message)

        out = web.StreamResponse(status=response.status)
        for name in _PASS_HEADERS:
            if name in response.headers:
                out.headers[name] = response.headers[name]
        sniffer = UsageSniffer(response.headers.get("content-type", ""))
        error: str | None = None
        try:
            await out.prepare(request)
            async for chunk in response.content.iter_any():
                sniffer.feed(chunk)
                await out.write(chunk)
            await out.write_eof()
        except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionResetError) as e:
            error = f"stream interrupted: {e!r}"
        finally:
            response.release()
            # Settled here, in the finally: a stream cut short, or a handler cancelled mid-stream, is charged
            # its reservation. An error status was charged nothing when it arrived (MeteredCall.attempt).
            usage = sniffer.finish() if error is None else None
            cost = metered.finish(usage)
        if response.status in (401, 403):
            self._fatal(f"The model API rejected the broker's credentials (HTTP {response.status}).")
        status = "ok" if response.status == 200 and error is None else "error"
        note = None
        if response.status == 200 and usage is None:
            note = (error + "; " if error else "") + UNREAD_USAGE
        usage = usage or sniffer.usage
        self._root_record(model, status, started, usage.input_tokens, usage.output_tokens, cost,
                          error=note or error or (None if response.status == 200 else f"HTTP {response.status}"))
        if error is not None and request.transport is not None:
            request.transport.abort()  # show the client a cut stream, not a clean (false) end
        return out

    def _root_record(self, model: str, status: Any, started: float, input_tokens: int = 0,
                     output_tokens: int = 0, cost: float = 0.0, *, error: str | None = None,
                     limit: str | None = None) -> None:
        self.audit.add(CallRecord(
            kind="root", script=ROOT_SCRIPT, model=model, status=status, input_tokens=input_tokens,
            output_tokens=output_tokens, cost_usd=cost, error=error, limit=limit,
            latency_ms=round((time.perf_counter() - started) * 1000, 3),
        ))


class _RlmQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(min_length=1)
    context: str = ""

