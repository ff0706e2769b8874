"""The broker: nothing the sandbox sends can raise a limit, poison the cache or take the broker down."""

from __future__ import annotations

import json
import resource
from contextlib import contextmanager

import pytest
from security_support import MB, peak_fd_growth, peak_rss_growth

from fsrlm import RLM
from fsrlm.broker.cache import cache_key

pytestmark = pytest.mark.docker

CLIENT = """
import http.client, socket, urllib.request, urllib.error
from collections import Counter
BASE = os.environ["FSRLM_BROKER_URL"]
TOKEN = os.environ["FSRLM_BROKER_TOKEN"]

def call(path, body=None, *, raw=None, headers=None, method="POST"):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    h = {"x-api-key": TOKEN, "content-type": "application/json", **(headers or {})}
    req = urllib.request.Request(BASE + path, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        text = e.read()
        try:
            return e.code, json.loads(text)
        except ValueError:
            return e.code, {"raw": text[:200].decode("utf-8", "replace")}

def ask(prompt, **extra):
    return {"messages": [{"role": "user", "content": prompt}], **extra}

def outcome(status, body):
    err = (body or {}).get("error") if isinstance(body, dict) else None
    return f"{status} {err.get('limit') or err.get('type')}" if err else str(status)
"""


def _subcalls_upstream(scripted) -> int:
    return len(scripted.requests_of("subcall"))


# -- limits ---------------------------------------------------------------------------------


FORGED_SCRIPTS = CLIENT + """
results = Counter()
for i in range(10):
    for j in range(3):
        status, body = call("/fsrlm/v1/subcall", ask(f"ECHO: forged {i} {j}"),
                            headers={"x-fsrlm-script": f"scratch/scripts/forged-{i}.py"})
        results[outcome(status, body)] += 1
F["results"] = dict(results)
save()
from llm_client import write_answer
write_answer("forged")
"""


def test_forged_script_headers_do_not_raise_the_caps(attack_run, scripted, finding):
    f = finding(
        "broker", "more subcalls than the caps by forging x-fsrlm-script",
        tried="30 subcalls under 10 forged script names, with max_scripts=3, max_subcalls_per_script=2, "
              "max_total_subcalls=5",
        expected="exactly 5 go upstream; the rest get 402 limit_exceeded naming the cap",
    )
    run = attack_run(FORGED_SCRIPTS, max_scripts=3, max_subcalls_per_script=2, max_total_subcalls=5)
    results = run.findings["results"]
    assert results.get("200") == 5, results
    assert _subcalls_upstream(scripted) == 5
    assert set(results) - {"200"} <= {"402 max_scripts", "402 max_subcalls_per_script", "402 max_total_subcalls"}
    assert run.result.metrics.subcalls == 5
    f.observed = f"{results}; {_subcalls_upstream(scripted)} subcalls reached the upstream"


RAISE_LIMITS = CLIENT + """
job = json.load(open("state/job.json"))
job["limits"] = {k: 10 ** 9 for k in job["limits"]}
job["depth"] = -10
json.dump(job, open("state/job.json", "w"))
os.environ.update({"FSRLM_MAX_SUBCALLS_PER_SCRIPT": "100000", "FSRLM_MAX_TOTAL_SUBCALLS": "100000",
                   "FSRLM_MAX_BUDGET_USD": "none", "FSRLM_MAX_TOKENS_PER_SUBCALL": "100000"})
sneaky = {"x-fsrlm-max-subcalls-per-script": "1000", "x-fsrlm-limits": json.dumps(job["limits"]),
          "x-fsrlm-depth": "-10"}
results = Counter()
for i in range(8):
    status, body = call("/fsrlm/v1/subcall", ask(f"ECHO: more {i}", max_tokens=100000), headers=sneaky)
    results[outcome(status, body)] += 1
status, body = call("/fsrlm/v1/subcall", ask("ECHO: x", max_scripts=1000), headers=sneaky)
F["unknown_field"] = outcome(status, body)
F["results"] = dict(results)
F["budget"] = call("/fsrlm/v1/budget", method="GET")[1]
save()
from llm_client import write_answer
write_answer("raised?")
"""


