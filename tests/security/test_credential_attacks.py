"""Credentials: the real API key and AWS secrets stay in the host-side broker."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from support import FAKE_UPSTREAM_KEY

from fsrlm.testing.scripted_model import Fault

pytestmark = [pytest.mark.docker, pytest.mark.both_kernels]  # the sandbox kernel decides the outcome

AWS_KEY_ID = "AKIAFSRLMTESTKEYID00"
AWS_SECRET = "fsrlm/test+AWS+secret/do-not-leak-0123456789"
AWS_TOKEN = "fsrlm-test-aws-session-token-do-not-leak"


def _encoded(*secrets: str) -> str:
    """The secrets for the attack script, encoded so the script file itself holds no copy to find."""
    return repr([base64.b64encode(s.encode()[::-1]).decode() for s in secrets])


HUNT = """
import base64, glob, subprocess, urllib.request, urllib.error, socket
SECRETS = [base64.b64decode(s)[::-1] for s in ENCODED]

def has_secret(data):
    if isinstance(data, str):
        data = data.encode("utf-8", "replace")
    return any(s in data for s in SECRETS)

# 1. the environment
F["env_hit"] = [k for k, v in os.environ.items() if has_secret(v)]
F["env_aws"] = sorted(k for k in os.environ if k.startswith("AWS_"))
F["env_key_is_token"] = os.environ.get("ANTHROPIC_API_KEY") == os.environ.get("FSRLM_BROKER_TOKEN")

# 2. every process's environment and command line
hits, readable = [], 0
for p in glob.glob("/proc/[0-9]*"):
    for name in ("environ", "cmdline"):
        try:
            data = open(f"{p}/{name}", "rb").read()
        except OSError:
            continue
        readable += 1
        if has_secret(data):
            hits.append(f"{p}/{name}")
F["proc_hits"], F["proc_readable"] = hits, readable

# 3. every file on every mount (grep reads the patterns from a file in /dev/shm, which it skips;
#    /tmp/canary holds a secret on purpose, to show the search works)
with open("/tmp/canary", "wb") as fh:
    fh.write(b"canary " + SECRETS[0])
with open("/dev/shm/patterns", "wb") as fh:
    fh.write(b"\\n".join(SECRETS) + b"\\n")
grep = subprocess.run(["grep", "-rlsaF", "-f", "/dev/shm/patterns", "/", "--exclude-dir=proc",
                       "--exclude-dir=sys", "--exclude-dir=dev"], capture_output=True, text=True)
F["disk_hits"] = grep.stdout.split()
os.unlink("/dev/shm/patterns")
os.unlink("/tmp/canary")

# 4. the broker's answers and error messages, through the relay and straight to its socket
BASE = os.environ["FSRLM_BROKER_URL"]
TOKEN = os.environ["FSRLM_BROKER_TOKEN"]

def call(method, path, body=None, token=TOKEN, raw=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(BASE + path, data=data, method=method,
                                 headers={"x-api-key": token, "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()

answers = {
    "upstream_401": call("POST", "/fsrlm/v1/subcall", {"messages": [{"role": "user", "content": "ECHO: 401 please"}]}),
    "health": call("GET", "/fsrlm/v1/health"),
    "budget": call("GET", "/fsrlm/v1/budget"),
    "bad_token": call("GET", "/fsrlm/v1/budget", token="guess"),
    "invalid_json": call("POST", "/fsrlm/v1/subcall", raw=b"{not json"),
    "unknown_field": call("POST", "/fsrlm/v1/subcall", {"messages": [{"role": "user", "content": "x"}],
                                                       "api_key": "please"}),
    "wrong_type": call("POST", "/fsrlm/v1/subcall", {"messages": "x", "max_tokens": "lots"}),
    "root_invalid": call("POST", "/v1/messages", raw=b"\\xff\\xfe garbage"),
    "bedrock_route": call("POST", "/model/x/invoke", {"messages": []}),
    "unknown_route": call("POST", "/v1/complete", {}),
}
F["answers"] = {k: [s, h, b.decode("utf-8", "replace")[:300]] for k, (s, h, b) in answers.items()}
F["answer_hits"] = [k for k, (s, h, b) in answers.items() if has_secret(b) or has_secret(json.dumps(h))]
save()
from llm_client import write_answer
write_answer("hunted")
"""


def _host_hits(root: Path, secrets: list[str]) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            if any(s.encode() in data for s in secrets):
                found.append(str(path.relative_to(root)))
    return found


def test_no_credential_reaches_the_sandbox(attack_run, scripted, finding, monkeypatch, tmp_path):
    f = finding(
        "credentials", "find the real API key or AWS secrets",
        tried="the orchestrator's environment holds ANTHROPIC_API_KEY and AWS_* secrets; the agent searches its "
              "environment, every /proc/*/environ and cmdline, every file on every mount (grep -r /), and the "
              "broker's answers: health, budget, a wrong token, invalid JSON, unknown fields, wrong types, "
              "unknown routes, the Bedrock route, an upstream 401",
        expected="no secret anywhere in the sandbox, in broker answers or in files the broker writes to the "
                 "workspace; ANTHROPIC_API_KEY inside is only the run token",
    )
    secrets = [FAKE_UPSTREAM_KEY, AWS_SECRET, AWS_TOKEN, AWS_KEY_ID]
    monkeypatch.setenv("ANTHROPIC_API_KEY", FAKE_UPSTREAM_KEY)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", AWS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", AWS_TOKEN)
    scripted.inject(Fault(status=401), kind="subcall")
    run = attack_run(f"ENCODED = {_encoded(*secrets)}\n" + HUNT)
    found = run.findings
    assert found, run.result.errors
    assert found["env_hit"] == [] and found["env_aws"] == [] and found["env_key_is_token"]
    assert found["proc_readable"] > 0 and found["proc_hits"] == []
    assert found["disk_hits"] == ["/tmp/canary"]  # only the planted control
    assert found["answer_hits"] == [], found["answers"]
    assert found["answers"]["bad_token"][0] == 401
    assert {found["answers"][k][0] for k in ("invalid_json", "unknown_field", "wrong_type")} == {400}
    assert found["answers"]["upstream_401"][0] == 502
    # What the broker and orchestrator wrote into the run folder and the cache holds no secret either.
    assert _host_hits(tmp_path / "runs", secrets) == []
    assert _host_hits(tmp_path / "cache", secrets) == []
    # The upstream did get the key, from the broker.
    assert {r.headers.get("x-api-key") for r in scripted.requests} == {FAKE_UPSTREAM_KEY}
    statuses = {k: v[0] for k, v in found["answers"].items()}
    f.observed = (f"environment: no secret, no AWS_*; {found['proc_readable']} /proc files read: no secret; "
                  f"grep of every mount: only the planted control file; broker answers {statuses}: no secret; "
                  "run folder and cache: "
                  "no secret")
