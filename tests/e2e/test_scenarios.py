"""End-to-end runs: the real CLI, the real broker, the scripted model, on every executor."""

from __future__ import annotations

import json
import textwrap

import pytest
from support import FAKE_UPSTREAM_KEY, log_lines

from fsrlm import RLM
from fsrlm.testing.plans import count_label_plan, script_plan
from fsrlm.testing.scripted_model import Fault


def audit(result) -> list[dict]:
    path = result.workspace_path / "state" / "subcalls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_map_reduce_over_many_chunks(executor_type, scripted, make_config):
    text, expected = log_lines(1200)
    scripted.plan = count_label_plan(chunk_size=4000)
    result = RLM(make_config(executor_type)).invoke(text, question="How many lines contain ERROR?")

    assert result.success, result.errors
    assert result.answer == str(expected)
    chunks = len(result.artifacts)
    assert chunks >= 20
    assert sum(a["count"] for a in result.artifacts) == expected
    assert result.metrics.subcalls == chunks == len(scripted.requests_of("subcall"))
    statuses = [r["status"] for r in audit(result) if r["kind"] == "subcall"]
    assert statuses == ["ok"] * chunks
    assert (result.workspace_path / "input" / "prompt.md").read_text() == text


def test_second_identical_run_is_served_from_cache(executor_type, scripted, make_config):
    text, expected = log_lines(400)
    scripted.plan = count_label_plan(chunk_size=4000)
    config = make_config(executor_type)
    first = RLM(config).invoke(text, question="How many lines contain ERROR?")
    upstream_subcalls = len(scripted.requests_of("subcall"))
    second = RLM(config).invoke(text, question="How many lines contain ERROR?")

    assert first.success and second.success
    assert second.answer == first.answer == str(expected)
    assert len(scripted.requests_of("subcall")) == upstream_subcalls  # nothing new went upstream
    assert second.metrics.subcalls == 0
    assert second.metrics.subcalls_cached == first.metrics.subcalls
    assert second.metrics.subcall_cost_usd == 0
    assert {r["status"] for r in audit(second) if r["kind"] == "subcall"} == {"cached"}
    assert list((second.workspace_path / "cache" / "llm").glob("*.json"))  # the inspection mirror


def test_script_over_its_subcall_limit_gets_budget_exceeded(executor_type, scripted, make_config):
    scripted.plan = script_plan(textwrap.dedent("""
        from llm_client import llm_batch, llm_query, BudgetExceeded, write_answer
        try:
            llm_batch([f"ECHO: item {i}" for i in range(12)])
            outcome = "no limit"
        except BudgetExceeded as e:
            outcome = f"refused by {e.limit}"
        write_answer(outcome)
    """))
    result = RLM(make_config(executor_type, max_subcalls_per_script=5, subcall_concurrency=2)).invoke(
        "some input", question="q")

    assert result.success
    assert result.answer == "refused by max_subcalls_per_script"
    assert result.metrics.subcalls == 5
    assert result.metrics.subcalls_refused >= 1
    assert any("max_subcalls_per_script" in e for e in result.errors)
    assert "refused" in {r["status"] for r in audit(result)}


def test_budget_is_enforced_for_subcalls_and_root(executor_type, scripted, make_config):
    scripted.plan = script_plan(textwrap.dedent("""
        from llm_client import llm_query, BudgetExceeded, write_answer
        n = 0
        try:
            while n < 50:
                llm_query("ECHO: " + str(n) + " " + "words " * 8000)
                n += 1
            outcome = "never refused"
        except BudgetExceeded as e:
            outcome = f"{n} calls then {e.limit}"
        write_answer(outcome)
    """))
    result = RLM(make_config(executor_type, max_budget_usd=0.2)).invoke("input", question="q")

    assert result.answer and result.answer.endswith("max_budget_usd"), result.answer
    calls = int(result.answer.split()[0])
    assert 1 <= calls < 50
    # The budget can be passed by at most the one call that was in flight when it ran out.
    per_call = result.metrics.subcall_cost_usd / calls
    assert result.metrics.total_cost_usd <= 0.2 + per_call + 0.05
    assert any("max_budget_usd" in e for e in result.errors)


@pytest.mark.parametrize("max_depth,expected", [(0, "refused:max_depth"), (1, "nested:refused:max_depth")])
def test_max_depth_is_enforced(executor_type, scripted, make_config, max_depth, expected):
    scripted.plan = script_plan(textwrap.dedent("""
        from llm_client import rlm_query, BudgetExceeded, write_answer
        try:
            out = "nested:" + rlm_query("What is in the context?", "a small context")
        except BudgetExceeded as e:
            out = "refused:" + e.limit
        write_answer(out)
    """))
    result = RLM(make_config(executor_type, max_depth=max_depth)).invoke("input", question="q")
    assert result.answer == expected
    assert result.metrics.nested_runs == max_depth


