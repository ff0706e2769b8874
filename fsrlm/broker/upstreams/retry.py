"""Retries of transient upstream failures, with tenacity.

Retried: 408, 429, 500, 502, 503, 504, 529, connection errors (a body cut short
included) and timeouts. A connection that cannot even be opened (refused, no
such host) is retried only on an upstream that has answered before in this run:
an address that never answered is a configuration mistake, reported at once.
``retry-after`` (seconds) is honoured, capped; otherwise exponential backoff
with jitter. Everything else (400, 401, 403, 404, 413…) is returned at once.
``on_retry(reason, attempt, wait)`` hears of each retry before its wait (the
progress display shows them as they happen).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import aiohttp
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    stop_after_attempt,
)
from tenacity.wait import wait_random_exponential

logger = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504, 529})
MAX_RETRY_AFTER = 60.0


class RetryableStatus(Exception):
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        super().__init__(f"upstream answered {response.status}")
        self.response = response


def _retry_after(response: aiohttp.ClientResponse) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return min(max(float(value), 0.0), MAX_RETRY_AFTER) if value is not None else None
    except ValueError:
        return None


class _Wait:
    def __init__(self, base: float, cap: float) -> None:
        self._backoff = wait_random_exponential(multiplier=base, max=cap)

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RetryableStatus):
            after = _retry_after(exc.response)
            if after is not None:
                return after
        return self._backoff(state)


OnRetry = Callable[[str, int, float], None]  # (reason, the attempt that failed, seconds before the next)


def _retryable(state: RetryCallState, retry_connect: Callable[[], bool]) -> bool:
    exc = state.outcome.exception() if state.outcome else None
    if isinstance(exc, aiohttp.ClientConnectorError):  # could not even connect
        return retry_connect()
    return isinstance(exc, RetryableStatus | aiohttp.ClientConnectionError | aiohttp.ClientPayloadError
                      | asyncio.TimeoutError)


async def with_retries(
    attempt: Callable[[], Awaitable[aiohttp.ClientResponse]],
    *,
    max_retries: int,
    base_wait: float = 0.5,
    max_wait: float = 20.0,
    retry_connect: Callable[[], bool] = lambda: True,
    on_retry: OnRetry | None = None,
) -> aiohttp.ClientResponse:
    """Call ``attempt`` until it returns a non-retryable response; return the last response.

    When retries run out on a retryable status, that response is returned (the
    caller reports it); on a connection error the exception propagates.
    """

    async def once() -> aiohttp.ClientResponse:
        response = await attempt()
        if response.status in RETRYABLE_STATUS:
            raise RetryableStatus(response)
        return response

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RetryableStatus):
            exc.response.release()
        reason = str(exc) or type(exc).__name__
        wait = state.next_action.sleep if state.next_action else 0.0
        logger.info("retrying upstream call (attempt %d) in %.1f s: %s", state.attempt_number, wait, reason)
        if on_retry is not None:
            on_retry(reason, state.attempt_number, wait)

    try:
        async for retry_state in AsyncRetrying(
            stop=stop_after_attempt(max_retries + 1),
            wait=_Wait(base_wait, max_wait),
            retry=lambda state: _retryable(state, retry_connect),
            before_sleep=before_sleep,
            reraise=True,
        ):
            with retry_state:
                return await once()
    except RetryableStatus as e:
        return e.response
    raise AssertionError("unreachable")
