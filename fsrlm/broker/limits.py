"""Host-side limits of a run. Nothing the sandbox sends can raise them.

A ``RunLedger`` belongs to one run (one broker); runs nested through
``rlm_query`` get their own ledger but share the parent's ``SharedLedger``, so
the total subcall cap and the dollar budget cover the whole tree of runs.

Counting rules:

* a subcall is counted when it is *reserved* (before it goes upstream), so
  concurrent scripts cannot overshoot a cap; a call that fails upstream gives
  its slot back;
* cache hits are free: they are never reserved and never refused;
* the dollar budget is checked before every upstream call (root or subcall)
  and charged with the broker's own price when the answer arrives, so it can be
  exceeded by at most the calls already in flight.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel

from fsrlm.errors import LimitExceeded


class RunLimits(BaseModel):
    max_scripts: int
    max_subcalls_per_script: int
    max_total_subcalls: int
    max_tokens_per_subcall: int
    max_budget_usd: float | None
    max_depth: int


@dataclass
class SharedLedger:
    """Counters shared by a run and every run nested under it."""

    subcalls: int = 0
    spent_usd: float = 0.0
    root_usd: float = 0.0
    subcall_usd: float = 0.0
    cache_hits: int = 0
    refused: int = 0


@dataclass
class Reservation:
    script: str
    released: bool = False


@dataclass
class RunLedger:
    limits: RunLimits
    depth: int = 0
    shared: SharedLedger = field(default_factory=SharedLedger)
    per_script: dict[str, int] = field(default_factory=dict)

    # -- checks -------------------------------------------------------------

    def check_budget(self) -> None:
        budget = self.limits.max_budget_usd
        if budget is not None and self.shared.spent_usd >= budget:
            self._refuse(
                "max_budget_usd",
                f"the run's budget of ${budget:.2f} is spent (${self.shared.spent_usd:.4f}); "
                "raise max_budget_usd to allow more calls",
            )

    def check_depth(self) -> None:
        if self.depth + 1 > self.limits.max_depth:
            self._refuse(
                "max_depth",
                f"rlm_query would start depth {self.depth + 1} but max_depth is {self.limits.max_depth}; "
                "use llm_query/llm_batch instead",
            )

    def reserve_subcall(self, script: str) -> Reservation:
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
        return Reservation(script=script)

    def release(self, reservation: Reservation) -> None:
        """Give back the slot of a call that failed upstream."""
        if reservation.released:
            return
        reservation.released = True
        self.per_script[reservation.script] -= 1
        self.shared.subcalls -= 1

    # -- charges ------------------------------------------------------------

    def charge(self, cost: float, *, root: bool) -> None:
        self.shared.spent_usd += cost
        if root:
            self.shared.root_usd += cost
        else:
            self.shared.subcall_usd += cost

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
            "max_budget_usd": self.limits.max_budget_usd,
            "cache_hits": self.shared.cache_hits,
        }
