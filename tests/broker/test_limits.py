"""RunLedger: the host-side counting rules, without a server."""

from __future__ import annotations

from typing import Any

import pytest

from fsrlm.broker.limits import RunLedger, RunLimits, SharedLedger
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
