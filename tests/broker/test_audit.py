"""The audit log under a flood of refusals: counted per limit, the file capped, and a stopping broker settles."""

from __future__ import annotations

import asyncio
import json

from broker_harness import ask

from fsrlm.broker import audit as audit_module
from fsrlm.broker.audit import REFUSALS_LOGGED_PER_LIMIT, AuditLog, CallRecord
from fsrlm.results import RunMetrics
from fsrlm.run import MAX_RECORD_ERRORS, _record_errors
from fsrlm.testing.scripted_model import Fault


def refusal(i: int, limit: str = "max_scripts") -> CallRecord:
    return CallRecord(kind="subcall", script=f"s{i}.py", model="m", status="refused", limit=limit,
                      error=f"refused {i}")


def lines(tmp_path) -> list[dict]:
    return [json.loads(x) for x in (tmp_path / "state" / "subcalls.jsonl").read_text().splitlines()]


def test_refusals_past_the_first_few_are_counted_in_one_record(tmp_path) -> None:
    log = AuditLog(tmp_path)
    for i in range(5_000):
        log.add(refusal(i))
    log.add(refusal(0, limit="max_budget_usd"))
    log.close()
    written = lines(tmp_path)
    assert len(written) == REFUSALS_LOGGED_PER_LIMIT + 2  # the first 20, one more limit, one summary
    summary = written[-1]
    assert summary["count"] == 5_000 - REFUSALS_LOGGED_PER_LIMIT and "counted" in summary["error"]
    assert len(log.records) == REFUSALS_LOGGED_PER_LIMIT + 2
    assert RunMetrics.from_records(log.records, total_cost=0).subcalls_refused == 5_001


def test_the_log_stops_recording_refusals_at_its_cap_and_says_so(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(audit_module, "MAX_LOG_BYTES", 4_000)
    log = AuditLog(tmp_path)
    for i in range(REFUSALS_LOGGED_PER_LIMIT):
        log.add(refusal(i, limit=f"limit-{i}"))  # distinct limits: each one would get its own lines
    log.add(CallRecord(kind="subcall", script="a.py", model="m", status="ok", cost_usd=0.1))
    written = lines(tmp_path)
    assert sum(1 for r in written if "no longer recorded" in (r.get("error") or "")) == 1
    assert written[-1]["status"] == "ok"  # calls that went upstream are always written
    assert (tmp_path / "state" / "subcalls.jsonl").stat().st_size < 4_000 + 1_000


def test_result_errors_are_deduplicated_in_one_pass_and_capped() -> None:
    records = [refusal(i % 3000) for i in range(30_000)]
    errors = _record_errors(records, "completed", seen=set())
    assert len(errors) == MAX_RECORD_ERRORS + 1 and errors[-1].startswith("... and 2950 more")
    assert len(set(errors)) == len(errors)


async def test_a_broker_stopped_mid_call_charges_the_call(start_broker, scripted) -> None:
    scripted.inject(Fault(stall_seconds=30), kind="subcall")
    b = await start_broker(max_budget_usd=5.0)
    call = asyncio.ensure_future(b.subcall(ask("ECHO: never answered")))
    while not scripted.requests:
        await asyncio.sleep(0.01)
    await b.broker.stop()
    call.cancel()
    shared = b.broker.ledger.shared
    assert shared.reserved_usd == 0.0 and b.broker.ledger.unsettled == {}
    assert shared.spent_usd > 0  # the upstream may have done the work: charged its reservation