def test_limits_cannot_be_raised_from_inside(attack_run, scripted, finding):
    f = finding(
        "broker", "raise limits by editing state/job.json, env vars or headers",
        tried="job.json limits set to 10^9 and depth to -10; FSRLM_MAX_* variables exported; x-fsrlm-* limit "
              "headers; max_tokens=100000 and an unknown `max_scripts` body field; with "
              "max_subcalls_per_script=3 and max_tokens_per_subcall=50",
        expected="3 subcalls answered, the rest refused; max_tokens clamped to 50 upstream; unknown fields 400; "
                 "/budget shows the configured limits",
    )
    run = attack_run(RAISE_LIMITS, max_subcalls_per_script=3, max_tokens_per_subcall=50)
    found = run.findings
    assert found["results"] == {"200": 3, "402 max_subcalls_per_script": 5}, found["results"]
    assert found["unknown_field"] == "400 invalid_request_error"
    assert found["budget"]["max_subcalls_per_script"] == 3 and found["budget"]["depth"] == 0
    sent = [r.body.get("max_tokens") for r in scripted.requests_of("subcall")]
    assert sent == [50, 50, 50], sent
    f.observed = (f"{found['results']}; upstream max_tokens {sent}; unknown field {found['unknown_field']}; "
                  f"/budget max_subcalls_per_script={found['budget']['max_subcalls_per_script']}, "
                  f"depth={found['budget']['depth']}")


BUDGET_RACE = CLIENT + """
from concurrent.futures import ThreadPoolExecutor
big = "words " * 8000
def one(i):
    return outcome(*call("/fsrlm/v1/subcall", ask(f"ECHO: {i} {big}")))
with ThreadPoolExecutor(30) as pool:
    results = Counter(pool.map(one, range(30)))
F["results"] = dict(results)
save()
from llm_client import write_answer
write_answer("raced")
"""


def test_concurrent_subcalls_cannot_overrun_the_budget(attack_run, scripted, finding):
    f = finding(
        "broker", "overrun the dollar budget with concurrent subcalls",
        tried="30 expensive subcalls (~$0.22 each) sent at once, with max_budget_usd=0.2 and "
              "subcall_concurrency=2",
        expected="the run never spends past the budget (each call's worst case is reserved before it goes "
                 "upstream); the calls it cannot hold get 402 max_budget_usd",
    )
    scripted.subcall_latency_ms = 1000  # a real model takes seconds: calls overlap
    run = attack_run(BUDGET_RACE, max_budget_usd=0.2, subcall_concurrency=2)
    m = run.result.metrics
    per_call = m.subcall_cost_usd / max(m.subcalls, 1)
    assert m.total_cost_usd <= 0.2, (m.total_cost_usd, run.findings)
    assert run.findings["results"].get("402 max_budget_usd", 0) > 0
    f.observed = (f"{run.findings['results']}; spent ${m.total_cost_usd:.2f} of $0.20 "
                  f"({m.subcalls} calls of ~${per_call:.3f})")


ROOT_RACE = CLIENT + """
from concurrent.futures import ThreadPoolExecutor
big = "words " * 100000  # ~150k tokens at Sonnet prices: ~$0.45 a call
def one(i):
    body = {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": f"{i} {big}"}]}
    return outcome(*call("/v1/messages", body))
with ThreadPoolExecutor(20) as pool:
    results = Counter(pool.map(one, range(20)))
F["results"] = dict(results)
save()
from llm_client import write_answer
write_answer("raced")
"""


def test_concurrent_root_calls_cannot_overrun_the_budget(attack_run, scripted, finding):
    f = finding(
        "broker", "overrun the dollar budget with concurrent root-model calls",
        tried="20 root-model calls (POST /v1/messages, ~$0.45 each) sent at once straight to the broker, "
              "with max_budget_usd=1",
        expected="the run never spends past the budget (each call's worst case is reserved before it goes "
                 "upstream); the rest get 402 max_budget_usd",
    )
    scripted.root_latency_ms = 500  # a real model takes seconds: calls overlap
    run = attack_run(ROOT_RACE, max_budget_usd=1.0, policy={"allowed_models": ["claude-sonnet-4-5"]})  # priced as Sonnet
    m = run.result.metrics
    results = run.findings["results"]
    assert results.get("402 max_budget_usd", 0) > 0, results
    assert m.total_cost_usd <= 1.0, (m.total_cost_usd, results)
    f.observed = f"{results}; spent ${m.total_cost_usd:.2f} of $1.00"


# -- malformed and oversized requests -----------------------------------------------------------


