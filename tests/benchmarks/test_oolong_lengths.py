"""oolong-real lengths counted with the model's tokenizer (count_tokens), as the authors bucket them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fsrlm.benchmarks import oolong
from fsrlm.benchmarks.oolong_data import ESTIMATED_LENGTH, OolongDataError, load_rows
from fsrlm.benchmarks.oolong_lengths import LENGTHS_FILE, measure_lengths, measured_source
from test_oolong_runner import write_fsrlm_toml, write_rows

from fsrlm.config import RLMConfig
from fsrlm.testing.scripted_model import ScriptedModelServer


def dnd(id_: str, window: int, chars: int) -> dict[str, Any]:
    return {"id": id_, "context_window_id": window, "context_window_text": "x" * (chars - 1) + "\n",
            "question": "How many rolls? Put the answer in \\boxed{}.", "answer": 7, "question_type": "rolls",
            "campaign": "campaign1"}


def count_requests(server: ScriptedModelServer) -> int:
    return sum(1 for r in server.requests if r.path.endswith("/count_tokens"))


def test_lengths_are_counted_once_per_window_and_remembered(tmp_path: Path, make_config, scripted):
    rows = load_rows(data=write_rows(tmp_path / "dnd.jsonl", [dnd("a", 1, 4000), dnd("b", 1, 4000),
                                                               dnd("c", 2, 8000)]))
    assert [r.context_len_source for r in rows] == [ESTIMATED_LENGTH] * 3
    assert [r.context_len for r in rows] == [1000, 1000, 2000]
    config: RLMConfig = make_config()
    measured = measure_lengths(rows, config)
    # The scripted model counts the JSON of the one user message holding the window, divided by four.
    expected = [len(json.dumps([{"role": "user", "content": r.context_window_text}])) // 4 for r in rows]
    assert [r.context_len for r in measured] == expected and expected[0] > 1000
    assert {r.context_len_source for r in measured} == {measured_source("scripted-root")}
    assert count_requests(scripted) == 2  # two distinct windows
    sent = next(r for r in scripted.requests if r.path.endswith("/count_tokens"))
    assert sent.body == {"model": "scripted-root", "messages": [{"role": "user", "content": rows[0].context_window_text}]}

    assert (config.effective_cache_dir / LENGTHS_FILE).is_file()
    assert measure_lengths(rows, config) == measured
    assert count_requests(scripted) == 2  # remembered


def test_bedrock_cannot_count_and_says_what_to_do(tmp_path: Path, make_config):
    rows = load_rows(data=write_rows(tmp_path / "dnd.jsonl", [dnd("a", 1, 400)]))
    config = make_config(upstream={"type": "bedrock", "aws_region": "us-east-1"})
    with pytest.raises(OolongDataError, match="--real-lengths estimate"):
        measure_lengths(rows, config)


def test_a_failed_count_says_how_to_filter_on_the_estimate(tmp_path: Path, make_config, scripted):
    from fsrlm.testing.scripted_model import Fault

    rows = load_rows(data=write_rows(tmp_path / "dnd.jsonl", [dnd("a", 1, 400)]))
    scripted.inject(Fault(status=400))
    with pytest.raises(OolongDataError, match="HTTP 400.*--real-lengths estimate"):
        measure_lengths(rows, make_config())


def test_the_runner_filters_real_rows_on_counted_lengths(tmp_path: Path, scripted, capsys):
    # Both windows estimate at 1000 tokens; counted, the second one is longer than 1005.
    data = write_rows(tmp_path / "dnd.jsonl", [dnd("short", 1, 3960), dnd("long", 2, 4000)])
    config = write_fsrlm_toml(tmp_path, scripted)
    common = ["--data", str(data), "--fsrlm-config", str(config), "--max-context-len", "1005",
              "--min-context-len", "900"]
    rows = oolong.load_selected_rows(oolong._parser().parse_args(common), oolong.build_config(
        oolong._parser().parse_args(common)))
    assert [(r.id, r.context_len_source) for r in rows] == [("short", measured_source("scripted-root"))]
    estimated = oolong.load_selected_rows(oolong._parser().parse_args([*common, "--real-lengths", "estimate"]),
                                          oolong.build_config(oolong._parser().parse_args(common)))
    assert [r.id for r in estimated] == ["short", "long"]
    assert oolong.main([*common, "--min-context-len", "2000", "--out", str(tmp_path / "r.jsonl")]) == 2
    assert "must be below --max-context-len" in capsys.readouterr().err