def test_models_reach_the_upstream_and_credentials_do_not_reach_the_agent(executor_type, scripted, make_config):
    scripted.plan = script_plan(textwrap.dedent("""
        import json, os
        from llm_client import llm_query, write_answer
        llm_query("ECHO: default model")
        llm_query("ECHO: chosen model", model="scripted-other")
        json.dump(dict(os.environ), open("scratch/env.json", "w"))
        write_answer("ok")
    """))
    # A model besides root_model and submodel is sent only when the request policy lists it.
    result = RLM(make_config(executor_type, policy={"allowed_models": ["scripted-other"]})).invoke("input", question="q")
    assert result.success, result.errors

    roots = scripted.requests_of("root")
    assert roots and {r.body["model"] for r in roots} == {"scripted-root"}
    assert [r.body["model"] for r in scripted.requests_of("subcall")] == ["scripted-sub", "scripted-other"]
    assert {r.headers.get("x-api-key") for r in scripted.requests} == {FAKE_UPSTREAM_KEY}

    env = json.loads((result.workspace_path / "scratch" / "env.json").read_text())
    dumped = json.dumps(env)
    assert FAKE_UPSTREAM_KEY not in dumped
    assert not [k for k in env if k.startswith("AWS_")]
    assert env["ANTHROPIC_API_KEY"] == env["FSRLM_BROKER_TOKEN"]


def test_requests_without_the_run_token_are_refused(executor_type, scripted, make_config):
    scripted.plan = script_plan(textwrap.dedent("""
        import os, urllib.request, urllib.error
        req = urllib.request.Request(os.environ["FSRLM_BROKER_URL"] + "/fsrlm/v1/budget",
                                     headers={"x-api-key": "guessed-token"})
        try:
            urllib.request.urlopen(req)
            out = "accepted"
        except urllib.error.HTTPError as e:
            out = str(e.code)
        open("output/answer.md", "w").write(out)
    """))
    result = RLM(make_config(executor_type)).invoke("input", question="q")
    assert result.answer == "401"


def test_timeout_stops_the_run_and_keeps_the_workspace(executor_type, scripted, make_config):
    scripted.plan = script_plan(textwrap.dedent("""
        import time
        from llm_client import append_artifact
        append_artifact({"partial": True})
        time.sleep(300)
    """))
    result = RLM(make_config(executor_type, timeout_seconds=25)).invoke("input", question="q")

    assert not result.success
    assert result.stop_reason == "timeout"
    assert result.artifacts == [{"partial": True}]
    assert result.workspace_path and (result.workspace_path / "state" / "artifacts.jsonl").exists()
    assert any("timeout_seconds" in e for e in result.errors)


def test_upstream_rejecting_credentials_is_reported(executor_type, scripted, make_config):
    scripted.inject(Fault(status=401), kind="root")
    result = RLM(make_config(executor_type)).invoke("input", question="q")
    assert not result.success
    assert result.stop_reason == "upstream_error"
    assert any("rejected the broker's credentials" in e for e in result.errors)
    assert len(scripted.requests_of("root")) >= 1


def test_workspace_removed_after_success_unless_preserved(executor_type, scripted, make_config, tmp_path):
    scripted.plan = count_label_plan(chunk_size=4000)
    text, _ = log_lines(100)
    result = RLM(make_config(executor_type, preserve_workspace=False)).invoke(text, question="Count ERROR")
    assert result.success
    assert result.workspace_path is None
    assert not any((tmp_path / "runs").iterdir())


def test_a_local_run_leaves_no_cli_files_in_the_hosts_temp_folder(scripted, make_config, tmp_path):
    """The CLI keeps its temp files (task output) under CLAUDE_CODE_TMPDIR, in the run folder: a removed
    run leaves nothing in /tmp/claude-<uid> (where, without it, every run left a folder)."""
    import os
    import tempfile
    from pathlib import Path

    from fsrlm.testing.plans import bash_plan

    host_tmp = Path(tempfile.gettempdir()) / f"claude-{os.getuid()}"
    before = set(host_tmp.iterdir()) if host_tmp.is_dir() else set()
    scripted.plan = bash_plan("mkdir -p output && echo hi > output/answer.md")
    result = RLM(make_config("local", preserve_workspace=False)).invoke("input", question="q")
    assert result.success, result.errors
    after = set(host_tmp.iterdir()) if host_tmp.is_dir() else set()
    assert not [p for p in after - before if result.run_id in p.name]
