"""Host-side limits of a run. Nothing the sandbox sends can raise them.

A ``RunLedger`` belongs to one run (one broker); runs nested through
``rlm_query`` get their own ledger but share the parent's ``SharedLedger``, so
the total subcall cap, the nested-run cap and the dollar budget cover the whole
tree of runs.

Counting rules:

* a subcall is counted when it is *reserved* (before it goes upstream), so
  concurrent scripts cannot overshoot a cap; a call that fails upstream gives
  its slot back;
* cache hits are free: they are never reserved and never refused;
* money is reserved before **every upstream attempt**, root or subcall, retries
  included: the attempt's worst case (``Pricer.worst_case``: every input token the
  body can hold — one token per byte plus allowances, at most the model's context
  when the broker knows it — written to the prompt cache the request asks for, and
  all of ``max_tokens`` at the output price) is added to ``reserved_usd``, and the attempt
  is refused (``max_budget_usd``) when ``spent_usd + reserved_usd + worst case``
  would cross the budget. When the answer is read the reservation is *settled*:
  replaced by the real cost of the usage the answer reports. An attempt whose
  usage cannot be read — cut short, timed out, cancelled (a broker stopping, a run
  interrupted), an unknown shape, an answer too big to read — is charged its whole
  reservation; an attempt answered with an HTTP error status, or that never
  connected, is charged nothing (the APIs bill answered messages only);
* so ``spent_usd + reserved_usd <= max_budget_usd`` at every moment, and the
  total spend never exceeds ``max_budget_usd``, on one condition: that the upstream
  bills no more than the worst case it was reserved for (it honours ``max_tokens``,
  and input is at most the ceiling of ``accounting.input_ceiling``). An answer that
  reports more is charged what it reports, and the excess is counted in
  ``over_reservation_usd`` (the only slack there is; tests pin it to zero for an
  upstream that keeps to ``max_tokens``);
* at most ``max_concurrent_nested`` nested runs (``rlm_query``) run at once in the
  whole tree. The top-level run's extra calls wait for a slot (bounded by
  ``nested_wait_seconds``, the run's timeout); a nested run's are refused at once,
  since the slots it would wait for may be held by its own ancestors.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydantic import BaseModel

from fsrlm.broker.accounting import Usage
from fsrlm.broker.pricing import Pricer
from fsrlm.errors import LimitExceeded

if TYPE_CHECKING:
    import aiohttp


class RunLimits(BaseModel):
    max_scripts: int
    max_subcalls_per_script: int
    max_total_subcalls: int
    max_tokens_per_subcall: int
    max_budget_usd: float | None
    max_depth: int
    max_concurrent_nested: int = 2
    nested_wait_seconds: float | None = None  # None: wait as long as it takes (the run's own timeout bounds it)


@dataclass
class SharedLedger:
    """Counters shared by a run and every run nested under it."""

    subcalls: int = 0
    spent_usd: float = 0.0
    root_usd: float = 0.0
    subcall_usd: float = 0.0
    cache_hits: int = 0
    refused: int = 0
    reserved_usd: float = 0.0  # worst cases of the attempts in flight, not yet settled
    over_reservation_usd: float = 0.0  # what answers reported beyond their reservation (see the docstring)
    nested_running: int = 0
    _nested_freed: asyncio.Condition | None = field(default=None, repr=False, compare=False)

    def nested_freed(self) -> asyncio.Condition:
        if self._nested_freed is None:
            self._nested_freed = asyncio.Condition()
        return self._nested_freed


@dataclass
class Reservation:
    """Money held for one upstream attempt until it is settled."""

    model: str
    usd: float
    root: bool
    settled: bool = False
    charged_usd: float = 0.0


@dataclass
class SubcallSlot:
    script: str
    released: bool = False


@dataclass
class RunLedger:
    limits: RunLimits
    depth: int = 0
    shared: SharedLedger = field(default_factory=SharedLedger)
    per_script: dict[str, int] = field(default_factory=dict)
    pricer: Pricer = field(default_factory=Pricer)
    unsettled: dict[int, Reservation] = field(default_factory=dict, repr=False)  # this run's, by id()

    # -- checks -------------------------------------------------------------

    def check_budget(self) -> None:
        """Refuse when nothing is left: every dollar is spent or held by calls in flight."""
        budget = self.limits.max_budget_usd
        held = self.shared.spent_usd + self.shared.reserved_usd
        if budget is not None and held >= budget:
            self._refuse(
                "max_budget_usd",
                f"the run's budget of ${budget:.2f} is spent (${self.shared.spent_usd:.4f}, "
                f"${self.shared.reserved_usd:.4f} more held by calls in flight); "
                "raise max_budget_usd to allow more calls",
            )

    def check_depth(self) -> None:
        if self.depth + 1 > self.limits.max_depth:
            self._refuse(
                "max_depth",
                f"rlm_query would start depth {self.depth + 1} but max_depth is {self.limits.max_depth}; "
                "use llm_query/llm_batch instead",
            )

    def reserve_subcall(self, script: str) -> SubcallSlot:
        """Count one subcall for ``script`` or raise ``LimitExceeded``; no await inside."""
        self.check_budget()
        if script not in self.per_script and len(self.per_script) >= self.limits.max_scripts:
            self._refuse(
                "max_scripts",
                f"this run already used subcalls from {len(self.per_script)} scripts "
                f"(max_scripts={self.limits.max_scripts}); reuse an existing script",
            )
        used = self.per_script.get(script, 0)
        if used >= self.limits.max_subcalls_per_script:
            self._refuse(
                "max_subcalls_per_script",
                f"{script} already made {used} subcalls (max_subcalls_per_script="
                f"{self.limits.max_subcalls_per_script}); use bigger chunks or fewer calls",
            )
        if self.shared.subcalls >= self.limits.max_total_subcalls:
            self._refuse(
                "max_total_subcalls",
                f"the run made {self.shared.subcalls} subcalls (max_total_subcalls="
                f"{self.limits.max_total_subcalls})",
            )
        self.per_script[script] = used + 1
        self.shared.subcalls += 1
        return SubcallSlot(script=script)

    def release(self, slot: SubcallSlot) -> None:
        """Give back the slot of a call that failed upstream."""
        if slot.released:
            return
        slot.released = True
        self.per_script[slot.script] -= 1
        self.shared.subcalls -= 1

    # -- money --------------------------------------------------------------

    def reserve_usd(self, model: str, input_tokens: int, max_tokens: int, *, root: bool,
                    cache: str = "1h") -> Reservation:
        """Hold the worst case of one upstream attempt, or refuse it (``max_budget_usd``); no await inside.

        ``input_tokens`` is the most the request can hold (``accounting.input_ceiling``), ``cache`` the
        dearest prompt-cache write it asks for (``RequestTerms.cache``).
        """
        worst = self.pricer.worst_case(model, input_tokens, max_tokens, cache)
        budget = self.limits.max_budget_usd
        s = self.shared
        if budget is not None and s.spent_usd + s.reserved_usd + worst > budget:
            self._refuse(
                "max_budget_usd",
                f"this call could cost up to ${worst:.4f} ({model}, max_tokens={max_tokens}) and the run's budget "
                f"of ${budget:.2f} has ${max(budget - s.spent_usd - s.reserved_usd, 0.0):.4f} left "
                f"(${s.spent_usd:.4f} spent, ${s.reserved_usd:.4f} held by calls in flight); "
                "raise max_budget_usd, or lower max_tokens",
            )
        s.reserved_usd += worst
        reservation = Reservation(model=model, usd=worst, root=root)
        self.unsettled[id(reservation)] = reservation
        return reservation

    def settle(self, reservation: Reservation, usage: Usage | None) -> float:
        """Replace the hold with the real cost of ``usage``; ``None`` (unreadable) charges the whole hold.

        Idempotent: a second settle of the same reservation charges nothing. Returns the dollars charged.
        """
        if reservation.settled:
            return 0.0
        if usage is None:
            cost = reservation.usd
        else:
            cost = self.pricer.cost(reservation.model, usage)
            if usage.model and usage.model != reservation.model:  # priced as the dearer of asked and answered
                cost = max(cost, self.pricer.cost(usage.model, usage))
        self._close(reservation, cost)
        return cost

    def cancel(self, reservation: Reservation) -> None:
        """Settle at zero an attempt the upstream cannot have billed (no connection, an HTTP error status)."""
        if not reservation.settled:
            self._close(reservation, 0.0)

    def settle_open(self) -> float:
        """Charge every reservation still open its whole hold (a broker stopping); returns the dollars charged."""
        return sum(self.settle(r, None) for r in list(self.unsettled.values()))

    def _close(self, reservation: Reservation, cost: float) -> None:
        reservation.settled = True
        reservation.charged_usd = cost
        self.unsettled.pop(id(reservation), None)
        s = self.shared
        s.reserved_usd -= reservation.usd
        if s.reserved_usd < 1e-12:  # float residue of many holds and settles: nothing is held
            s.reserved_usd = 0.0
        if cost > reservation.usd:
            s.over_reservation_usd += cost - reservation.usd
        self.charge(cost, root=reservation.root)

    def charge(self, cost: float, *, root: bool) -> None:
        self.shared.spent_usd += cost
        if root:
            self.shared.root_usd += cost
        else:
            self.shared.subcall_usd += cost

    # -- nested runs --------------------------------------------------------

    @contextlib.asynccontextmanager
    async def nested_slot(self) -> AsyncIterator[None]:
        """Hold one of the tree's ``max_concurrent_nested`` slots while a nested run runs (see the docstring)."""
        s, cap = self.shared, self.limits.max_concurrent_nested
        freed = s.nested_freed()
        async with freed:
            if s.nested_running >= cap and self.depth > 0:
                self._refuse_nested(cap, waited=False)
            try:
                async with asyncio.timeout(self.limits.nested_wait_seconds):
                    await freed.wait_for(lambda: s.nested_running < cap)
            except TimeoutError:
                self._refuse_nested(cap, waited=True)
            s.nested_running += 1
        try:
            yield
        finally:
            async with freed:
                s.nested_running -= 1
                freed.notify(1)

    def _refuse_nested(self, cap: int, *, waited: bool) -> None:
        how = (f"none came free within {self.limits.nested_wait_seconds:g} s" if waited
               else "a nested run does not wait for one (its ancestors may hold them)")
        self._refuse("max_concurrent_nested",
                     f"{cap} nested runs are already running (max_concurrent_nested={cap}) and {how}; "
                     "run them one after another, or use llm_batch")

    def count_cache_hit(self) -> None:
        self.shared.cache_hits += 1

    def _refuse(self, limit: str, message: str) -> None:
        self.shared.refused += 1
        raise LimitExceeded(message, limit=limit)

    def snapshot(self, script: str | None = None) -> dict:
        return {
            "depth": self.depth,
            "max_depth": self.limits.max_depth,
            "subcalls_used": self.shared.subcalls,
            "max_total_subcalls": self.limits.max_total_subcalls,
            "script_subcalls_used": self.per_script.get(script or "", 0),
            "max_subcalls_per_script": self.limits.max_subcalls_per_script,
            "scripts_used": len(self.per_script),
            "max_scripts": self.limits.max_scripts,
            "spent_usd": round(self.shared.spent_usd, 6),
            "reserved_usd": round(self.shared.reserved_usd, 6),
            "max_budget_usd": self.limits.max_budget_usd,
            "cache_hits": self.shared.cache_hits,
            "nested_running": self.shared.nested_running,
            "max_concurrent_nested": self.limits.max_concurrent_nested,
        }