BIG_AND_BROKEN = CLIENT + """
def stream_body(path, size, *, unix=False, chunked=False):
    if unix:
        conn = http.client.HTTPConnection("broker", timeout=60)
        conn.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.sock.connect(os.environ["FSRLM_BROKER_SOCKET"])
    else:
        conn = http.client.HTTPConnection("127.0.0.1", 8080, timeout=60)
    conn.putrequest("POST", path)
    conn.putheader("x-api-key", TOKEN)
    conn.putheader("content-type", "application/json")
    if chunked:
        conn.putheader("transfer-encoding", "chunked")
    else:
        conn.putheader("content-length", str(size))
    conn.endheaders()
    block = b"[" + b"1," * (512 * 1024 - 1)  # 1 MB of the start of a JSON array
    sent, error = 0, None
    try:
        while sent < size:
            piece = block[: size - sent]
            conn.send(b"%x\\r\\n%s\\r\\n" % (len(piece), piece) if chunked else piece)
            sent += len(piece)
        if chunked:
            conn.send(b"0\\r\\n\\r\\n")
    except OSError as e:
        error = type(e).__name__
    try:
        r = conn.getresponse()
        status, body = r.status, r.read()[:300].decode("utf-8", "replace")
    except (OSError, http.client.HTTPException) as e:
        status, body = None, type(e).__name__
    conn.close()
    return {"status": status, "sent_mb": sent >> 20, "send_error": error, "body": body}

SIZE = 100 << 20
F["big"] = {
    "subcall via relay": stream_body("/fsrlm/v1/subcall", SIZE),
    "root call via relay": stream_body("/v1/messages", SIZE),
    "rlm_query on the socket": stream_body("/fsrlm/v1/rlm_query", SIZE, unix=True),
    "subcall chunked on the socket": stream_body("/fsrlm/v1/subcall", SIZE, unix=True, chunked=True),
}
deep = b'{"messages": ' + b"[" * 200000 + b"]" * 200000 + b"}"
broken = {
    "empty": (b"", "/fsrlm/v1/subcall"),
    "truncated": (b'{"messages": [{"role": "user", "content": "x"', "/fsrlm/v1/subcall"),
    "not an object": (b"[1, 2, 3]", "/fsrlm/v1/subcall"),
    "null": (b"null", "/fsrlm/v1/subcall"),
    "invalid utf-8": (b'{"messages": [{"role": "user", "content": "\\xff\\xfe"}]}', "/fsrlm/v1/subcall"),
    "NaN temperature": (b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}', "/fsrlm/v1/subcall"),
    "huge number": (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 1e999}', "/fsrlm/v1/subcall"),
    "negative max_tokens": (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": -5}', "/fsrlm/v1/subcall"),
    "200k-deep nesting": (deep, "/fsrlm/v1/subcall"),
    "200k-deep root call": (b"[" * 200000 + b"]" * 200000, "/v1/messages"),
    "rlm_query empty prompt": (b'{"prompt": "", "context": "x"}', "/fsrlm/v1/rlm_query"),
    "rlm_query garbage": (b"\\x00\\x01\\x02", "/fsrlm/v1/rlm_query"),
}
F["broken"] = {name: outcome(*call(path, raw=raw)) for name, (raw, path) in broken.items()}
F["health_after"] = call("/fsrlm/v1/health", method="GET")[0]
status, body = call("/fsrlm/v1/subcall", ask("ECHO: still serving"))
F["after"] = [status, body.get("text") if isinstance(body, dict) else body]
save()
from llm_client import write_answer
write_answer("sent")
"""


def test_oversized_and_malformed_requests(attack_run, scripted, finding):
    f = finding(
        "broker", "requests of 100 MB, malformed JSON",
        tried="100 MB bodies to the subcall, root and rlm_query routes (Content-Length and chunked, via the relay "
              "and straight to the socket); empty, truncated, non-object, invalid UTF-8, NaN, 1e999, negative, "
              "200 000-deep nested JSON",
        expected="413 request_too_large for every big body (the broker stops reading at 32 MB, its memory stays "
                 "bounded); 400 for every malformed body (root-call bodies are refused by the broker's request "
                 "policy, never passed on), never a 500; the broker keeps serving",
    )
    run, growth = peak_rss_growth(lambda: attack_run(BIG_AND_BROKEN, timeout_seconds=180))
    found = run.findings
    assert found, run.result.errors
    assert {v["status"] for v in found["big"].values()} == {413}, found["big"]
    assert all("request_too_large" in v["body"] for v in found["big"].values())
    statuses = {k: v.split()[0] for k, v in found["broken"].items()}
    assert all(s.startswith("4") for s in statuses.values()), found["broken"]
    assert found["health_after"] == 200 and found["after"] == [200, "still serving"]
    assert growth < 200 * MB, growth / MB
    assert not any(r.body and "still serving" not in json.dumps(r.body) for r in scripted.requests_of("subcall"))
    big = {k: f"{v['status']} after {v['sent_mb']} MB sent" for k, v in found["big"].items()}
    f.observed = (f"big: {big}; malformed: {found['broken']}; broker still serving; orchestrator RSS rose "
                  f"{growth / MB:.0f} MB")


