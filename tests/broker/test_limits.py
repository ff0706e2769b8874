"""RunLedger: the host-side counting rules, without a server."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from fsrlm.broker.accounting import Usage
from fsrlm.broker.limits import MeteredCall, RunLedger, RunLimits, SharedLedger
from fsrlm.broker.pricing import Pricer
from fsrlm.config import ModelPrice
from fsrlm.errors import LimitExceeded


def ledger(*, depth: int = 0, shared: SharedLedger | None = None, **overrides: Any) -> RunLedger:
    limits = {
        "max_scripts": 10, "max_subcalls_per_script": 10, "max_total_subcalls": 100,
        "max_tokens_per_subcall": 500, "max_budget_usd": None, "max_depth": 1, **overrides,
    }
    return RunLedger(limits=RunLimits(**limits), depth=depth, shared=shared or SharedLedger())


def refused(fn: Any, *args: Any) -> str:
    with pytest.raises(LimitExceeded) as info:
        fn(*args)
    return info.value.limit


def test_per_script_cap_counts_each_script_separately() -> None:
    led = ledger(max_subcalls_per_script=2)
    led.reserve_subcall("a.py")
    led.reserve_subcall("a.py")
    assert refused(led.reserve_subcall, "a.py") == "max_subcalls_per_script"
    led.reserve_subcall("b.py")  # another script has its own allowance
    assert led.per_script == {"a.py": 2, "b.py": 1}
    assert led.shared.subcalls == 3
    assert led.shared.refused == 1


def test_max_scripts_refuses_a_new_script_but_not_a_known_one() -> None:
    led = ledger(max_scripts=2)
    led.reserve_subcall("a.py")
    led.reserve_subcall("b.py")
    assert refused(led.reserve_subcall, "c.py") == "max_scripts"
    led.reserve_subcall("a.py")
    assert "c.py" not in led.per_script  # a refused script leaves no trace


def test_total_cap_covers_all_scripts() -> None:
    led = ledger(max_total_subcalls=3)
    for script in ("a.py", "b.py", "c.py"):
        led.reserve_subcall(script)
    assert refused(led.reserve_subcall, "a.py") == "max_total_subcalls"
    assert led.shared.subcalls == 3
    assert led.per_script["a.py"] == 1  # the refused call was not counted


def test_budget_is_checked_before_calls_and_charged_after() -> None:
    led = ledger(max_budget_usd=0.01)
    led.check_budget()
    led.reserve_subcall("a.py")
    led.charge(0.004, root=False)
    led.charge(0.005, root=True)
    led.check_budget()  # 0.009 < 0.01: still allowed
    led.charge(0.002, root=False)  # a call in flight may overshoot…
    assert refused(led.check_budget) == "max_budget_usd"  # …but then nothing more starts
    assert refused(led.reserve_subcall, "a.py") == "max_budget_usd"
    assert led.shared.spent_usd == pytest.approx(0.011)
    assert led.shared.root_usd == pytest.approx(0.005)
    assert led.shared.subcall_usd == pytest.approx(0.006)
    assert led.shared.subcalls == 1


def test_no_budget_means_no_dollar_cap() -> None:
    led = ledger(max_budget_usd=None)
    led.charge(1e6, root=True)
    led.check_budget()
    led.reserve_subcall("a.py")


@pytest.mark.parametrize(
    ("depth", "max_depth", "allowed"),
    [(0, 0, False), (0, 1, True), (1, 1, False), (1, 2, True), (2, 2, False)],
)
def test_depth(depth: int, max_depth: int, allowed: bool) -> None:
    led = ledger(depth=depth, max_depth=max_depth)
    if allowed:
        led.check_depth()
    else:
        assert refused(led.check_depth) == "max_depth"


def test_release_gives_the_slot_back_once() -> None:
    led = ledger(max_subcalls_per_script=1, max_total_subcalls=1)
    first = led.reserve_subcall("a.py")
    assert refused(led.reserve_subcall, "a.py") == "max_subcalls_per_script"
    led.release(first)
    assert led.per_script["a.py"] == 0
    assert led.shared.subcalls == 0
    led.release(first)  # idempotent: a double release must not mint a free slot
    assert led.shared.subcalls == 0
    second = led.reserve_subcall("a.py")
    assert not second.released
    assert refused(led.reserve_subcall, "a.py") == "max_subcalls_per_script"


def test_nested_runs_share_total_cap_and_budget_but_not_script_counts() -> None:
    shared = SharedLedger()
    parent = ledger(shared=shared, max_total_subcalls=3, max_subcalls_per_script=2, max_budget_usd=1.0)
    child = ledger(shared=shared, depth=1, max_total_subcalls=3, max_subcalls_per_script=2, max_budget_usd=1.0)
    parent.reserve_subcall("a.py")
    parent.reserve_subcall("a.py")
    child.reserve_subcall("a.py")  # same name, another run: its own per-script count
    assert parent.per_script == {"a.py": 2}
    assert child.per_script == {"a.py": 1}
    assert refused(child.reserve_subcall, "b.py") == "max_total_subcalls"
    assert refused(parent.reserve_subcall, "b.py") == "max_total_subcalls"
    child.charge(1.5, root=True)
    assert refused(parent.check_budget) == "max_budget_usd"
    assert parent.snapshot()["spent_usd"] == child.snapshot()["spent_usd"] == 1.5


def test_cache_hits_are_counted_but_never_reserved() -> None:
    led = ledger(max_total_subcalls=1)
    led.reserve_subcall("a.py")
    for _ in range(5):
        led.count_cache_hit()
    assert led.shared.cache_hits == 5
    assert led.shared.subcalls == 1


def test_snapshot_fields() -> None:
    led = ledger(depth=1, max_depth=2, max_scripts=3, max_subcalls_per_script=4, max_total_subcalls=5,
                 max_budget_usd=2.5)
    led.reserve_subcall("a.py")
    led.reserve_subcall("a.py")
    led.reserve_subcall("b.py")
    led.charge(0.1234567891, root=False)
    led.count_cache_hit()
    snap = led.snapshot("a.py")
    assert snap == {
        "depth": 1,
        "max_depth": 2,
        "subcalls_used": 3,
        "max_total_subcalls": 5,
        "script_subcalls_used": 2,
        "max_subcalls_per_script": 4,
        "scripts_used": 2,
        "max_scripts": 3,
        "spent_usd": 0.123457,
        "reserved_usd": 0.0,
        "max_budget_usd": 2.5,
        "cache_hits": 1,
        "nested_running": 0,
        "max_concurrent_nested": 2,
    }
    assert led.snapshot()["script_subcalls_used"] == 0
    assert led.snapshot("never-seen.py")["script_subcalls_used"] == 0


# -- money: reservations ---------------------------------------------------------------------


def priced_ledger(budget: float | None, **overrides: Any) -> RunLedger:
    """A ledger whose one model costs $1 per million tokens in and $10 out (numbers easy to check)."""
    led = ledger(max_budget_usd=budget, **overrides)
    led.pricer = Pricer({"m": ModelPrice(input_per_mtok=1, output_per_mtok=10, cache_write_per_mtok=1,
                                         cache_write_1h_per_mtok=1, cache_read_per_mtok=1)})
    return led


def test_a_call_is_refused_when_its_worst_case_does_not_fit() -> None:
    led = priced_ledger(1.0)
    held = led.reserve_usd("m", 100_000, 50_000, root=False)  # $0.10 in + $0.50 out
    assert held.usd == pytest.approx(0.6) and led.shared.reserved_usd == pytest.approx(0.6)
    with pytest.raises(LimitExceeded) as info:
        led.reserve_usd("m", 100_000, 50_000, root=False)  # 0.6 held + 0.6 > 1.0
    assert info.value.limit == "max_budget_usd"
    led.settle(held, Usage(input_tokens=100_000, output_tokens=1_000))  # $0.11 real
    assert led.shared.spent_usd == pytest.approx(0.11) and led.shared.reserved_usd == 0.0
    again = led.reserve_usd("m", 100_000, 50_000, root=True)  # 0.11 + 0.6 <= 1.0
    assert led.shared.spent_usd + led.shared.reserved_usd <= 1.0
    led.settle(again, None)  # unreadable: the whole hold
    assert led.shared.spent_usd == pytest.approx(0.71) and led.shared.root_usd == pytest.approx(0.6)


def test_settle_is_once_and_cancel_charges_nothing() -> None:
    led = priced_ledger(None)
    r = led.reserve_usd("m", 1_000, 1_000, root=False)
    assert led.settle(r, None) == pytest.approx(r.usd)
    assert led.settle(r, None) == 0.0  # a second settle mints nothing, charges nothing
    c = led.reserve_usd("m", 1_000, 1_000, root=False)
    led.cancel(c)
    assert led.shared.spent_usd == pytest.approx(r.usd) and led.shared.reserved_usd == 0.0
    assert led.unsettled == {}


def test_an_answer_over_its_reservation_is_charged_and_counted_as_the_slack() -> None:
    led = priced_ledger(10.0)
    r = led.reserve_usd("m", 1_000, 100, root=False)
    cost = led.settle(r, Usage(input_tokens=1_000, output_tokens=10_000))  # the upstream ignored max_tokens
    assert cost == pytest.approx((1_000 + 100_000) / 1e6)
    assert led.shared.over_reservation_usd == pytest.approx(cost - r.usd)


def test_settle_open_charges_every_unsettled_hold_in_full() -> None:
    led = priced_ledger(None)
    holds = [led.reserve_usd("m", 1_000, 1_000, root=i % 2 == 0) for i in range(3)]
    led.settle(holds[0], Usage(input_tokens=1, output_tokens=1))
    assert led.settle_open() == pytest.approx(holds[1].usd + holds[2].usd)
    assert led.unsettled == {} and led.shared.reserved_usd == 0.0


def test_the_answered_model_is_priced_when_dearer() -> None:
    led = priced_ledger(None)
    led.pricer.prices["dear"] = ModelPrice(input_per_mtok=100, output_per_mtok=100)
    r = led.reserve_usd("m", 1_000, 1_000, root=False)
    assert led.settle(r, Usage(input_tokens=1_000, model="dear")) == pytest.approx(0.1)


class _Answer:
    def __init__(self, status: int) -> None:
        self.status = status


async def test_metered_attempts_charge_what_may_have_been_billed() -> None:
    led = priced_ledger(None)
    call = MeteredCall(led, "m", 1_000, 1_000, root=True)

    async def timeout():
        raise asyncio.TimeoutError

    async def no_connection():
        raise aiohttp.ClientConnectorError(None, OSError(111, "refused"))  # type: ignore[arg-type]

    async def busy():
        return _Answer(529)

    async def ok():
        return _Answer(200)

    with pytest.raises(asyncio.TimeoutError):
        await call.attempt(timeout)  # sent, never answered: may have been billed
    with pytest.raises(aiohttp.ClientConnectorError):
        await call.attempt(no_connection)  # never sent
    await call.attempt(busy)  # an error status is not billed
    await call.attempt(ok)
    worst = call.attempts[0].usd
    assert call.charged_usd == pytest.approx(worst)
    assert call.finish(Usage(input_tokens=10, output_tokens=10)) == pytest.approx(worst + 110 / 1e6)
    assert led.unsettled == {} and led.shared.spent_usd == pytest.approx(call.charged_usd)


async def test_a_cancelled_attempt_is_charged_its_reservation() -> None:
    led = priced_ledger(None)
    call = MeteredCall(led, "m", 1_000, 1_000, root=False)

    async def forever():
        await asyncio.sleep(3600)

    task = asyncio.ensure_future(call.attempt(forever))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert led.shared.spent_usd == pytest.approx(call.attempts[0].usd) and led.unsettled == {}


# -- nested runs ------------------------------------------------------------------------------


async def test_nested_runs_wait_for_a_slot_at_the_top_and_are_refused_below() -> None:
    shared = SharedLedger()
    top = ledger(shared=shared, max_concurrent_nested=2, nested_wait_seconds=5)
    child = ledger(shared=shared, depth=1, max_concurrent_nested=2, max_depth=2)
    order: list[str] = []
    release = asyncio.Event()

    async def run(name: str) -> None:
        async with top.nested_slot():
            order.append(f"start {name}")
            await release.wait()
            order.append(f"end {name}")

    tasks = [asyncio.ensure_future(run(n)) for n in "abc"]
    for _ in range(5):
        await asyncio.sleep(0)
    assert shared.nested_running == 2 and order == ["start a", "start b"]  # c waits
    with pytest.raises(LimitExceeded) as info:
        async with child.nested_slot():
            pass
    assert info.value.limit == "max_concurrent_nested"  # a nested run does not wait (its ancestors hold slots)
    release.set()
    await asyncio.gather(*tasks)
    assert "start c" in order and shared.nested_running == 0


async def test_the_wait_for_a_nested_slot_is_bounded() -> None:
    shared = SharedLedger()
    led = ledger(shared=shared, max_concurrent_nested=1, nested_wait_seconds=0.05)
    async with led.nested_slot():
        with pytest.raises(LimitExceeded) as info:
            async with led.nested_slot():
                pass
    assert info.value.limit == "max_concurrent_nested" and shared.nested_running == 0
