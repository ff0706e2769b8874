"""``fsrlm bench oolong --paper`` end to end through the real command line, offline.

Generated (synthetic) rows at the paper's lengths, the scripted model on loopback,
the real Claude Code CLI, broker and local executor: both slices, RLM and the
model alone, and the report with the paper's figures labelled as theirs and never
beside these synthetic rows.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fsrlm.benchmarks.oolong_synth_gen import generate_rows
from fsrlm.benchmarks.paper_run import PART_FILES
from fsrlm.benchmarks.scripted_oolong import oolong_plan, oolong_responder
from test_oolong_runner import records, write_fsrlm_toml, write_rows

from fsrlm.testing.scripted_model import ScriptedModelServer


def fsrlm_executable() -> str:
    candidate = Path(sys.executable).parent / "fsrlm"
    found = str(candidate) if candidate.exists() else shutil.which("fsrlm")
    assert found, "the fsrlm command is not installed (make setup)"
    return found


def paper_cli(tmp_path: Path, scripted: ScriptedModelServer, data: Path, *extra: str) -> subprocess.CompletedProcess:
    scripted.plan = oolong_plan()
    scripted.responder = oolong_responder
    config = write_fsrlm_toml(tmp_path, scripted)
    return subprocess.run(
        [fsrlm_executable(), "bench", "oolong", "--paper", "--data", str(data), "--fsrlm-config", str(config),
         "--executor", "local", "--max-output-tokens", "8192", "--out-dir", str(tmp_path / "paper"), *extra],
        capture_output=True, text=True, timeout=900, check=False,
    )


def slice_rows(oolong_rows: int) -> list[dict]:
    """Generated rows at the paper's two lengths: OOLONG at 131072, one Pairs window at 32768."""
    return generate_rows(oolong_rows, 131072, seed=3, questions_per_window=25) + generate_rows(1, 32768, seed=3)


def test_paper_slice_offline_partial(tmp_path: Path, scripted: ScriptedModelServer):
    data = write_rows(tmp_path / "rows.jsonl", slice_rows(2))
    proc = paper_cli(tmp_path, scripted, data, "--limit", "2", "--concurrency", "2")
    assert proc.returncode == 0, proc.stderr

    for (part, kind), name in PART_FILES.items():
        rows = records(tmp_path / "paper" / name)
        assert len(rows) == 2, name
        assert all(r["score"] == 1.0 and r["success"] and r["synthetic"] for r in rows), name
        assert {r["method"] for r in rows} == {"rlm" if kind == "rlm" else "root-only"}
        assert {r["context_len"] for r in rows} == {131072 if part == "oolong" else 32768}
        assert {r["split"] for r in rows} == {"synth" if part == "oolong" else "pairs"}
    alone = records(tmp_path / "paper" / "oolong-alone.jsonl")
    assert {r["max_output_tokens"] for r in alone} == {8192} and not any(r["truncated"] for r in alone)

    out, err = proc.stdout, proc.stderr
    assert "The paper's slice: RLM (fsRLM)" in out and "The paper's slice: root model alone" in out
    assert "RLM vs. root model alone (same rows)" in out
    assert "The paper's figures (THEIRS, GPT-5) and ours on the same slice" in out
    assert "56.5" in out and "44.0" in out and "58.0" in out
    paper = out[out.index("The paper's figures (THEIRS"):]
    assert paper.count("withheld: synthetic rows") == 4 and "100.0" not in paper
    assert "2 of the paper's 50 rows (--limit 2): a partial slice" in err
    assert "2 of the paper's 20 rows" in err and "SYNTHETIC" in err

    # Nothing left to run: --resume --json reports from the files without a model call.
    calls = len(scripted.requests)
    proc = paper_cli(tmp_path, scripted, data, "--limit", "2", "--resume", "--json")
    assert proc.returncode == 0, proc.stderr
    assert len(scripted.requests) == calls
    report = json.loads(proc.stdout)
    assert report["comparison"]["overall"]["rows"] == 4
    assert report["rlm"]["overall"]["synthetic"] is True
    figures = report["paper_reference"]["figures"]
    assert [f["score"] for f in figures] == [56.5, 44.0, 58.0, 0.1]
    assert [f["synthetic_rows_withheld"] for f in figures] == [2, 2, 2, 2]
    assert all(f["ours_same_slice"] is None for f in figures)

    # Without --resume the results are never mixed into an old run.
    proc = paper_cli(tmp_path, scripted, data, "--limit", "2")
    assert proc.returncode == 2 and "--resume" in proc.stderr


def test_paper_slice_needs_its_rows(tmp_path: Path, scripted: ScriptedModelServer):
    data = write_rows(tmp_path / "rows.jsonl", generate_rows(2, 131072, seed=1, questions_per_window=25))
    proc = paper_cli(tmp_path, scripted, data, "--limit", "1")
    assert proc.returncode == 2
    assert "no rows for the OOLONG-Pairs slice (trec_coarse at 32768 tokens)" in proc.stderr
    assert "Traceback" not in proc.stderr
    only = paper_cli(tmp_path, scripted, data, "--limit", "1", "--only", "oolong", "--out-dir", str(tmp_path / "o"))
    assert only.returncode == 0, only.stderr
    assert records(tmp_path / "o" / "oolong-rlm.jsonl")[0]["score"] == 1.0
    assert not (tmp_path / "o" / "pairs-rlm.jsonl").exists()


@pytest.mark.slow
def test_paper_slice_offline_whole(tmp_path: Path, scripted: ScriptedModelServer):
    """The whole slice, as a user runs it: 50 OOLONG rows and the 20 Pairs queries, both ways."""
    data = write_rows(tmp_path / "rows.jsonl", slice_rows(50))
    proc = paper_cli(tmp_path, scripted, data, "--concurrency", "4")
    assert proc.returncode == 0, proc.stderr
    assert "partial slice" not in proc.stderr
    sizes = {name: len(records(tmp_path / "paper" / name)) for name in PART_FILES.values()}
    assert sizes == {"oolong-rlm.jsonl": 50, "oolong-alone.jsonl": 50, "pairs-rlm.jsonl": 20, "pairs-alone.jsonl": 20}
    for name in PART_FILES.values():
        assert all(r["score"] == 1.0 for r in records(tmp_path / "paper" / name)), name
    assert "withheld: synthetic rows" in proc.stdout