# -- slowloris ---------------------------------------------------------------------------------


SLOWLORIS = CLIENT + """
import time
from llm_client import llm_batch
held, failed = [], Counter()
def hold(make, n, head):
    for _ in range(n):
        try:
            s = make()
            s.sendall(head)
            held.append(s)
        except OSError as e:
            failed[type(e).__name__] += 1
def relay():
    return socket.create_connection(("127.0.0.1", 8080), timeout=5)
def direct():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(os.environ["FSRLM_BROKER_SOCKET"])
    return s
head = b"POST /fsrlm/v1/subcall HTTP/1.1\\r\\nHost: broker\\r\\nx-api-key: " + TOKEN.encode() + b"\\r\\n"
body_head = head + b"content-type: application/json\\r\\ncontent-length: 1000\\r\\n\\r\\n{"
hold(relay, N_RELAY, head)
hold(direct, N_DIRECT, head)
hold(direct, 20, body_head)  # slow bodies too
time.sleep(1)
started = time.time()
answers = llm_batch([f"ECHO: after the flood {i}" for i in range(8)])
F["batch_seconds"] = time.time() - started
F["answers"], F["held"], F["failed"] = answers, len(held), dict(failed)
alive = 0
for s in held:
    s.setblocking(False)
    try:
        alive += s.recv(1) != b""
    except BlockingIOError:
        alive += 1
    except OSError:
        pass
F["still_open"] = alive
save()
from llm_client import write_answer
write_answer(" ".join(a.split()[-1] for a in answers))
"""


@contextmanager
def fd_limit(soft: int):
    """Lower this process's soft RLIMIT_NOFILE (the usual default on desktops is 1024)."""
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, old[1]), old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, old)


def test_slowloris_connections_do_not_stop_the_run(attack_run, finding):
    f = finding(
        "broker", "slowloris: many half-open connections",
        tried="300 connections through the relay and 1300 straight to the broker socket, each sending half a "
              "request head and then nothing, plus 20 with a body that never arrives; then a normal llm_batch; "
              "the orchestrator runs with a soft limit of 1024 open files (a common default)",
        expected="the broker never holds more than its connection cap (oldest idle connections are closed "
                 "first), its file descriptors stay bounded, and the run completes",
    )
    with fd_limit(1024):
        run, fds = peak_fd_growth(lambda: attack_run("N_RELAY, N_DIRECT = 300, 1300\n" + SLOWLORIS,
                                                     timeout_seconds=60))
    found, result = run.findings, run.result
    assert result.success, (result.stop_reason, result.errors)
    assert result.answer == " ".join(str(i) for i in range(8))
    assert fds < 900, fds  # the cap (272) plus connections accepted before the cap closes them
    f.observed = (f"{found['held']} connections opened, {found['still_open']} still open at the end; "
                  f"llm_batch answered in {found['batch_seconds']:.1f} s; orchestrator file descriptors rose by "
                  f"at most {fds}; run {result.stop_reason}")


# -- depth and cache ---------------------------------------------------------------------------


DEPTH = CLIENT + """
from llm_client import rlm_query, BudgetExceeded, LLMError, write_answer
job = json.load(open("state/job.json"))
job["depth"] = 0
job["limits"]["max_depth"] = 99
json.dump(job, open("state/job.json", "w"))
os.environ["FSRLM_DEPTH"] = "0"
status, body = call("/fsrlm/v1/rlm_query", {"prompt": "go deeper", "context": "ctx"},
                    headers={"x-fsrlm-depth": "0", "x-fsrlm-script": "scratch/scripts/other.py"})
if status == 200:
    out = "nested:" + str(body.get("answer"))
else:
    out = "refused:" + str(((body or {}).get("error") or {}).get("limit"))
F.setdefault("chain", []).append(out)
save()
write_answer(out)
"""


def test_depth_limit_cannot_be_bypassed(attack_run, finding):
    f = finding(
        "broker", "bypass max_depth through nested rlm_query",
        tried="with max_depth=1, every level's agent resets FSRLM_DEPTH and job.json depth to 0, sends "
              "x-fsrlm-depth: 0 and a forged script name, and calls rlm_query again",
        expected="one nested run; the nested agent's rlm_query is refused with max_depth; the nested "
                 "sandbox is removed too",
    )
    run = attack_run(DEPTH, max_depth=1)
    assert run.result.answer == "nested:refused:max_depth", run.result.answer
    assert run.result.metrics.nested_runs == 1
    f.observed = f"answer {run.result.answer!r}; nested runs: {run.result.metrics.nested_runs}"


