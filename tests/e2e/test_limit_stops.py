"""A limit that refuses a script's calls and leaves the run without an answer stops it as ``limit`` (exit 3).

Each case is a real run (the real CLI, the broker, the local executor) whose agent runs a
script that hits one limit; the script dies of the refusal and the agent ends without writing
an answer. The README's exit-code table says 3 for "a limit stopped the run": so must the CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from support import FAKE_UPSTREAM_KEY

from fsrlm import RLM
from fsrlm.cli.exit_codes import ExitCode, exit_code_for_stop
from fsrlm.testing.plans import script_plan

CALLS = "from llm_client import llm_query\nfor i in range(3):\n    llm_query(f'ECHO: call {i}')\n"
TWO_SCRIPTS = textwrap.dedent("""
    import subprocess, sys
    from llm_client import llm_query
    llm_query("ECHO: first script")
    open("scratch/scripts/second.py", "w").write("from llm_client import llm_query\\nllm_query('ECHO: second')\\n")
    sys.exit(subprocess.run([sys.executable, "scratch/scripts/second.py"]).returncode)
""")
NESTED = "from llm_client import rlm_query\nrlm_query('what is in it?', 'some context')\n"

CASES = {
    "max_subcalls_per_script": (CALLS, {"max_subcalls_per_script": 2}),
    "max_total_subcalls": (CALLS, {"max_total_subcalls": 2}),
    "max_scripts": (TWO_SCRIPTS, {"max_scripts": 1}),
    "max_depth": (NESTED, {"max_depth": 0}),
    "max_budget_usd": (CALLS, {"max_budget_usd": 1e-9}),
}


@pytest.mark.parametrize("limit", list(CASES))
def test_a_limit_that_leaves_no_answer_stops_the_run(limit, scripted, make_config):
    script, settings = CASES[limit]
    scripted.plan = script_plan(script)
    result = RLM(make_config("local", **settings)).invoke("some input", question="q")
    assert result.answer is None
    assert result.stop_reason == "limit", result.errors
    assert exit_code_for_stop(result.stop_reason) == ExitCode.LIMIT_REACHED == 3
    assert any(limit in e for e in result.errors), result.errors


def test_the_command_line_exits_3(scripted, tmp_path):
    scripted.plan = script_plan(CALLS)
    (tmp_path / "in.txt").write_text("some input\n")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("FSRLM_", "ANTHROPIC_"))},
           "FSRLM_UPSTREAM": "compatible", "FSRLM_UPSTREAM_BASE_URL": scripted.url,
           "FSRLM_UPSTREAM_API_KEY": FAKE_UPSTREAM_KEY, "FSRLM_CACHE_DIR": str(tmp_path / "cache"),
           "FSRLM_ROOT_MODEL": "scripted-root", "FSRLM_SUBMODEL": "scripted-sub", "FSRLM_EXECUTOR": "local",
           "FSRLM_MAX_SUBCALLS_PER_SCRIPT": "2"}
    proc = subprocess.run([sys.executable, "-m", "fsrlm.cli.main", "run", str(tmp_path / "in.txt"), "-q", "q",
                           "--workspace", str(tmp_path / "runs"), "--json"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    out = json.loads(proc.stdout)
    assert out["stop_reason"] == "limit" and out["answer"] is None


def test_a_budget_refusal_of_the_root_agent_reads_as_a_limit(scripted, make_config):
    """The real CLI shows the broker's refusal of a root call as what it is (it once read "Failed to authenticate")."""
    scripted.plan = script_plan("print('one turn of work')\n")
    result = RLM(make_config("local", max_budget_usd=1e-9)).invoke("some input", question="q")
    assert result.stop_reason == "limit", result.errors
    text = " ".join(result.errors)
    assert "a run limit refused" in text and "max_budget_usd" in text and "authenticate" not in text.lower(), result.errors
