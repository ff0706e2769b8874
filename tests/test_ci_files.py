"""action.yml and the example workflow against GitHub's published schemas (shipped in check-jsonschema: offline)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("path", "schema"), [
    ("action.yml", "vendor.github-actions"),
    ("examples/ci/fsrlm.yml", "vendor.github-workflows"),
])
def test_valid_against_githubs_schema(path: str, schema: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, str(ROOT / path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok -- validation done" in proc.stdout


def test_every_action_input_says_what_it_is() -> None:
    from ruamel.yaml import YAML

    action = YAML(typ="safe").load((ROOT / "action.yml").read_text())
    assert all(spec.get("description") for spec in action["inputs"].values())


@pytest.mark.parametrize("result", [
    {"answer": "42", "success": True, "stop_reason": "completed", "errors": [],
     "metrics": {"subcalls": 3, "subcalls_cached": 1, "total_cost_usd": 0.12, "wall_seconds": 9.5}},
    {"answer": None, "success": False, "stop_reason": "interrupted", "errors": ["the run was interrupted (Ctrl-C)"],
     "metrics": {"subcalls": 0, "subcalls_cached": 0, "total_cost_usd": 0.0, "wall_seconds": 1.0}},
])
def test_the_actions_job_summary_handles_success_and_failure(result: dict, tmp_path: Path) -> None:
    """The summary step's own Python, run on what ``fsrlm run --json`` prints after a success and a Ctrl-C."""
    text = (ROOT / "action.yml").read_text()
    match = re.search(r"<<'PY' >> \"\$GITHUB_STEP_SUMMARY\"\n(.*?)\n\s*PY\n", text, re.S)
    assert match, "the summary script moved"
    lines = match.group(1).splitlines()
    indent = min(len(line) - len(line.lstrip()) for line in lines if line.strip())
    script = "\n".join(line[indent:] for line in lines)
    (tmp_path / "result.json").write_text(json.dumps(result))
    proc = subprocess.run([sys.executable, "-", str(tmp_path / "result.json"), str(tmp_path / "answer.md")],
                          input=script, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"`{result['stop_reason']}`" in proc.stdout
    assert (tmp_path / "answer.md").read_text().strip() == (result["answer"] or "(no answer)")