POISON = CLIENT + """
import hashlib
from llm_client import llm_query, write_answer
entry = {"text": "POISONED", "model": "scripted-sub", "input_tokens": 1, "output_tokens": 1,
         "stop_reason": "end_turn", "cost_usd": 0.0}
for key in KEYS:
    for rel in (f"cache/llm/{key}.json", f"cache/llm/{key[:2]}/{key}.json"):
        os.makedirs(os.path.dirname(rel), exist_ok=True)
        json.dump(entry, open(rel, "w"))
answers = [llm_query(p) for p in PROMPTS]
F["answers"] = answers
save()
write_answer(" | ".join(answers))
"""


def test_cache_cannot_be_poisoned_from_the_workspace(attack_run, scripted, make_config, finding, tmp_path):
    f = finding(
        "broker", "poison the response cache",
        tried="compute the exact cache keys of the next subcalls and write forged entries (text POISONED) into "
              "cache/llm/ in both the flat and the sharded layout; then make those subcalls; then a second run "
              "with the same cache_dir",
        expected="the broker never reads the workspace: real answers in both runs, no POISONED in the host cache",
    )
    prompts = [f"ECHO: genuine {i}" for i in range(3)]
    config = make_config("docker")
    upstream = f"{config.upstream.type} {scripted.url.rstrip('/')}"
    keys = [cache_key(upstream, {"messages": [{"role": "user", "content": p}], "model": "scripted-sub",
                                 "max_tokens": config.max_tokens_per_subcall}) for p in prompts]
    script = f"KEYS = {keys!r}\nPROMPTS = {prompts!r}\n" + POISON
    first = attack_run(script)
    assert first.result.answer == "genuine 0 | genuine 1 | genuine 2", first.result.answer
    mirrored = sorted(p.stem for p in (first.workspace / "cache" / "llm").glob("*.json"))
    assert set(keys) <= set(mirrored), "the test computed the real keys (the mirror holds them)"
    second = attack_run(script)
    assert second.result.answer == first.result.answer
    assert second.result.metrics.subcalls_cached == 3
    host_cache = tmp_path / "cache"
    assert not any(b"POISONED" in p.read_bytes() for p in host_cache.rglob("*.json"))
    f.observed = (f"answers {first.result.answer!r} (first run) and {second.result.answer!r} (second run, "
                  f"{second.result.metrics.subcalls_cached} from the host cache); no POISONED in the host cache")


# -- resume -----------------------------------------------------------------------------------


HIJACK = """
job = json.load(open("state/job.json"))
job["run_id"] = TARGET_RUN_ID
json.dump(job, open("state/job.json", "w"))
from llm_client import llm_query, write_answer
write_answer(llm_query("ECHO: spent"))
"""


@pytest.mark.parametrize("target", ["path traversal", "another run"])
def test_job_json_cannot_redirect_a_resume(attack_run, scripted, make_config, finding, tmp_path, target):
    from fsrlm.errors import WorkspaceError

    f = finding(
        "broker", f"hijack `fsrlm resume` through state/job.json: {target}",
        tried=("job.json's run_id set to `../../outside/victim` (the host-side record would be read and rewritten "
               "outside the cache)" if target == "path traversal" else
               "job.json's run_id set to another run's id (whose record has spent less), then resume"),
        expected="resume refuses the folder before anything starts; no host file is read or written through it",
    )
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.json"
    if target == "path traversal":
        victim.write_text(json.dumps({"run_id": "x", "workspace": str(tmp_path), "session_id": "s",
                                      "spent_usd": 0.0}))
        target_id = "../../outside/victim"
    else:
        other = attack_run("from llm_client import write_answer\nwrite_answer('another run')\n")
        target_id = other.result.run_id
    before = victim.read_text() if victim.exists() else None
    run = attack_run(f"TARGET_RUN_ID = {target_id!r}\n" + HIJACK)
    assert run.result.success, run.result.errors
    with pytest.raises(WorkspaceError) as refused:
        RLM(make_config("docker")).resume(run.workspace)
    assert (victim.read_text() if victim.exists() else None) == before
    f.observed = f"resume refused: {str(refused.value)[:160]}"
