"""``--max-total-usd``: the batch's dollar cap, enforced by the driver.

Each job's own cap (``max_budget_usd``) is enforced by its broker. The driver
admits an attempt only when what finished jobs cost, plus the caps of the
attempts running, plus the new attempt's cap, stays within the total: so the
total holds even if every running job spends all it may. A job that finishes
frees its reservation and is counted at what it cost; an attempt whose node
died is counted at its whole cap (what it spent is unknown, as the broker counts
a call whose cost it cannot read), and so is a finished attempt whose cost is unknown
(``cost_of`` returns None: the OOLONG runner's row that timed out, for example).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fsrlm.batch.runner import Gate


def run_cost(result: Any) -> float | None:
    """What a batch job's result says it cost (``metrics.total_cost_usd``); None: unknown."""
    return getattr(getattr(result, "metrics", None), "total_cost_usd", None)


class TotalBudget(Gate):
    """``cost_of(result)``: what a finished attempt cost (default: its ``metrics.total_cost_usd``)."""

    def __init__(self, max_total_usd: float, *, cost_of: Callable[[Any], float | None] | None = None) -> None:
        self.max_total_usd = max_total_usd
        self.cost_of = cost_of or run_cost
        self.spent_usd = 0.0
        self.reserved_usd = 0.0

    @staticmethod
    def _cap(item: Any) -> float:
        cap = item.budget
        if cap is None:  # validate_jobs(need_budget=True) refuses such jobs before anything starts
            raise ValueError("a job without max_budget_usd cannot run under --max-total-usd")
        return float(cap)

    def admit(self, item: Any) -> bool:
        cap = self._cap(item)
        if self.spent_usd + self.reserved_usd + cap > self.max_total_usd + 1e-9:
            return False
        self.reserved_usd += cap
        return True

    def _release(self, item: Any) -> float:
        cap = self._cap(item)
        self.reserved_usd = max(0.0, self.reserved_usd - cap)
        return cap

    def settle(self, item: Any, result: Any) -> None:
        cap = self._release(item)
        cost = self.cost_of(result) if result is not None else None
        self.spent_usd += cap if cost is None else float(cost)

    def lost(self, item: Any) -> None:
        self.spent_usd += self._release(item)
