"""Money: nothing the sandbox does makes the run tree spend more than ``max_budget_usd``.

Every attack is a real run (real CLI in the Docker sandbox, the real broker, the
scripted model): the root agent's script carries the attack out with its own
tools, and the test reads the broker's own figures (the run's metrics and audit
records), never what the agent reports. The bound under test is the one
``fsrlm/broker/limits.py`` documents: every upstream attempt reserves its worst case
before it is sent, so ``spent + reserved <= max_budget_usd`` at every moment, and a
call whose usage cannot be read is charged its whole reservation.
"""

from __future__ import annotations

import json

import pytest
from security_support import PREAMBLE, read_findings
from support import FAKE_UPSTREAM_KEY

from fsrlm import RLM
from fsrlm.broker.audit import AUDIT_LOG
from fsrlm.testing.bedrock import BedrockCredentials
from fsrlm.testing.plans import script_plan
from fsrlm.testing.scripted_model import Fault, ScriptedModelServer

pytestmark = pytest.mark.docker

CLIENT = """
import urllib.request, urllib.error
from collections import Counter
BASE = os.environ["FSRLM_BROKER_URL"]
TOKEN = os.environ["FSRLM_BROKER_TOKEN"]

def call(path, body, headers=None, timeout=300):
    h = {"x-api-key": TOKEN, "content-type": "application/json", **(headers or {})}
    req = urllib.request.Request(BASE + path, data=json.dumps(body).encode(), method="POST", headers=h)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except Exception as e:
        return None, repr(e).encode()

def outcome(status, raw):
    try:
        err = (json.loads(raw) or {}).get("error")
    except ValueError:
        err = None
    return f"{status} {err.get('limit') or err.get('type')}" if isinstance(err, dict) else str(status)
"""


def _list_cost(model: str, input_tokens: int, output_tokens: int, provider: str = "anthropic") -> float:
    """What the upstream bills at list price, from genai-prices itself (not the broker's code under test)."""
    from genai_prices import Usage, calc_price

    return float(calc_price(Usage(input_tokens=input_tokens, output_tokens=output_tokens), model,
                            provider_id=provider).total_price)


def _records(result) -> list[dict]:
    path = result.workspace_path / AUDIT_LOG
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _span(workspace) -> tuple[float, float]:
    events = [json.loads(line) for line in (workspace / "state" / "events.jsonl").read_text().splitlines()]
    started = next(e["ts"] for e in events if e["kind"] == "run_started")
    ended = next(e["ts"] for e in events if e["kind"] == "result")
    return started, ended


# -- a storm of nested runs -----------------------------------------------------------------------


STORM = CLIENT + """
from concurrent.futures import ThreadPoolExecutor
from llm_client import llm_batch, rlm_query, write_answer
if os.environ.get("FSRLM_DEPTH") == "1":
    # The nested agent: a few dear subcalls (about $0.15 each at the test's price for scripted-sub).
    big = "words " * 30000
    me = os.environ.get("FSRLM_RUN_ID", "")  # one prompt per nested run: no cache hit between them
    try:
        spent = [a[:10] for a in llm_batch([f"ECHO: {me} {i} {big}" for i in range(3)])]
    except Exception as e:
        spent = [type(e).__name__]
    write_answer(" ".join(spent))
    raise SystemExit
def one(i):
    try:
        rlm_query(f"spend {i}", f"context {i}")
        return "ok"
    except Exception as e:
        return type(e).__name__ + ": " + str(getattr(e, "limit", "") or "")[:40]
with ThreadPoolExecutor(N) as pool:
    F["outcomes"] = dict(Counter(pool.map(one, range(N))))
save()
write_answer("stormed")
"""


def test_a_storm_of_nested_runs_stays_within_the_budget(attack_run, scripted, finding):
    n, budget = 24, 2.0
    f = finding(
        "broker", "a storm of nested runs",
        tried=f"{n} rlm_query calls at once from 24 threads, each nested agent making 3 subcalls of ~$0.15, "
              f"with max_budget_usd={budget:g} and max_concurrent_nested=2",
        expected="at most 2 nested runs at once; the whole tree's spend stays within max_budget_usd; the rest "
                 "of the rlm_query calls are refused (max_budget_usd) or wait their turn",
    )
    scripted.subcall_latency_ms = 3000  # a real model takes seconds: the nested runs' subcalls overlap
    run = attack_run(f"N = {n}\n" + STORM, max_depth=1, max_budget_usd=budget, timeout_seconds=600)
    m = run.result.metrics
    outcomes = run.findings.get("outcomes", {})
    # How many nested runs ran at once: each one's run_started and result events (host-written).
    spans = [_span(child.workspace_path) for child in run.result.nested]
    peak = max((sum(1 for a, b in spans if a <= t < b) for t, _ in spans), default=0)
    f.observed = (f"{outcomes}; {len(run.result.nested)} nested runs, at most {peak} at once; the tree spent "
                  f"${m.total_cost_usd:.2f} of ${budget:.2f}")
    assert sum(outcomes.values()) == n, run.findings or run.result.errors
    assert m.total_cost_usd <= budget, f.observed
    assert peak <= 2, f.observed


