"""Subcalls: one model call on behalf of an agent script, with limits and the cache.

Order of operations, which the tests pin down:

1. validate the request (400), check it against the request policy (400 ``policy_refused``: the
   same model and content rules as root calls, ``fsrlm/broker/policy.py``), fill in the run's
   submodel and token cap;
2. look in the cache — a hit is answered at once, free, never refused;
3. reserve a slot with the ledger (402 ``limit_exceeded`` when a cap is hit);
4. call the upstream (bounded by ``subcall_concurrency``, retried by tenacity); once a slot is
   free, every attempt reserves its worst case in the ledger first (refused when the budget
   cannot hold it) and is settled when its answer is read (``limits.MeteredCall``);
5. charge the broker's own price (an answer whose usage cannot be read: its reservation),
   store in the cache, mirror into the workspace.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Literal

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fsrlm.broker.accounting import Usage, input_ceiling, read_usage, terms_of
from fsrlm.broker.audit import AuditLog, CallRecord
from fsrlm.broker.cache import CachedResponse, ResponseCache, cache_key
from fsrlm.broker.limits import MeteredCall, RunLedger
from fsrlm.broker.policy import RequestPolicy
from fsrlm.broker.upstreams import Upstream
from fsrlm.broker.upstreams.retry import OnRetry, with_retries
from fsrlm.errors import (
    InputError,
    LimitExceeded,
    UpstreamAuthError,
    UpstreamError,
    root_cause,
)
from fsrlm.safe_fs import write_beneath

logger = logging.getLogger(__name__)

PROMPT_PREVIEW_CHARS = 500


class SubcallRequest(BaseModel):
    """What ``tools/llm_client.py`` sends. Unknown fields are refused, not ignored."""

    model_config = ConfigDict(extra="forbid")

    messages: list[dict[str, Any]] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    model: str | None = None
    max_tokens: int | None = Field(default=None, gt=0)
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, gt=0)
    stop_sequences: list[str] | None = None


class SubcallAnswer(BaseModel):
    text: str
    model: str
    cached: bool
    input_tokens: int
    output_tokens: int
    cost_usd: float
    stop_reason: str | None = None


def parse_request(raw: bytes, policy: RequestPolicy | None = None) -> SubcallRequest:
    """Validate a subcall body; with ``policy``, also its model and content (``PolicyRefused``)."""
    try:
        req = SubcallRequest.model_validate_json(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise InputError(f"invalid subcall request: {where}: {first['msg']}") from None
    if policy is not None:
        if req.model is not None:
            policy.check_model(req.model)
        policy.check_body({"messages": req.messages, "system": req.system})
    return req


def response_text(message: dict[str, Any]) -> str:
    blocks = message.get("content") or []
    return "".join(b.get("text", "") for b in blocks if isinstance(b, dict) and b.get("type") == "text")


def prompt_preview(messages: list[dict[str, Any]]) -> str | None:
    """The first characters of the last user message, for the audit log and the viewer."""
    for message in reversed(messages):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")
        return content[:PROMPT_PREVIEW_CHARS] if isinstance(content, str) else None
    return None


class SubcallService:
    def __init__(
        self,
        *,
        upstream: Upstream,
        ledger: RunLedger,
        audit: AuditLog,
        cache: ResponseCache | None,
        submodel: str,
        concurrency: int,
        max_retries: int,
        retry_base_wait: float,
        on_retry: OnRetry | None = None,
    ) -> None:
        self.upstream = upstream
        self.ledger = ledger
        self.audit = audit
        self.cache = cache
        self.submodel = submodel
        self._slots = asyncio.Semaphore(concurrency)
        self.max_retries = max_retries
        self.retry_base_wait = retry_base_wait
        self.on_retry = on_retry
        self._mirrored: set[str] = set()  # cache entries already copied into this run's workspace

    def build_body(self, req: SubcallRequest) -> dict[str, Any]:
        cap = self.ledger.limits.max_tokens_per_subcall
        body = req.model_dump(exclude_none=True)
        body["model"] = req.model or self.submodel
        body["max_tokens"] = min(req.max_tokens or cap, cap)
        return body

    async def call(self, script: str, req: SubcallRequest) -> SubcallAnswer:
        body = self.build_body(req)
        model = body["model"]
        started = time.perf_counter()
        key = cache_key(f"{self.upstream.name} {self.upstream.base_url}", body)
        record = {"cache_key": key, "prompt_preview": prompt_preview(req.messages)}

        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            self.ledger.count_cache_hit()
            self._record(script, model, "cached", started, hit.input_tokens, hit.output_tokens, 0.0, **record)
            self._mirror(key, hit.model_dump_json(indent=1).encode())
            return SubcallAnswer(cached=True, cost_usd=0.0, **hit.model_dump(exclude={"cost_usd"}))

        try:
            slot = self.ledger.reserve_subcall(script)
        except LimitExceeded as e:
            self._record(script, model, "refused", started, limit=e.limit, error=str(e), **record)
            raise

        path, payload = self.upstream.subcall_target(body)
        data = json.dumps(payload).encode()
        terms = terms_of(payload)
        context = self.ledger.pricer.context_tokens(model, long_context=False)  # subcalls never ask for 1M
        metered = MeteredCall(self.ledger, model, input_ceiling(len(data), terms, context), body["max_tokens"],
                              root=False, cache=terms.cache)
        try:
            message, usage = await self._upstream_call(path, data, metered)
        except LimitExceeded as e:  # the budget cannot hold this call's worst case (or one more attempt)
            self.ledger.release(slot)
            self._record(script, model, "refused", started, cost=metered.charged_usd, limit=e.limit, error=str(e),
                         **record)
            raise
        except UpstreamError as e:
            self.ledger.release(slot)
            self._record(script, model, "error", started, cost=metered.charged_usd, error=str(e), **record)
            raise
        finally:
            metered.close()  # cancelled or failed before the answer was read: charged its reservation

        cost = metered.charged_usd
        entry = CachedResponse(
            text=response_text(message),
            model=message.get("model") or model,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            stop_reason=message.get("stop_reason"),
            cost_usd=cost,
        )
        if self.cache is not None:
            self._mirror(key, self.cache.put(key, entry))
        self._record(script, model, "ok", started, usage.input_tokens, usage.output_tokens, cost, **record)
        return SubcallAnswer(cached=False, **entry.model_dump())

    async def _upstream_call(self, path: str, data: bytes, metered: MeteredCall) -> tuple[dict[str, Any], Usage]:
        """The answer and its usage; the money of every attempt goes through ``metered``."""
        headers = {"content-type": "application/json", "accept": "application/json"}

        async def attempt() -> aiohttp.ClientResponse:
            response = await self.upstream.request("POST", path, headers, data)
            try:
                await response.read()  # inside the retry loop: a body cut short is retried too
            except BaseException:
                response.release()
                raise
            return response

        async with self._slots:
            # Each attempt reserves its worst case once a slot is free (calls queued behind the slots were all
            # admitted while nothing was held yet): a burst cannot hold more than the budget.
            try:
                response = await with_retries(
                    lambda: metered.attempt(attempt),
                    max_retries=self.max_retries,
                    base_wait=self.retry_base_wait,
                    retry_connect=lambda: self.upstream.answered,
                    on_retry=self.on_retry,
                )
            except asyncio.TimeoutError:
                raise UpstreamError("model API timed out after retries", status=504) from None
            except aiohttp.ClientError as e:
                raise UpstreamError(f"the model API at {self.upstream.base_url} is unreachable: {root_cause(e)}") from None
            try:
                raw = await response.read()
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                raise UpstreamError(f"model API connection dropped: {e!r}") from None
            finally:
                response.release()
        if response.status != 200:
            detail = raw[:500].decode("utf-8", "replace")
            cls = UpstreamAuthError if response.status in (401, 403) else UpstreamError
            raise cls(f"model API answered {response.status}: {detail}", status=response.status)
        try:
            message = json.loads(raw)
        except (ValueError, RecursionError):
            metered.finish(None)
            raise UpstreamError("model API answered with invalid JSON") from None
        usage = read_usage(message)
        metered.finish(usage)  # None: an answer without a usage we can read is charged its reservation
        if not isinstance(message, dict):
            raise UpstreamError("model API answered with an unexpected JSON shape")
        return message, usage or Usage()

    def _mirror(self, key: str, data: bytes) -> None:
        """Copy a cache entry into the workspace for inspection (never read back), once per run."""
        if key in self._mirrored:
            return
        self._mirrored.add(key)
        try:
            write_beneath(self.audit.workspace, f"cache/llm/{key}.json", data)
        except OSError as e:
            logger.debug("cache mirror skipped: %s", e)

    def _record(
        self,
        script: str,
        model: str,
        status: Literal["ok", "cached", "refused", "error"],
        started: float,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cost: float = 0.0,
        *,
        limit: str | None = None,
        error: str | None = None,
        cache_key: str | None = None,
        prompt_preview: str | None = None,
    ) -> None:
        self.audit.add(
            CallRecord(
                kind="subcall", script=script, model=model, status=status,
                input_tokens=input_tokens, output_tokens=output_tokens, cost_usd=cost,
                latency_ms=round((time.perf_counter() - started) * 1000, 3), limit=limit, error=error,
                cache_key=cache_key, prompt_preview=prompt_preview,
            )
        )
