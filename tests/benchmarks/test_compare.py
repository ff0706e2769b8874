"""The baseline: the root model alone, laid out as the OOLONG authors' harness, through the broker."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fsrlm.benchmarks import compare, oolong
from fsrlm.benchmarks.compare import PROMPT_OVERHEAD_TOKENS, SYSTEM_PROMPT, Budget, fit_context
from fsrlm.benchmarks.models import model_limits
from fsrlm.benchmarks.oolong_synth_gen import generate_rows
from fsrlm.benchmarks.scripted_oolong import oolong_plan, oolong_responder
from support import FAKE_UPSTREAM_KEY
from test_oolong_runner import records, write_fsrlm_toml, write_rows

from fsrlm.testing.plans import last_user_text
from fsrlm.testing.scripted_model import ScriptedModelServer


@pytest.fixture
def bench(tmp_path: Path, scripted: ScriptedModelServer) -> dict[str, Any]:
    scripted.plan = oolong_plan()
    scripted.responder = oolong_responder
    rows = generate_rows(3, 2048, seed=21)
    return {
        "rows": rows,
        "data": write_rows(tmp_path / "rows.jsonl", rows),
        "config": write_fsrlm_toml(tmp_path, scripted),
        "tmp": tmp_path,
    }


def run_compare(bench: dict[str, Any], capsys: pytest.CaptureFixture[str], out: str,
                *extra: str, output_tokens: str = "20000") -> tuple[int, str, str]:
    budget = ["--max-output-tokens", output_tokens] if output_tokens else []
    code = compare.main(["--data", str(bench["data"]), "--fsrlm-config", str(bench["config"]),
                         "--out", str(bench["tmp"] / out), *budget, *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_fit_context_cuts_at_a_line_and_keeps_the_question():
    context = "".join(f"line {i:03d} {'x' * 30}\n" for i in range(100))  # 40 chars a line
    kept, cut = fit_context(context, "Q?", window_tokens=10_000, max_output_tokens=100)
    assert (kept, cut) == (context, False)

    window = PROMPT_OVERHEAD_TOKENS + 100 + 250  # room for 1000 chars at 4 chars a token
    kept, cut = fit_context(context, "Q?", window_tokens=window, max_output_tokens=100)
    assert cut and context.startswith(kept) and kept.endswith("\n")
    assert len(kept) == 960  # 24 whole lines fit in 1000 - len("Q?") - len(SYSTEM_PROMPT) - 2
    kept, cut = fit_context(context, "Q?", window_tokens=window, max_output_tokens=100, chars_per_token=2.0)
    assert cut and len(kept) == 440  # 11 lines in 500 - 32


def test_the_output_budget_is_the_models_own_lowered_only_to_fit_the_whole_context():
    budget = Budget(window_tokens=200_000, max_output_tokens=64_000, min_output_tokens=4096)
    short = "x" * 40_000  # 10K tokens: the whole budget
    assert budget.fit(short, "Q?") == (short, 64_000, False)
    long = "line\n" * 120_000  # 150K tokens: the context stays whole, the answer gets what is left
    kept, max_tokens, cut = budget.fit(long, "Q?")
    assert kept == long and not cut and 4096 <= max_tokens < 64_000
    assert budget.tokens(long) + max_tokens + PROMPT_OVERHEAD_TOKENS <= 200_000
    huge = "line\n" * 160_000  # 200K tokens: only now is the context cut, leaving the minimum to answer
    kept, max_tokens, cut = budget.fit(huge, "Q?")
    assert cut and max_tokens == 4096 and huge.startswith(kept) and len(kept) < len(huge)


def test_model_limits_know_claude_models_by_any_id():
    assert model_limits("claude-sonnet-4-5").max_output_tokens == 64_000
    assert model_limits("us.anthropic.claude-sonnet-4-5-20250929-v1:0").max_output_tokens == 64_000
    assert model_limits("claude-opus-4-1-20250805").max_output_tokens == 32_000
    assert model_limits("claude-opus-4-5").max_output_tokens == 64_000
    assert model_limits("claude-3-5-haiku-latest").max_output_tokens == 8_192
    assert model_limits("scripted-root") is None


def test_root_model_alone_laid_out_as_the_authors_harness(bench, capsys, scripted):
    code, out, err = run_compare(bench, capsys, "alone.jsonl", "--concurrency", "3")
    assert code == 0, err

    results = records(bench["tmp"] / "alone.jsonl")
    assert len(results) == 3
    for r in results:
        assert r["method"] == "root-only" and r["model"] == "scripted-root" and r["synthetic"]
        assert r["score"] == 1.0 and r["success"] and not r["truncated"]
        assert r["max_output_tokens"] == 20000 and r["scoring"] == "authors"
        assert r["root_cost_usd"] > 0 and r["root_cost_usd"] == r["total_cost_usd"]
        assert r["subcalls"] == 0 and r["cached"] == 0
    sent = scripted.requests_of("subcall")
    assert len(sent) == 3
    assert {r.body["model"] for r in sent} == {"scripted-root"}  # the root model, not the submodel
    assert {r.headers["x-api-key"] for r in sent} == {FAKE_UPSTREAM_KEY}  # the broker's credentials
    assert {r.body["max_tokens"] for r in sent} == {20000}  # the whole output budget, not max_tokens_per_subcall
    by_question = {row["question"]: row for row in bench["rows"]}
    for request in sent:
        question = last_user_text(request.body)
        row = by_question[question]  # the question alone is the user message
        system = request.body["system"]
        assert system[0] == {"type": "text", "text": SYSTEM_PROMPT}
        assert system[1] == {"type": "text", "text": row["context_window_text"], "cache_control": {"type": "ephemeral"}}
    assert "OOLONG, root model alone" in out and "The paper's figures (THEIRS" in out

    # The broker's response cache is shared with RLM runs: a second pass sends nothing upstream, and says so.
    code, out, err = run_compare(bench, capsys, "again.jsonl")
    assert code == 0, err
    again = records(bench["tmp"] / "again.jsonl")
    assert [r["cached"] for r in again] == [1, 1, 1] and all(r["total_cost_usd"] == 0 for r in again)
    assert len(scripted.requests_of("subcall")) == 3
    assert "3 rows had response-cache hits, charged $0" in out and "(cached)" in err


def test_unknown_output_limit_asks_for_one(bench, capsys):
    code, _, err = run_compare(bench, capsys, "x.jsonl", output_tokens="")
    assert code == 2 and "--max-output-tokens" in err and "scripted-root" in err
    assert not (bench["tmp"] / "x.jsonl").exists()


def test_a_context_longer_than_the_window_is_truncated_and_marked(bench, capsys, scripted):
    code, out, err = run_compare(bench, capsys, "cut.jsonl", "--context-window-tokens", "1200",
                                 "--min-output-tokens", "100", "--json", output_tokens="100")
    assert code == 0, err
    results = records(bench["tmp"] / "cut.jsonl")
    assert [r["truncated"] for r in results] == [True, True, True]
    budget = (1200 - 100 - PROMPT_OVERHEAD_TOKENS) * 4
    for request in scripted.requests_of("subcall"):
        sent = request.body["system"][1]["text"] + SYSTEM_PROMPT + last_user_text(request.body)
        assert len(sent) <= budget
        assert request.body["max_tokens"] == 100
    report = json.loads(out)
    assert report["root_only"]["overall"]["truncated"] == 3
    # The NUMERIC counting question cannot be right from a third of the lines.
    numeric = next(r for r in results if r["answer_type"] == "ANSWER_TYPE.NUMERIC")
    assert numeric["score"] < 1


def test_rlm_and_model_alone_side_by_side(bench, capsys, scripted):
    rlm_out = bench["tmp"] / "rlm.jsonl"
    code = oolong.main(["--data", str(bench["data"]), "--fsrlm-config", str(bench["config"]),
                        "--executor", "local", "--limit", "2", "--concurrency", "2", "--out", str(rlm_out)])
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    # A window of 1200 tokens holds a third of each 2048-token context: both rows are cut.
    code, out, err = run_compare(bench, capsys, "alone.jsonl", "--rlm-results", str(rlm_out),
                                 "--context-window-tokens", "1200", "--min-output-tokens", "100",
                                 output_tokens="100")
    assert code == 0, err
    assert "RLM vs. root model alone (same rows)" in out
    side = out[out.index("RLM vs. root model alone"):]
    (line,) = [row for row in side.splitlines() if row.startswith("synthetic-trec_coarse")]
    cells = line.split()
    assert cells[3] == "2"  # only the two rows answered by both
    assert cells[4:7] == ["100.0", "±", "0.0"]  # the RLM
    assert cells[-1] == "2"  # both rows truncated for the model alone

    code, out, err = run_compare(bench, capsys, "alone.jsonl", "--resume", "--rlm-results", str(rlm_out),
                                 "--json")
    assert code == 0, err
    comparison = json.loads(out)["comparison"]["overall"]
    rlm_rows = records(rlm_out)
    assert comparison["rows"] == 2
    assert comparison["rlm_score"] == 1.0
    assert comparison["rlm_cost_mean"] == pytest.approx(sum(r["total_cost_usd"] for r in rlm_rows) / 2)
    assert comparison["plain_truncated"] == 2