# -- root calls whose usage cannot be read --------------------------------------------------------


UNREADABLE = CLIENT + """
import time
body = {"model": MODEL, "max_tokens": MAX_TOKENS, "messages": [{"role": "user", "content": PROMPT}], **EXTRA}
status, raw = call("/v1/messages", body, timeout=120)
F["status"] = status
F["bytes"] = len(raw)
try:
    F["usage"] = json.loads(raw).get("usage")
except ValueError:
    F["usage"] = None
save()
from llm_client import write_answer
write_answer(f"sent: {status}")
"""

MODEL = "claude-opus-4-1"  # the dearest list price: a dodge is worth the most here


def _huge_answer(body: dict) -> dict | str:
    last = body["messages"][-1]["content"]
    text = last if isinstance(last, str) else json.dumps(last)
    if text.startswith("HUGE"):
        return {"text": "x" * (9 << 20)}  # a JSON answer past the usage reader's 8 MiB
    return text.removeprefix("ECHO: ")


@pytest.mark.parametrize("variant", ["answer over 8 MiB", "timed out and retried", "stream cut short"])
def test_root_calls_whose_usage_cannot_be_read_are_charged(attack_run, scripted, finding, variant):
    f = finding(
        "broker", f"root call with an unreadable usage: {variant}",
        tried={"answer over 8 MiB": "POST /v1/messages for claude-opus-4-1 whose JSON answer is 9 MiB (the usage "
                                    "reader stops at 8 MiB)",
               "timed out and retried": "POST /v1/messages for claude-opus-4-1 that the upstream stalls past "
                                        "request_timeout_seconds=3, twice (one retry)",
               "stream cut short": "a streaming POST /v1/messages for claude-opus-4-1 whose stream the upstream "
                                   "breaks after message_start"}[variant],
        expected="the call is charged at least what the upstream may have billed (its reservation: the input, "
                 "and all of max_tokens), never 0",
    )
    max_tokens, extra, prompt = 4096, {}, "ECHO: " + "w " * 20000
    overrides: dict = {"policy": {"allowed_models": [MODEL]}}  # the dearest model, allowed on purpose
    if variant == "answer over 8 MiB":
        scripted.responder = _huge_answer
        prompt = "HUGE " + prompt
    elif variant == "timed out and retried":
        scripted.inject(Fault(stall_seconds=8), Fault(stall_seconds=8), kind="subcall")
        overrides["upstream"] = {"type": "compatible", "base_url": scripted.url, "api_key": FAKE_UPSTREAM_KEY,
                                 "max_retries": 1, "request_timeout_seconds": 3}
    else:
        scripted.inject(Fault(drop_mid_stream=True), kind="subcall")
        extra = {"stream": True}
    script = f"MODEL = {MODEL!r}\nMAX_TOKENS = {max_tokens}\nPROMPT = {prompt!r}\nEXTRA = {extra!r}\n" + UNREADABLE
    run = attack_run(script, timeout_seconds=180, **overrides)
    attempts = [r for r in scripted.requests_of("subcall") if isinstance(r.body, dict) and r.body.get("model") == MODEL]
    charged = [r for r in _records(run.result) if r["kind"] == "root" and r["model"] == MODEL]
    cost = sum(r["cost_usd"] for r in charged)
    # What the upstream may have billed for each attempt: the input it was sent, and all of max_tokens.
    input_tokens = len(prompt) // 4
    billable = _list_cost(MODEL, input_tokens, max_tokens)
    f.observed = (f"{len(attempts)} attempt(s) reached the upstream; answer status {run.findings.get('status')}; "
                  f"charged ${cost:.4f} (the upstream may have billed ${billable:.4f} an attempt)")
    assert attempts, run.findings
    assert cost >= len(attempts) * billable, f.observed


# -- Bedrock Converse -----------------------------------------------------------------------------


