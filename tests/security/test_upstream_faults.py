"""Upstream faults: retried or surfaced, never a hang.

The local executor is enough here (the broker is the same for every backend), so
these runs are quick: the real CLI on the host, the scripted model, the broker.
"""

from __future__ import annotations

import json
import time

import pytest

from fsrlm.testing.scripted_model import Fault

TWO_CALLS = """
from llm_client import llm_query, LLMError, write_answer
out = []
for i in range(2):
    try:
        out.append(llm_query(f"ECHO: call {i}"))
    except LLMError as e:
        out.append(f"error {e.status} {e.error_type}")
write_answer(" | ".join(out))
"""

TRANSIENT = {
    "429 with retry-after": Fault(status=429, retry_after=1),
    "429 without retry-after": Fault(status=429),
    "500": Fault(status=500),
    "502": Fault(status=502),
    "503": Fault(status=503),
    "529 overloaded": Fault(status=529),
    "connection reset mid-stream": Fault(drop_mid_stream=True),
    "stalled answer (timeout 2 s)": Fault(stall_seconds=5),
}


def _audit(result) -> list[dict]:
    path = result.workspace_path / "state" / "subcalls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("name", list(TRANSIENT))
def test_transient_upstream_faults_are_retried(attack_run, scripted, finding, name):
    f = finding(
        "upstream faults", f"upstream {name}",
        tried=f"one {name} on the first subcall and one on the first root-model call",
        expected="both retried by the broker (retry-after honoured; the CLI retries a cut stream itself); "
                 "the run completes with the right answer",
    )
    scripted.inject(TRANSIENT[name], kind="subcall")
    scripted.inject(TRANSIENT[name], kind="root")
    started = time.monotonic()
    run = attack_run(TWO_CALLS, executor="local",
                     upstream={"type": "compatible", "base_url": scripted.url, "api_key": "k", "max_retries": 3,
                               "request_timeout_seconds": 2})
    wall = time.monotonic() - started
    result = run.result
    assert result.success, (result.stop_reason, result.errors)
    assert result.answer == "call 0 | call 1"
    assert len(scripted.requests_of("subcall")) == 3  # one failed attempt, then both calls
    assert [r["status"] for r in _audit(result) if r["kind"] == "subcall"] == ["ok", "ok"]
    if "retry-after" in name and "without" not in name:
        assert wall >= 1.0
    f.observed = (f"run completed in {wall:.1f} s with answer {result.answer!r}; "
                  f"{len(scripted.requests_of('subcall'))} subcall and {len(scripted.requests_of('root'))} root "
                  "requests upstream")


PERSISTENT = {
    "503 on every retry": (Fault(status=503), 4, "error 502 upstream_error"),
    "stall on every retry (timeout 2 s)": (Fault(stall_seconds=5), 4, "error 504 upstream_timeout"),
    "401 rejected key": (Fault(status=401), 1, "error 502 upstream_error"),
}


@pytest.mark.parametrize("name", list(PERSISTENT))
def test_persistent_upstream_faults_are_surfaced(attack_run, scripted, finding, name):
    fault, count, surfaced = PERSISTENT[name]
    f = finding(
        "upstream faults", f"upstream {name}",
        tried=(f"{count} such answers in a row to the first subcall (max_retries=3, so 4 attempts)" if count > 1
               else "a 401 answer to the first subcall"),
        expected=f"the script gets `{surfaced}` in bounded time and goes on; "
                 + ("the run reports the rejected credentials (upstream_error)" if "401" in name else
                    "the run completes"),
    )
    scripted.inject(*([fault] * count), kind="subcall")
    started = time.monotonic()
    run = attack_run(TWO_CALLS, executor="local",
                     upstream={"type": "compatible", "base_url": scripted.url, "api_key": "k", "max_retries": 3,
                               "request_timeout_seconds": 2})
    wall = time.monotonic() - started
    result = run.result
    assert result.answer == f"{surfaced} | call 1", result.answer
    assert wall < 60
    if "401" in name:
        assert result.stop_reason == "upstream_error"
        assert any("rejected the broker's credentials" in e for e in result.errors), result.errors
        assert len(scripted.requests_of("subcall")) == 2  # 401 is not retried
    else:
        assert result.success, result.errors
        assert len(scripted.requests_of("subcall")) == 5  # 4 attempts, then the second call
    f.observed = (f"answer {result.answer!r}, stop_reason {result.stop_reason}, {wall:.1f} s"
                  + (f"; error: {result.errors[0][:100]}" if result.errors else ""))


def test_root_call_rejected_key_is_surfaced(attack_run, scripted, finding):
    f = finding(
        "upstream faults", "upstream 401 on the root agent's call",
        tried="the model API answers the CLI's first call with 401",
        expected="not retried; the run ends with stop_reason upstream_error naming the credentials",
    )
    scripted.inject(Fault(status=401), kind="root")
    started = time.monotonic()
    run = attack_run(TWO_CALLS, executor="local")
    wall = time.monotonic() - started
    result = run.result
    assert result.stop_reason == "upstream_error", (result.stop_reason, result.errors)
    assert any("rejected the broker's credentials" in e for e in result.errors)
    assert wall < 60
    f.observed = f"stop_reason {result.stop_reason} after {wall:.1f} s: {result.errors[0][:100]}"