class MeteredCall:
    """One upstream call's money, attempt by attempt: reserve before each, settle after (the docstring's rules).

    ``attempt(send)`` wraps one try of ``send()`` (what ``with_retries`` calls): it reserves
    the worst case (``LimitExceeded`` when the budget cannot hold it, which is not retried),
    charges nothing when the attempt never connected or was answered with an error status,
    and the whole reservation when it failed after the request may have reached the upstream
    (a timeout, a broken connection, cancellation). ``finish(usage)`` settles the attempt
    that was answered; ``close()`` (in a ``finally``) charges whatever is still open.
    """

    def __init__(self, ledger: RunLedger, model: str, input_tokens: int, max_tokens: int, *, root: bool,
                 cache: str = "1h") -> None:
        self.ledger = ledger
        self.model = model
        self.input_tokens = input_tokens
        self.max_tokens = max_tokens
        self.root = root
        self.cache = cache
        self.attempts: list[Reservation] = []

    @property
    def charged_usd(self) -> float:
        return sum(r.charged_usd for r in self.attempts)

    async def attempt(self, send: Callable[[], Awaitable[aiohttp.ClientResponse]]) -> aiohttp.ClientResponse:
        import aiohttp  # here: importing the limits (a CallRecord's package) must not load the HTTP stack

        reservation = self.ledger.reserve_usd(self.model, self.input_tokens, self.max_tokens, root=self.root,
                                              cache=self.cache)
        self.attempts.append(reservation)
        try:
            response = await send()
        except aiohttp.ClientConnectorError:  # no connection: nothing was sent
            self.ledger.cancel(reservation)
            raise
        except BaseException:  # timed out, cut short, cancelled: the upstream may have done (and billed) the work
            self.ledger.settle(reservation, None)
            raise
        if response.status != 200:
            self.ledger.cancel(reservation)
        return response

    def finish(self, usage: Usage | None) -> float:
        """Settle the answered attempt with its usage (``None``: unreadable, charged its reservation)."""
        for reservation in self.attempts:
            if not reservation.settled:
                self.ledger.settle(reservation, usage)
        return self.charged_usd

    def close(self) -> None:
        self.finish(None)