CONVERSE = CLIENT + """
results = []
for i in range(3):
    body = {"messages": [{"role": "user", "content": [{"text": f"ECHO: {i} " + "w " * 20000}]}],
            "inferenceConfig": {"maxTokens": 2048}}
    status, raw = call(f"/model/{CONVERSE_MODEL}/converse", body)
    try:
        usage = json.loads(raw).get("usage")
    except ValueError:
        usage = None
    results.append({"status": status, "usage": usage})
F["results"] = results
save()
from llm_client import write_answer
write_answer("conversed")
"""

CONVERSE_MODEL = "us.anthropic.claude-opus-4-1-20250805-v1:0"


def test_bedrock_converse_answers_are_charged(docker_image, make_config, finding, monkeypatch):
    f = finding(
        "broker", "Bedrock Converse: usage in camelCase",
        tried="on a Bedrock upstream, 3 calls to POST /model/<opus id>/converse (answers report inputTokens/"
              "outputTokens, not input_tokens)",
        expected="each Converse answer that reaches the upstream is charged at least its reported usage "
                 "(or the call is refused before it goes upstream)",
    )
    creds = BedrockCredentials()
    for name, value in creds.environment().items():
        monkeypatch.setenv(name, value)
    script = PREAMBLE + f"CONVERSE_MODEL = {CONVERSE_MODEL!r}\n" + CONVERSE
    with ScriptedModelServer(script_plan(script), bedrock=creds) as model:
        config = make_config("docker", upstream={"type": "bedrock", "base_url": model.url, "max_retries": 1},
                             bedrock_model="us.anthropic.claude-sonnet-4-5-20250929-v1:0",
                             bedrock_submodel="us.anthropic.claude-haiku-4-5-20251001-v1:0")
        result = RLM(config).invoke("input", question="q")
        reached = [r for r in model.requests if r.path.endswith("/converse")]
    found = read_findings(result).get("results", [])
    charged = [r for r in _records(result) if r["kind"] == "root" and r["model"] == CONVERSE_MODEL]
    cost = sum(r["cost_usd"] for r in charged)
    reported = sum(_list_cost(CONVERSE_MODEL, x["usage"]["inputTokens"], x["usage"]["outputTokens"], "aws")
                   for x in found if x.get("status") == 200 and x.get("usage"))
    f.observed = (f"{len(reached)} Converse calls reached the upstream, statuses "
                  f"{[x.get('status') for x in found]}; charged ${cost:.4f} for a reported usage worth ${reported:.4f}")
    assert found, result.errors
    assert cost >= reported and (cost > 0 or not reached), f.observed


# -- a refusal flood ------------------------------------------------------------------------------


FLOOD = CLIENT + """
from concurrent.futures import ThreadPoolExecutor
def one(i):
    status, raw = call("/fsrlm/v1/subcall", {"messages": [{"role": "user", "content": f"ECHO: {i}"}]},
                       headers={"x-fsrlm-script": f"scratch/scripts/forged-{i}.py"}, timeout=60)
    return outcome(status, raw)
with ThreadPoolExecutor(8) as pool:
    F["results"] = dict(Counter(pool.map(one, range(N))))
save()
from llm_client import write_answer
write_answer("flooded")
"""


def test_a_refusal_flood_keeps_the_audit_log_small(attack_run, finding):
    n = 20_000
    f = finding(
        "broker", "a flood of refused calls",
        tried=f"{n:,} subcalls under {n:,} forged script names with max_scripts=1 (each refused: max_scripts)",
        expected="refusals are counted per limit, not logged one by one: the audit log stays under 1 MB and "
                 "says how many it counted; result.errors lists each distinct error at most once, capped",
    )
    run = attack_run(f"N = {n}\n" + FLOOD, max_scripts=1, timeout_seconds=600)
    log = run.workspace / AUDIT_LOG
    size = log.stat().st_size
    records = _records(run.result)
    counted = sum(r.get("count", 1) for r in records if r["status"] == "refused")
    results = run.findings.get("results", {})
    f.observed = (f"{results}; audit log {size / 1024:.0f} KiB, {len(records)} lines, refusals counted {counted:,}; "
                  f"result.errors: {len(run.result.errors)} lines; metrics.subcalls_refused "
                  f"{run.result.metrics.subcalls_refused:,}")
    assert results.get("402 max_scripts", 0) >= n - 1, results
    assert size < 1 << 20, f.observed
    assert counted >= n - 1 and run.result.metrics.subcalls_refused >= n - 1, f.observed
    assert len(run.result.errors) <= 60, f.observed
